// CUDA kernels of the index ops (cpp/src/ops/index.cpp defines the ops and their CPU kernels).
//
// Out-of-range indices: the CPU kernels throw kiln::Error naming the bad index. A kernel cannot
// report one without the host waiting for the device, which kiln never does inside a call, so here
// an index outside [-dim, dim) reads as 0 in take and gather and adds nothing in their gradients, and
// a class outside [0, num_classes) leaves its one_hot row all zero. Negative indices wrap around
// (python-style) as on the CPU; one_hot's classes do not wrap, as on the CPU.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "ops/common.h"

namespace kiln::cuda {
namespace {

// Below this many elements, positions fit in 32 bits even after one grid stride (at most 2^24) is
// added: the forward kernels then divide in 32 bits, several times cheaper than the emulated 64-bit
// division. The gradients keep 64 bits: their atomics cost more than the index arithmetic.
constexpr int64_t kMax32 = int64_t(1) << 30;

// The unsigned integer as wide as T: the forward kernels only move elements, so they are
// instantiated per element size rather than per dtype.
template <class T>
using bits_t = std::conditional_t<sizeof(T) == 1, uint8_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;

// Runs f(Idx{}) with Idx the C++ type of the indices (int32 or int64, as inference checked).
template <class F>
void by_index(const Tensor& idx, F f) {
  if (idx.dtype() == DType::int32)
    f(int32_t{});
  else
    f(int64_t{});
}

// Index k of an axis of size dim, wrapped python-style; -1 when out of range.
template <class Idx>
__device__ inline int64_t wrap_index(Idx k, int64_t dim) {
  const int64_t v = k < 0 ? int64_t(k) + dim : int64_t(k);
  return v >= 0 && v < dim ? v : -1;
}

// Scatter-adds. Float sums land in whatever order the atomics do, so take_grad and gather_grad are
// not bitwise deterministic for repeated indices (integer sums are).
__device__ inline void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ inline void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ inline void atomic_add(int32_t* p, int32_t v) { atomicAdd(p, v); }
__device__ inline void atomic_add(int64_t* p, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));  // two's complement
}
// No 8-bit atomics: compare-and-swap the aligned word holding the byte; the sum wraps mod 256 like
// the CPU's uint8 +=, and the neighbouring bytes are written back unchanged.
__device__ inline void atomic_add(uint8_t* p, uint8_t v) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  unsigned* w = reinterpret_cast<unsigned*>(a & ~uintptr_t(3));
  const unsigned shift = unsigned(a & 3) * 8;
  unsigned old = *w, assumed;
  do {
    assumed = old;
    const unsigned sum = ((assumed >> shift) + v) & 0xffu;
    old = atomicCAS(w, assumed, (assumed & ~(0xffu << shift)) | (sum << shift));
  } while (old != assumed);
}

#define KILN_GRID_LOOP_T(I, i, n) \
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < (n); i += I(blockDim.x) * I(gridDim.x))

// ---- take / take_grad: out[o, j, i] = x[o, idx[j], i] ----

template <class T, class Idx, class I>
__global__ void take_fwd(I n, const T* __restrict__ x, const Idx* __restrict__ idx, T* __restrict__ y, I nidx, I dim,
                         I inner) {
  KILN_GRID_LOOP_T(I, e, n) {
    const I i = e % inner, t = e / inner, j = t % nidx, o = t / nidx;
    const int64_t k = wrap_index(idx[j], dim);
    y[e] = k >= 0 ? x[(o * dim + I(k)) * inner + i] : T(0);
  }
}

template <class T, class Idx>
__global__ void take_bwd(int64_t n, const T* __restrict__ gy, const Idx* __restrict__ idx, T* __restrict__ gx,
                         int64_t nidx, int64_t dim, int64_t inner) {
  KILN_GRID_LOOP(e, n) {
    const int64_t i = e % inner, t = e / inner, j = t % nidx, o = t / nidx;
    const int64_t k = wrap_index(idx[j], dim);
    if (k >= 0) atomic_add(gx + (o * dim + k) * inner + i, gy[e]);
  }
}

template <class T, class Idx>
void launch_take(const Tensor& x, const Tensor& idx, Tensor& y, const AxisSplit& a) {
  const int64_t n = y.numel(), nidx = idx.numel();
  const T* xp = static_cast<const T*>(x.raw());
  T* yp = static_cast<T*>(y.raw());
  const Idx* ip = idx.data<Idx>();
  if (n <= kMax32 && x.numel() <= kMax32)
    take_fwd<T, Idx, int32_t><<<blocks_for(n), kThreads, 0, stream()>>>(int32_t(n), xp, ip, yp, int32_t(nidx),
                                                                        int32_t(a.dim), int32_t(a.inner));
  else
    take_fwd<T, Idx, int64_t><<<blocks_for(n), kThreads, 0, stream()>>>(n, xp, ip, yp, nidx, a.dim, a.inner);
}

void take_kernel(const KernelContext& c) {
  const Tensor &x = c.input(0), &idx = c.input(1);
  Tensor& y = c.output(0);
  const AxisSplit a = split_at(x.shape(), normalize_axis(c.attrs.i("axis"), x.rank(), "take"));
  if (y.numel() == 0) return;
  // Any dtype, as the CPU's memcpy: dispatch on the element size alone.
  dispatch_by_size(x.dtype(), "take", [&](auto t) {
    by_index(idx, [&](auto i) { launch_take<decltype(t), decltype(i)>(x, idx, y, a); });
  });
  check_launch("take");
}

template <class T>
void launch_take_grad(const Tensor& gy, const Tensor& idx, Tensor& gx, const AxisSplit& a) {
  const int64_t n = gy.numel();
  by_index(idx, [&](auto i) {
    take_bwd<<<blocks_for(n), kThreads, 0, stream()>>>(n, gy.data<T>(), idx.data<decltype(i)>(), gx.data<T>(),
                                                       idx.numel(), a.dim, a.inner);
  });
}

void take_grad_kernel(const KernelContext& c) {  // (gy, indices, x) -> gx shaped like x
  const Tensor &gy = c.input(0), &idx = c.input(1);
  Tensor& gx = c.output(0);
  const AxisSplit a = split_at(gx.shape(), normalize_axis(c.attrs.i("axis"), gx.rank(), "take"));
  if (gx.numel() > 0) check(cudaMemsetAsync(gx.raw(), 0, gx.nbytes(), stream()), "take_grad");
  const int64_t n = gy.numel();
  if (n == 0) return;
  KILN_DISPATCH_NUMERIC(gy.dtype(), "take_grad", launch_take_grad<scalar_t>(gy, idx, gx, a));
  check_launch("take_grad");
}

// ---- gather / gather_grad: small[p] = big[p with p[axis] = idx[p]], idx shaped like small ----

// idx's shape with big's strides, neighbouring dimensions merged where both allow. Position
// `axis` is skipped in the walk and replaced by the index.
struct GatherDims {
  int rank = 0, axis = 0;
  int64_t size[kMaxRank] = {}, stride[kMaxRank] = {};
  int64_t dim = 1;  // big's size along the axis
};

GatherDims gather_dims(const Shape& big, const Shape& idx, int axis) {
  GatherDims g;
  g.axis = -1;
  g.dim = big[axis];
  const Shape bs = contiguous_strides(big);
  for (int i = 0; i < idx.rank(); ++i) {
    if (i != axis && idx[i] == 1) continue;  // position 0: no offset
    const int r = g.rank;
    // Merge into the previous dimension when neither is the axis and the pair is contiguous in big
    // (idx is contiguous in its own shape, so the merged walk covers the same positions).
    if (r > 0 && i != axis && g.axis != r - 1 && idx[i] == big[i] && g.stride[r - 1] == bs[i] * big[i]) {
      g.size[r - 1] *= idx[i];
      g.stride[r - 1] = bs[i];
      continue;
    }
    if (i == axis) g.axis = r;
    g.size[r] = idx[i], g.stride[r] = bs[i];
    ++g.rank;
  }
  if (g.axis < 0) g.axis = 0;  // rank 0: no dimension to walk (and, with dim 0, no index in range)
  return g;
}

// Offset in big of small's element e, but for the axis term.
template <class I>
__device__ inline I gather_offset(const GatherDims& g, I e) {
  I off = 0;
  for (int d = g.rank - 1; d >= 0; --d) {
    const I s = I(g.size[d]), p = e % s;
    e /= s;
    if (d != g.axis) off += p * I(g.stride[d]);
  }
  return off;
}

template <class T, class Idx, class I>
__global__ void gather_fwd(I n, const T* __restrict__ x, const Idx* __restrict__ idx, T* __restrict__ y, GatherDims g) {
  KILN_GRID_LOOP_T(I, e, n) {
    const int64_t k = wrap_index(idx[e], g.dim);
    y[e] = k >= 0 ? x[gather_offset(g, e) + I(k) * I(g.stride[g.axis])] : T(0);
  }
}

template <class T, class Idx>
__global__ void gather_bwd(int64_t n, const T* __restrict__ gy, const Idx* __restrict__ idx, T* __restrict__ gx,
                           GatherDims g) {
  KILN_GRID_LOOP(e, n) {
    const int64_t k = wrap_index(idx[e], g.dim);
    if (k >= 0) atomic_add(gx + gather_offset(g, e) + k * g.stride[g.axis], gy[e]);
  }
}

void gather_kernel(const KernelContext& c) {
  const Tensor &x = c.input(0), &idx = c.input(1);
  Tensor& y = c.output(0);
  const GatherDims g = gather_dims(x.shape(), idx.shape(), normalize_axis(c.attrs.i("axis"), x.rank(), "gather"));
  const int64_t n = y.numel();
  const bool small = n <= kMax32 && x.numel() <= kMax32;
  // The CPU's dtypes (numeric), one instantiation per element size.
  KILN_DISPATCH_NUMERIC(x.dtype(), "gather", {
    using T = bits_t<scalar_t>;
    if (n == 0) return;
    by_index(idx, [&](auto i) {
      using Idx = decltype(i);
      const T* xp = static_cast<const T*>(x.raw());
      T* yp = static_cast<T*>(y.raw());
      if (small)
        gather_fwd<T, Idx, int32_t><<<blocks_for(n), kThreads, 0, stream()>>>(int32_t(n), xp, idx.data<Idx>(), yp, g);
      else
        gather_fwd<T, Idx, int64_t><<<blocks_for(n), kThreads, 0, stream()>>>(n, xp, idx.data<Idx>(), yp, g);
    });
  });
  check_launch("gather");
}

template <class T>
void launch_gather_grad(const Tensor& gy, const Tensor& idx, Tensor& gx, const GatherDims& g) {
  const int64_t n = gy.numel();
  if (n == 0) return;
  by_index(idx, [&](auto i) {
    gather_bwd<<<blocks_for(n), kThreads, 0, stream()>>>(n, gy.data<T>(), idx.data<decltype(i)>(), gx.data<T>(), g);
  });
}

void gather_grad_kernel(const KernelContext& c) {  // (gy, indices, x) -> gx shaped like x
  const Tensor &gy = c.input(0), &idx = c.input(1);
  Tensor& gx = c.output(0);
  const GatherDims g = gather_dims(gx.shape(), idx.shape(), normalize_axis(c.attrs.i("axis"), gx.rank(), "gather"));
  if (gx.numel() > 0) check(cudaMemsetAsync(gx.raw(), 0, gx.nbytes(), stream()), "gather_grad");
  KILN_DISPATCH_NUMERIC(gy.dtype(), "gather", launch_gather_grad<scalar_t>(gy, idx, gx, g));
  check_launch("gather_grad");
}

// ---- one_hot ----

// The output is zeroed first; this writes the one 1 of each row.
template <class T, class Idx>
__global__ void one_hot_set(int64_t m, const Idx* __restrict__ idx, T* __restrict__ y, int64_t classes, T one) {
  KILN_GRID_LOOP(j, m) {
    const int64_t k = idx[j];
    if (k >= 0 && k < classes) y[j * classes + k] = one;
  }
}

void one_hot_kernel(const KernelContext& c) {
  const Tensor& idx = c.input(0);
  Tensor& y = c.output(0);
  const int64_t classes = c.attrs.i("num_classes"), m = idx.numel();
  if (y.numel() > 0) check(cudaMemsetAsync(y.raw(), 0, y.nbytes(), stream()), "one_hot");
  if (m == 0) return;
  uint64_t one = 0;  // 1 in the output dtype (the attribute "dtype"), as raw bits
  KILN_DISPATCH_ALL(y.dtype(), "one_hot", {
    const scalar_t v = static_cast<scalar_t>(1.0);
    std::memcpy(&one, &v, sizeof v);  // little-endian host and device: the low bytes are the value
  });
  dispatch_by_size(y.dtype(), "one_hot", [&](auto t) {
    using T = decltype(t);
    by_index(idx, [&](auto i) {
      one_hot_set<<<blocks_for(m), kThreads, 0, stream()>>>(m, idx.data<decltype(i)>(), y.data<T>(), classes, T(one));
    });
  });
  check_launch("one_hot");
}

}  // namespace

void register_index_kernels(OpRegistry& r) {
  r.set_cuda_kernel("take", take_kernel);
  r.set_cuda_kernel("take_grad", take_grad_kernel);
  r.set_cuda_kernel("gather", gather_kernel);
  r.set_cuda_kernel("gather_grad", gather_grad_kernel);
  r.set_cuda_kernel("one_hot", one_hot_kernel);
}

}  // namespace kiln::cuda
