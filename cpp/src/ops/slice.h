#pragma once
// Slices as Python's slice.indices computes them: shared by the slice ops' CPU kernels and
// inference (ops/shape.cpp) and their CUDA kernels (cuda/shape.cu).
#include "ops/common.h"

namespace kiln {

struct SliceBox {
  int64_t start[kMaxRank], step[kMaxRank];
  Shape extent;
};

// Python's slice.indices for one dimension.
inline void slice_dim(int64_t dim, int64_t start, int64_t stop, int64_t step, int64_t* s0, int64_t* len) {
  if (step == 0) throw Error("slice: step cannot be zero");
  const bool none_start = start == ops::kSliceNone, none_stop = stop == ops::kSliceNone;
  int64_t lo = step > 0 ? 0 : -1, hi = step > 0 ? dim : dim - 1;
  auto clampi = [&](int64_t v) {
    if (v < 0) v += dim;
    return v < lo ? lo : (v > hi ? hi : v);
  };
  int64_t b = none_start ? (step > 0 ? 0 : dim - 1) : clampi(start);
  int64_t e = none_stop ? (step > 0 ? dim : -1) : clampi(stop);
  int64_t n = step > 0 ? (e - b + step - 1) / step : (b - e + (-step) - 1) / (-step);
  *s0 = b;
  *len = n > 0 ? n : 0;
}

inline SliceBox slice_box(const Shape& s, const Attrs& a) {
  const auto &st = a.ints("starts"), &sp = a.ints("stops"), &stp = a.ints("steps");
  if (static_cast<int>(st.size()) != s.rank() || sp.size() != st.size() || stp.size() != st.size())
    throw Error("slice: expected one start/stop/step per dimension of " + s.str());
  SliceBox b;
  for (int i = 0; i < s.rank(); ++i) {
    b.step[i] = stp[i];
    if (s[i] < 0) {  // a symbolic dimension: the slice's length is known only at run time
      b.start[i] = 0;
      b.extent.push_back(kUnknownDim);
      continue;
    }
    int64_t len;
    slice_dim(s[i], st[i], sp[i], stp[i], &b.start[i], &len);
    b.extent.push_back(len);
  }
  return b;
}

}  // namespace kiln
