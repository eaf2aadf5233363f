#pragma once
// Strided box copies between contiguous tensors: the kernel behind slice, its gradient, pad.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kiln/error.h"
#include "kiln/tensor.h"

namespace kiln::cpu {

// dst[dst_start + i * dst_step] = src[src_start + i * src_step] for every index i of `extent`,
// per dimension; both tensors are contiguous with the same rank.
inline void copy_box(const Tensor& src, const int64_t* src_start, const int64_t* src_step, Tensor& dst,
                     const int64_t* dst_start, const int64_t* dst_step, const Shape& extent) {
  const int r = extent.rank();
  if (extent.numel() <= 0) return;
  const size_t es = dtype_size(src.dtype());
  Shape ss = contiguous_strides(src.shape()), ds = contiguous_strides(dst.shape());
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  int64_t s0 = 0, d0 = 0;
  for (int i = 0; i < r; ++i) {
    s0 += src_start[i] * ss[i];
    d0 += dst_start[i] * ds[i];
  }
  if (r == 0) {
    std::memcpy(d + d0 * es, s + s0 * es, es);
    return;
  }
  const int64_t inner = extent[r - 1];
  const int64_t sin = src_step[r - 1] * ss[r - 1], din = dst_step[r - 1] * ds[r - 1];
  int64_t idx[kMaxRank] = {};
  const int64_t rows = extent.numel() / inner;
  for (int64_t row = 0; row < rows; ++row) {
    int64_t so = s0, dof = d0;
    for (int i = 0; i < r - 1; ++i) {
      so += idx[i] * src_step[i] * ss[i];
      dof += idx[i] * dst_step[i] * ds[i];
    }
    if (sin == 1 && din == 1) {
      std::memcpy(d + dof * es, s + so * es, static_cast<size_t>(inner) * es);
    } else {
      for (int64_t j = 0; j < inner; ++j) std::memcpy(d + (dof + j * din) * es, s + (so + j * sin) * es, es);
    }
    for (int i = r - 2; i >= 0; --i) {
      if (++idx[i] < extent[i]) break;
      idx[i] = 0;
    }
  }
}

// Sets every element of a tensor to `value`.
inline void fill(Tensor& t, double value) {
  if (value == 0.0) {
    std::memset(t.raw(), 0, t.nbytes());
    return;
  }
  KILN_DISPATCH_ALL(t.dtype(), "fill",
                    std::fill(t.data<scalar_t>(), t.data<scalar_t>() + t.numel(), static_cast<scalar_t>(value)));
}

}  // namespace kiln::cpu
