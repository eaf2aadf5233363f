// Graph sources: inputs (fed per call), constants (held by the graph) and variables (held by
// the variable store). None has a kernel: the executor binds their tensors.
#include "ops/common.h"

namespace kiln {

static std::vector<TensorSpec> source_infer(const std::vector<TensorSpec>&, const Attrs& a) {
  return {TensorSpec{dtype_from_name(a.s("dtype")), Shape(a.ints("shape"))}};
}

void register_source_ops(OpRegistry& r) {
  for (const char* name : {"input", "constant"}) {
    OpDef d;
    d.name = name;
    d.attrs = {{"shape", true}, {"dtype", true}};
    d.num_inputs = 0;
    d.infer = source_infer;
    d.differentiable = false;  // leaves: gradients stop here (they are what grad() returns)
    d.kind = OpKind::source;
    r.add(std::move(d));
  }
  OpDef v;
  v.name = "variable";
  v.attrs = {{"shape", true}, {"dtype", true}, {"name", true}, {"trainable"}};
  v.num_inputs = 0;
  v.infer = source_infer;
  v.differentiable = false;
  v.kind = OpKind::source;
  r.add(std::move(v));
}

}  // namespace kiln
