// CUDA kernels of the reduce ops (cpp/src/ops/reduce.cpp defines the ops and their CPU kernels).
//
// One kernel serves every reduction. The input is seen as a map from (output o, reduced index r)
// to an offset, built on the host from the input's dims with size-1 dims dropped and neighbours
// of the same kind merged (as the CPU does): sum over the last axis, over axis 0, over (0, 2, 3)
// of NCHW and any other axis set are the same kernel with different maps. A block is bx x by
// threads: x over consecutive outputs, y over the reduced index, so that a warp reads contiguous
// memory whichever of the two is innermost in the input; the y threads meet in a shared-memory
// tree. When there are too few outputs to fill the GPU, blockIdx.y splits the reduced range and
// a second pass (the same kernel) reduces the partial results.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common.cuh"

namespace kiln::cuda {
namespace {

struct Plan {
  int64_t n_out = 1;   // outputs, in the order of the input's kept dims
  int64_t red = 1;     // elements reduced into each output
  Dims kept;           // output index -> input offset
  Dims reduced;        // reduced index -> input offset
  double scale = 1.0;  // applied to each result (1/count for mean)
};

// i is below the product of the sizes, so the outermost dim takes the rest without a division
// (and a map of one dim, the common case, needs none).
__device__ inline int64_t offset_of(const Dims& m, int64_t i) {
  if (m.rank == 0) return 0;
  int64_t off = 0;
  for (int d = m.rank - 1; d > 0; --d) {
    off += (i % m.size[d]) * m.stride[d];
    i /= m.size[d];
  }
  return off + i * m.stride[0];
}

template <class T>
__device__ T highest() {
  if constexpr (std::is_floating_point_v<T>)
    return T(INFINITY);
  else  // std::numeric_limits is host-only without --expt-relaxed-constexpr
    return T(std::make_unsigned_t<T>(-1) >> (std::is_signed_v<T> ? 1 : 0));
}
template <class T>
__device__ T lowest() {
  if constexpr (std::is_floating_point_v<T>)
    return T(-INFINITY);
  else
    return std::is_signed_v<T> ? T(-highest<T>() - 1) : T(0);
}

// The reductions of values: an element enters the accumulator as is; the result is scaled once.
struct Plain {
  template <class A, class TI>
  __device__ static A load(TI v, int64_t) {
    return static_cast<A>(v);
  }
  template <class TO, class A>
  __device__ static TO finish(A a, double scale) {
    if (scale != 1.0) return static_cast<TO>(static_cast<A>(a * scale));  // ints never take this branch
    return static_cast<TO>(a);
  }
};
struct Sum : Plain {
  static constexpr bool widen = true, empty_ok = true;
  template <class A>
  __device__ static A init() {
    return A(0);
  }
  template <class A>
  __device__ static A combine(A a, A b) {
    return a + b;
  }
};
struct Prod : Plain {
  static constexpr bool widen = true, empty_ok = true;
  template <class A>
  __device__ static A init() {
    return A(1);
  }
  template <class A>
  __device__ static A combine(A a, A b) {
    return a * b;
  }
};
// NaN wins from either side, so it survives any order of combination (as the CPU's NaN does).
struct Max : Plain {
  static constexpr bool widen = false, empty_ok = false;
  template <class A>
  __device__ static A init() {
    return lowest<A>();
  }
  template <class A>
  __device__ static A combine(A a, A b) {
    return (b > a || b != b) ? b : a;
  }
};
struct Min : Plain {
  static constexpr bool widen = false, empty_ok = false;
  template <class A>
  __device__ static A init() {
    return highest<A>();
  }
  template <class A>
  __device__ static A combine(A a, A b) {
    return (b < a || b != b) ? b : a;
  }
};

// float32 sums and products accumulate in double, as on the CPU; max and min are exact anyway.
template <class Op, class T>
using acc_t = std::conditional_t<Op::widen && std::is_same_v<T, float>, double, T>;

// argmax/argmin carry the index with the value. The CPU scans in order and stops at the first
// NaN; in any order that is: the first NaN, else the best value, and the first index among ties.
template <class T>
struct ArgVal {
  T v;
  int64_t i;  // < 0: no element seen yet
};
template <bool is_max>
struct Arg {
  template <class A>
  __device__ static A init() {
    return A{{}, -1};
  }
  template <class A, class TI>
  __device__ static A load(TI v, int64_t r) {
    if constexpr (std::is_same_v<TI, A>)
      return v;  // a partial result of the first pass
    else
      return A{v, r};
  }
  template <class A>
  __device__ static A combine(A a, A b) {
    if (a.i < 0 || b.i < 0) return a.i < 0 ? b : a;
    const bool a_nan = a.v != a.v, b_nan = b.v != b.v;
    if (a_nan != b_nan) return a_nan ? a : b;
    if (!a_nan && (is_max ? a.v > b.v : a.v < b.v)) return a;
    if (!a_nan && (is_max ? b.v > a.v : b.v < a.v)) return b;
    return a.i < b.i ? a : b;
  }
  template <class TO, class A>
  __device__ static TO finish(A a, double) {
    if constexpr (std::is_same_v<TO, A>)
      return a;
    else
      return a.i;
  }
};

constexpr int kUnroll = 4;          // loads in flight per thread before any is combined: reductions wait on memory
constexpr int64_t kPerThread = 16;  // elements per thread along r, before more threads share a reduction

// Any accumulator (uint8_t, the index pairs of argmax) crosses lanes as 32-bit words.
template <class A>
__device__ A shfl_down(A v, unsigned delta) {
  unsigned w[(sizeof(A) + 3) / 4] = {};
  memcpy(w, &v, sizeof(A));
  for (unsigned& word : w) word = __shfl_down_sync(0xffffffffu, word, delta);
  memcpy(&v, w, sizeof(A));
  return v;
}

// Block (bx, by), bx * by == kThreads, both powers of two; grid (output tiles, splits). Writes
// y[blockIdx.y * n_out + o]: the results, or with splits the partials of each split.
template <class Op, class A, class TI, class TO>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const TI* __restrict__ x, TO* __restrict__ y, Plan p) {
  const int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  A acc = Op::template init<A>();
  if (o < p.n_out) {
    const TI* base = x + offset_of(p.kept, o);
    const int64_t step = int64_t(blockDim.y) * gridDim.y;
    for (int64_t r = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; r < p.red; r += kUnroll * step) {
      // Clamped, the loads need no branch that would wait on the one before; the surplus is dropped.
      TI v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = base[offset_of(p.reduced, min(r + u * step, p.red - 1))];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (r + u * step < p.red) acc = Op::combine(acc, Op::template load<A>(v[u], r + u * step));
    }
  }
  // The threads of one output meet: within a warp (lanes bx apart), then across the warps.
  for (unsigned d = 16; d >= blockDim.x; d /= 2) acc = Op::combine(acc, shfl_down(acc, d));
  __shared__ A buf[kThreads];
  const unsigned rows_per_warp = blockDim.x < 32 ? 32 / blockDim.x : 1;
  if (threadIdx.y % rows_per_warp == 0) buf[threadIdx.y / rows_per_warp * blockDim.x + threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && o < p.n_out) {
    for (unsigned j = 1; j < blockDim.y / rows_per_warp; ++j) acc = Op::combine(acc, buf[j * blockDim.x + threadIdx.x]);
    y[blockIdx.y * p.n_out + o] = Op::template finish<TO>(acc, p.scale);
  }
}

int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

int sm_count() {
  static const int n = [] {
    int v = 0;
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute");
    return v;
  }();
  return n;
}

template <class Op, class A, class TI, class TO>
void launch(const TI* x, TO* y, const Plan& p, const char* name) {
  if (p.n_out == 0) return;
  // Outputs that lie next to each other in the input (the innermost dim is kept) go across the
  // warp; otherwise the warp goes along the reduced run.
  const bool kept_inner = p.kept.rank > 0 && p.kept.stride[p.kept.rank - 1] == 1;
  const int64_t run = kept_inner ? p.kept.size[p.kept.rank - 1] : 1;
  // Threads along r get kPerThread elements each, unless that leaves x threads without outputs;
  // x spans at least a 32-byte sector when the outputs are adjacent in memory.
  int64_t by = pow2_at_least((p.red + kPerThread - 1) / kPerThread);
  by = std::max(by, kThreads / std::min<int64_t>(kThreads, pow2_at_least(p.n_out)));
  by = std::min(by, kThreads / std::min<int64_t>(8, pow2_at_least(run)));
  const int bx = int(kThreads / by);
  const int64_t tiles = (p.n_out + bx - 1) / bx;
  // Enough blocks to fill the GPU, each thread still given kPerThread elements.
  const int64_t want = (int64_t(sm_count()) * 8 + tiles - 1) / tiles;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>({want, p.red / (by * kPerThread), 65535}));
  const dim3 block(bx, unsigned(by));
  if (splits == 1) {
    reduce_kernel<Op, A><<<dim3(unsigned(tiles)), block, 0, stream()>>>(x, y, p);
    check_launch(name);
    return;
  }
  Scratch part(sizeof(A) * size_t(splits) * size_t(p.n_out));
  Plan first = p;
  first.scale = 1.0;
  reduce_kernel<Op, A><<<dim3(unsigned(tiles), unsigned(splits)), block, 0, stream()>>>(x, part.as<A>(), first);
  check_launch(name);
  // The partials are [splits, n_out]: a reduction over their axis 0.
  Plan second;
  second.n_out = p.n_out;
  second.red = splits;
  second.kept.rank = second.reduced.rank = 1;
  second.kept.size[0] = p.n_out, second.kept.stride[0] = 1;
  second.reduced.size[0] = splits, second.reduced.stride[0] = p.n_out;
  second.scale = p.scale;
  launch<Op, A>(part.as<A>(), y, second, name);
}

// The plan of reducing a tensor of shape s over the dims flagged in mask.
Plan plan_for(const Shape& s, const std::vector<bool>& mask) {
  int n = 0;
  int64_t size[kMaxRank];
  bool red[kMaxRank];
  for (int i = 0; i < s.rank(); ++i) {
    if (s[i] == 1) continue;
    if (n > 0 && red[n - 1] == mask[i]) {
      size[n - 1] *= s[i];
    } else {
      size[n] = s[i];
      red[n] = mask[i];
      ++n;
    }
  }
  int64_t stride[kMaxRank];
  for (int64_t g = n - 1, st = 1; g >= 0; --g) stride[g] = st, st *= size[g];
  Plan p;
  for (int g = 0; g < n; ++g) {
    Dims& d = red[g] ? p.reduced : p.kept;
    d.size[d.rank] = size[g], d.stride[d.rank] = stride[g];
    ++d.rank;
    (red[g] ? p.red : p.n_out) *= size[g];
  }
  return p;
}

std::vector<bool> axes_mask(int rank, const std::vector<int64_t>& axes) {
  std::vector<bool> m(rank, false);
  for (int64_t a : axes) m[normalize_axis(a, rank, "reduce")] = true;
  return m;
}

template <class Op>
void reduce_values(const Tensor& x, Tensor& y, const Plan& p, const char* name) {
  if (!Op::empty_ok && p.n_out > 0 && p.red == 0)
    throw Error("cannot take the max or min over a zero-size axis (shape " + x.shape().str() + ")");
  KILN_DISPATCH_NUMERIC(x.dtype(), name,
                        launch<Op, acc_t<Op, scalar_t>>(x.data<scalar_t>(), y.data<scalar_t>(), p, name));
}

template <class Op>
void reduce_kernel_fn(const KernelContext& c) {
  const Tensor& x = c.input(0);
  reduce_values<Op>(x, c.output(0), plan_for(x.shape(), axes_mask(x.rank(), c.attrs.ints("axes"))), "reduce");
}

void mean_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Plan p = plan_for(x.shape(), axes_mask(x.rank(), c.attrs.ints("axes")));
  p.scale = p.red ? 1.0 / static_cast<double>(p.red) : std::nan("");  // the mean of nothing is NaN
  KILN_DISPATCH_FLOAT(x.dtype(), "mean",
                      launch<Sum, acc_t<Sum, scalar_t>>(x.data<scalar_t>(), c.output(0).data<scalar_t>(), p, "mean"));
}

// numpy broadcasting in reverse: the leading dims of x, and its dims where the target has a 1.
void sum_to_like_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const Shape& to = c.output(0).shape();
  std::vector<bool> mask(x.rank(), false);
  const int lead = x.rank() - to.rank();
  for (int i = 0; i < x.rank(); ++i) mask[i] = i < lead || (to[i - lead] == 1 && x.shape()[i] != 1);
  reduce_values<Sum>(x, c.output(0), plan_for(x.shape(), mask), "sum_to_like");
}

template <bool is_max>
void arg_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const char* name = is_max ? "argmax" : "argmin";
  const int axis = normalize_axis(c.attrs.i("axis"), x.rank(), "argmax");
  if (x.shape()[axis] == 0) throw Error(std::string(name) + ": axis of size 0 in shape " + x.shape().str());
  std::vector<bool> mask(x.rank(), false);
  mask[axis] = true;
  const Plan p = plan_for(x.shape(), mask);
  KILN_DISPATCH_NUMERIC(
      x.dtype(), name, launch<Arg<is_max>, ArgVal<scalar_t>>(x.data<scalar_t>(), c.output(0).data<int64_t>(), p, name));
}

// topk: one thread a row (as ops/reduce.cpp ranks: NaN above every number, the lower index first
// among equals). The row's k output slots hold a heap of the entries kept, the worst on top, which is
// then sorted in place, best first: O(dim log k) on one thread a row, fine for kNN's 1000 rows of
// 50,000 and far from a tuned GPU selection.
template <class T, bool largest>
__device__ inline bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return largest ? na : nb;
  if (na || a == b) return ia < ib;
  return largest ? a > b : a < b;
}

template <class T, bool largest>
__global__ void topk_rows(const T* x, int64_t rows, int64_t dim, int64_t inner, int64_t k, T* vals, int64_t* idx) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = row / inner, i = row % inner;
    const T* p = x + o * dim * inner + i;
    T* v = vals + o * k * inner + i;
    int64_t* ix = idx + o * k * inner + i;
    auto worse = [&](int64_t a, int64_t b) {  // slot a ranks after slot b
      return ranks_before<T, largest>(v[b * inner], ix[b * inner], v[a * inner], ix[a * inner]);
    };
    auto swap = [&](int64_t a, int64_t b) {
      const T tv = v[a * inner];
      const int64_t ti = ix[a * inner];
      v[a * inner] = v[b * inner];
      ix[a * inner] = ix[b * inner];
      v[b * inner] = tv;
      ix[b * inner] = ti;
    };
    auto sift_down = [&](int64_t j, int64_t n) {
      for (;;) {
        const int64_t l = 2 * j + 1, r = l + 1;
        int64_t w = j;
        if (l < n && worse(l, w)) w = l;
        if (r < n && worse(r, w)) w = r;
        if (w == j) return;
        swap(j, w);
        j = w;
      }
    };
    for (int64_t j = 0; j < k; ++j) {  // the first k, each sifted up
      v[j * inner] = p[j * inner];
      ix[j * inner] = j;
      for (int64_t c = j; c > 0 && worse(c, (c - 1) / 2); c = (c - 1) / 2) swap(c, (c - 1) / 2);
    }
    for (int64_t j = k; j < dim; ++j) {
      const T e = p[j * inner];
      if (!ranks_before<T, largest>(e, j, v[0], ix[0])) continue;
      v[0] = e;
      ix[0] = j;
      sift_down(0, k);
    }
    for (int64_t n = k - 1; n > 0; --n) {  // the worst to the end, one at a time
      swap(0, n);
      sift_down(0, n);
    }
  }
}

void topk_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const int axis = normalize_axis(c.attrs.i("axis"), x.rank(), "topk");
  const int64_t k = c.attrs.i("k");
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  const int64_t rows = outer * inner;
  if (rows == 0 || k == 0) return;
  const bool largest = c.attrs.i("largest", 1) != 0;
  KILN_DISPATCH_NUMERIC(x.dtype(), "topk", {
    auto kernel = largest ? topk_rows<scalar_t, true> : topk_rows<scalar_t, false>;
    kernel<<<blocks_for(rows), kThreads, 0, stream()>>>(x.data<scalar_t>(), rows, x.shape()[axis], inner, k,
                                                        c.output(0).data<scalar_t>(), c.output(1).data<int64_t>());
  });
  check_launch("topk");
}

template <class T>
__global__ void store_scalar(T* y, T v) {
  *y = v;
}

// The count depends on the shape only: it is computed here and stored by a one-thread kernel.
void count_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  int64_t n = 1;
  for (int64_t a : c.attrs.ints("axes")) n *= x.shape()[normalize_axis(a, x.rank(), "count")];
  Tensor& y = c.output(0);
  KILN_DISPATCH_ALL(y.dtype(), "count", {
    store_scalar<<<1, 1, 0, stream()>>>(y.data<scalar_t>(), static_cast<scalar_t>(static_cast<double>(n)));
  });
  check_launch("count");
}

}  // namespace

void register_reduce_kernels(OpRegistry& r) {
  r.set_cuda_kernel("sum", reduce_kernel_fn<Sum>);
  r.set_cuda_kernel("mean", mean_kernel);
  r.set_cuda_kernel("prod", reduce_kernel_fn<Prod>);
  r.set_cuda_kernel("max", reduce_kernel_fn<Max>);
  r.set_cuda_kernel("min", reduce_kernel_fn<Min>);
  r.set_cuda_kernel("argmax", arg_kernel<true>);
  r.set_cuda_kernel("argmin", arg_kernel<false>);
  r.set_cuda_kernel("count", count_kernel);
  r.set_cuda_kernel("topk", topk_kernel);
  r.set_cuda_kernel("sum_to_like", sum_to_like_kernel);
}

}  // namespace kiln::cuda
