#pragma once
// Numpy-broadcast iteration for contiguous tensors: the output shape and each input's strides
// (0 along broadcast dimensions), with adjacent dimensions merged where every operand allows,
// so that most loops run over one long contiguous inner row.
#include <cstdint>

#include "cpu/parallel.h"
#include "kiln/tensor.h"

namespace kiln::cpu {

constexpr int64_t kGrain = 1 << 15;  // elements below which a loop stays on one thread

template <int N>
struct Broadcast {
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t strides[N][kMaxRank] = {};

  Broadcast(const Shape& out, const Shape* const* in) {
    int r = out.rank();
    int64_t full[N][kMaxRank];
    for (int k = 0; k < N; ++k) {
      const Shape& s = *in[k];
      Shape cs = contiguous_strides(s);
      for (int i = 0; i < r; ++i) {
        int j = i - (r - s.rank());
        full[k][i] = (j < 0 || s[j] == 1) ? 0 : cs[j];
      }
    }
    // Drop size-1 dims, then merge dims that are contiguous for every operand.
    for (int i = 0; i < r; ++i) {
      if (out[i] == 1) continue;
      if (rank > 0) {
        bool merge = true;
        for (int k = 0; k < N; ++k)
          if (strides[k][rank - 1] != full[k][i] * out[i]) merge = false;
        if (merge) {
          shape[rank - 1] *= out[i];
          for (int k = 0; k < N; ++k) strides[k][rank - 1] = full[k][i];
          continue;
        }
      }
      shape[rank] = out[i];
      for (int k = 0; k < N; ++k) strides[k][rank] = full[k][i];
      ++rank;
    }
    if (rank == 0) {  // a scalar result
      shape[0] = 1;
      for (int k = 0; k < N; ++k) strides[k][0] = 0;
      rank = 1;
    }
  }

  int64_t inner() const { return shape[rank - 1]; }
  int64_t rows() const {
    int64_t n = 1;
    for (int i = 0; i + 1 < rank; ++i) n *= shape[i];
    return n;
  }
  void row_offsets(int64_t row, int64_t* off) const {
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int i = rank - 2; i >= 0; --i) {
      int64_t idx = row % shape[i];
      row /= shape[i];
      for (int k = 0; k < N; ++k) off[k] += idx * strides[k][i];
    }
  }
};

// out[i] = f(a[i]) over contiguous tensors.
template <typename TI, typename TO, typename F>
void map_unary(const Tensor& a, Tensor& out, F f) {
  const TI* x = a.data<TI>();
  TO* y = out.data<TO>();
  parallel_for(out.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}

// out = f(a, b) with broadcasting.
template <typename TI, typename TO, typename F>
void map_binary(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const TI* x = a.data<TI>();
  const TI* y = b.data<TI>();
  TO* z = out.data<TO>();
  const int64_t n = out.numel();
  if (a.numel() == n && b.numel() == n) {
    parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) z[i] = f(x[i], y[i]);
    });
    return;
  }
  if (b.numel() == 1 && a.numel() == n) {
    const TI yv = y[0];
    parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) z[i] = f(x[i], yv);
    });
    return;
  }
  if (a.numel() == 1 && b.numel() == n) {
    const TI xv = x[0];
    parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) z[i] = f(xv, y[i]);
    });
    return;
  }
  const Shape* shapes[2] = {&a.shape(), &b.shape()};
  Broadcast<2> bc(out.shape(), shapes);
  const int64_t inner = bc.inner(), sa = bc.strides[0][bc.rank - 1], sb = bc.strides[1][bc.rank - 1];
  int64_t grain = inner >= kGrain ? 1 : kGrain / (inner ? inner : 1);
  parallel_for(bc.rows(), grain, [&](int64_t r0, int64_t r1) {
    int64_t off[2];
    for (int64_t r = r0; r < r1; ++r) {
      bc.row_offsets(r, off);
      const TI* xr = x + off[0];
      const TI* yr = y + off[1];
      TO* zr = z + r * inner;
      if (sa == 1 && sb == 1)
        for (int64_t i = 0; i < inner; ++i) zr[i] = f(xr[i], yr[i]);
      else if (sa == 1)
        for (int64_t i = 0; i < inner; ++i) zr[i] = f(xr[i], yr[0]);
      else if (sb == 1)
        for (int64_t i = 0; i < inner; ++i) zr[i] = f(xr[0], yr[i]);
      else
        for (int64_t i = 0; i < inner; ++i) zr[i] = f(xr[0], yr[0]);
    }
  });
}

// Copies `in` broadcast to out's shape (also the kernel of broadcast_to); T is any element type.
template <typename T>
void broadcast_copy(const Tensor& in, Tensor& out) {
  const Shape* shapes[1] = {&in.shape()};
  Broadcast<1> bc(out.shape(), shapes);
  const T* x = in.data<T>();
  T* z = out.data<T>();
  const int64_t inner = bc.inner(), s = bc.strides[0][bc.rank - 1];
  int64_t grain = inner >= kGrain ? 1 : kGrain / (inner ? inner : 1);
  parallel_for(bc.rows(), grain, [&](int64_t r0, int64_t r1) {
    int64_t off[1];
    for (int64_t r = r0; r < r1; ++r) {
      bc.row_offsets(r, off);
      T* zr = z + r * inner;
      if (s == 1)
        for (int64_t i = 0; i < inner; ++i) zr[i] = x[off[0] + i];
      else
        for (int64_t i = 0; i < inner; ++i) zr[i] = x[off[0]];
    }
  });
}

}  // namespace kiln::cpu
