#pragma once
// Shared by the op files: the registry types, the builder, and small inference helpers.
#include <algorithm>
#include <string>
#include <vector>

#include "kiln/error.h"
#include "kiln/op.h"
#include "kiln/ops.h"

namespace kiln {

inline std::vector<TensorSpec> same_as_input(const std::vector<TensorSpec>& in, const Attrs&) { return {in[0]}; }

inline std::vector<int64_t> sorted_axes(const std::vector<int64_t>& axes, int rank, const char* op) {
  std::vector<int64_t> out;
  for (int64_t a : axes) out.push_back(normalize_axis(a, rank, op));
  std::sort(out.begin(), out.end());
  for (size_t i = 1; i < out.size(); ++i)
    if (out[i] == out[i - 1]) throw Error(std::string(op) + ": repeated axis " + std::to_string(out[i]));
  return out;
}

// A dimension that must agree between two shapes, symbolic dims agreeing with anything.
inline bool dims_compatible(int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; }

// A gradient op's inputs checked against its forward op: `got` must have `want`'s dtype and shape
// (symbolic dims agree with anything). Autodiff always wires them right; a hand-edited or damaged
// file may not, and a kernel must never read past a tensor it was given.
inline void require_like(const TensorSpec& got, const TensorSpec& want, const std::string& what) {
  bool ok = got.dtype == want.dtype && got.shape.rank() == want.shape.rank();
  for (int i = 0; ok && i < got.shape.rank(); ++i) ok = dims_compatible(got.shape[i], want.shape[i]);
  if (!ok) throw Error(what + " must be " + want.str() + ", got " + got.str());
}

// The specs the forward op `op` gives for `in`: what its gradient op's inputs must look like.
inline std::vector<TensorSpec> forward_specs(const char* op, const std::vector<TensorSpec>& in, const Attrs& a) {
  return OpRegistry::get().find(op)->infer(in, a);
}

// A shape as (outer, dim, inner) around one axis: what gathers and scatters along an axis index.
struct AxisSplit {
  int64_t outer = 1, dim = 1, inner = 1;
};
inline AxisSplit split_at(const Shape& s, int axis) {
  AxisSplit a;
  for (int i = 0; i < axis; ++i) a.outer *= s[i];
  a.dim = s[axis];
  for (int i = axis + 1; i < s.rank(); ++i) a.inner *= s[i];
  return a;
}

// Kernel of the view ops (reshape, squeeze, ...): the output shares input 0's storage.
inline void alias_kernel(const KernelContext& c) { c.output(0) = c.input(0).view(c.output(0).shape()); }

}  // namespace kiln
