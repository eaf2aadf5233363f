#pragma once
// Files: the .kiln file (compiled functions of one graph with all their variables, in a
// safetensors container) and numpy's .npy arrays.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/function.h"
#include "kiln/tensor.h"

namespace kiln {

// The format version this kiln writes; it reads this one and every older one. 2 (2026-11-30): an
// inference program may hold what the compiler fused (conv's attributes bn_eps and residual with
// their inputs, max_pool's values_only), which a reader of version 1 does not know. 1: the first.
constexpr int kFileFormat = 2;

// The functions of one .kiln file, in the order they were saved; they share one variable store
// (a training step's updates are what the inference function then reads).
struct Bundle {
  std::vector<std::string> names;
  std::map<std::string, std::shared_ptr<Function>> functions;
  std::shared_ptr<VariableStore> variables;
  Function& at(const std::string& name) const;  // throws kiln::Error naming the functions there are
};

// Writes functions compiled from one graph, under the given names, with every variable of that
// graph (parameters, batch-norm statistics, optimizer slots and step counters) and each function's
// random-stream position. The file is written beside `path` and renamed over it: a reader never
// sees half a file.
void save(const std::string& path, const std::vector<std::pair<std::string, const Function*>>& functions);

// Reads and checks a whole file (header, offsets, dtypes, every node's op and shapes) into memory:
// the functions neither depend on the file afterwards nor write it. Any problem is a kiln::Error
// naming the file and what is wrong.
Bundle load_bundle(const std::string& path);

// The named function of a file, or its only one when `name` is empty.
Function load(const std::string& path, const std::string& name = "");

// numpy .npy files (format 1.0-3.0, little-endian, C order; kiln's dtypes).
Tensor load_npy(const std::string& path);
void save_npy(const std::string& path, const Tensor& t);

}  // namespace kiln
