#pragma once
// The op registry. Each op is defined once, in one file under cpp/src/ops/: its attributes,
// shape and dtype inference, its vector-Jacobian rule (or the mark that it has none) and its
// kernels. Everything else (the builder, autodiff, compiler, executor) reads this table.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/graph.h"

namespace kiln {

struct AttrSpec {
  std::string name;
  bool required = false;
};

// What a kernel sees: attributes, input and output tensors (outputs are preallocated with
// their final shapes unless the op is an alias), and a per-call counter for random ops.
struct KernelContext {
  const Attrs& attrs;
  const Tensor* const* in;
  int n_in;
  Tensor* const* out;
  int n_out;
  uint64_t call_counter;      // increments on every call of the function; random streams use it
  bool training = true;       // the function's mode: dropout and batch norm read it
  void* workspace = nullptr;  // scratch memory of OpDef::workspace bytes, planned once (on the host)
  size_t workspace_bytes = 0;
  const Tensor& input(int i) const { return *in[i]; }
  Tensor& output(int i) const { return *out[i]; }
};

// What a VJP rule sees: the forward node, its inputs and outputs as values, and the gradient
// of each output (invalid Value when that output received none).
struct VjpContext {
  Graph& graph;
  const Node& node;
  std::vector<Value> inputs;
  std::vector<Value> outputs;
  std::vector<Value> grads;
  std::vector<bool> needs_grad;  // per input: whether it lies on a path to what is differentiated
  const Attrs& attrs() const { return node.attrs; }
};

using InferFn = std::function<std::vector<TensorSpec>(const std::vector<TensorSpec>& inputs, const Attrs& attrs)>;
// Returns one gradient per input; an invalid Value means "no gradient" (zero).
using VjpFn = std::function<std::vector<Value>(const VjpContext& ctx)>;
using KernelFn = void (*)(const KernelContext& ctx);
// Scratch bytes a kernel needs for these concrete input and output specs.
using WorkspaceFn = std::function<size_t(const std::vector<TensorSpec>& inputs, const std::vector<TensorSpec>& outputs,
                                         const Attrs& attrs)>;

enum class OpKind : uint8_t {
  compute,  // runs a kernel
  source,   // input, constant or variable: no kernel, bound by the executor
  alias,    // output is a view of input 0 (reshape and friends): no copy, no buffer
};

struct OpDef {
  std::string name;
  std::vector<AttrSpec> attrs;
  int num_inputs = 1;  // -1: variadic
  InferFn infer;
  VjpFn vjp;                   // empty together with differentiable == false
  bool differentiable = true;  // false: an explicit "has no gradient" mark
  KernelFn cpu = nullptr;
  KernelFn cuda = nullptr;  // set by cuda/*.cu where the backend is built
  WorkspaceFn workspace;    // empty: the kernel needs no scratch memory
  OpKind kind = OpKind::compute;
  bool elementwise = false;  // output may reuse input 0's buffer when it dies here
  bool random = false;       // impure: never merged, folded, or hoisted
  // Output 0 equals input 0 when their concrete shapes agree (sum_to_like, broadcast_like):
  // the planner then makes it a view instead of running it.
  bool identity_if_same_shape = false;
  // State the op writes back when a function is compiled with training=true: (input index,
  // output index) pairs, where that input is a variable (batch norm's running statistics).
  std::vector<std::pair<int, int>> state_updates;
  // Inputs at this index and after are read only for their shape (the reference of
  // sum_to_like, say): the memory planner does not keep their buffers alive for them.
  int shape_only_from = -1;
};

class OpRegistry {
 public:
  static OpRegistry& get();
  void add(OpDef def);
  void set_cuda_kernel(const std::string& name, KernelFn kernel);  // for cuda/*.cu
  const OpDef* find(const std::string& name) const;
  const OpDef& at(const std::string& name) const;  // throws kiln::Error for unknown ops
  std::vector<const OpDef*> all() const;

 private:
  OpRegistry();
  std::vector<std::unique_ptr<OpDef>> defs_;
};

// Helpers for inference functions.
std::string specs_str(const std::vector<TensorSpec>& specs);

// Throws kiln::Error when a spec's known dimensions multiply past 2^62 bytes: an inferred shape
// that no machine could hold (a product that would wrap around int64).
void check_size(const TensorSpec& spec);

}  // namespace kiln
