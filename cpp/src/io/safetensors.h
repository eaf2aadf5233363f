#pragma once
// The safetensors container (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}},
// then the tensors' bytes. kiln's .kiln file is one, so any safetensors reader opens it.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kiln/tensor.h"

namespace kiln::io {

struct Safetensors {
  std::map<std::string, std::string> metadata;
  std::map<std::string, Tensor> tensors;  // views of one buffer holding the file's data
  size_t file_bytes = 0;
};

// Data starts on a 64-byte boundary and every tensor on a multiple of its element size. Written
// to a temporary file beside `path`, then renamed over it.
void write_safetensors(const std::string& path, const std::map<std::string, std::string>& metadata,
                       const std::vector<std::pair<std::string, Tensor>>& tensors);

// Checks the header length, the JSON, every dtype, shape and offset (inside the data, no two
// tensors overlapping) before mapping anything: kiln::Error "<path>: <problem>" otherwise.
Safetensors read_safetensors(const std::string& path);

// `text` for an error message: bytes that are not printable ASCII as \xNN, cut after `limit`
// (a JSON parser's message quotes what it read: of a damaged file, any bytes, and many).
std::string printable(const std::string& text, size_t limit = 300);

}  // namespace kiln::io
