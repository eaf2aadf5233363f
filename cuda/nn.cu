// CUDA kernels of the nn ops (cpp/src/ops/nn.cpp defines the ops and their CPU kernels): batch norm and softmax
// cross-entropy with their gradients, by the CPU's formulas. Batch norm in training can also run on cuDNN (opt-in:
// kiln's kernels measured faster). Dropout draws
// random numbers: it is in random.cu.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "common.cuh"
#ifdef KILN_WITH_CUDNN
#include "cudnn.cuh"
#endif

namespace kiln::cuda {
namespace {

// expf for float: a double exp per element would make the loss compute-bound.
__device__ float exp_t(float v) { return expf(v); }
__device__ double exp_t(double v) { return exp(v); }

// ---- block reductions ----

struct Moments {  // count, mean, sum of squared deviations from the mean
  double n, mean, m2;
};
struct Sums2 {
  double a, b;
};
struct MaxSum {  // running maximum m and sum of exp(v - m)
  double m, s;
};

template <class A>  // double or a struct of doubles
__device__ A shfl_xor(A v, int lane_mask) {
  double* d = reinterpret_cast<double*>(&v);
  for (unsigned i = 0; i < sizeof(A) / sizeof(double); ++i) d[i] = __shfl_xor_sync(0xffffffffu, d[i], lane_mask);
  return v;
}

struct Add {
  __device__ double operator()(double a, double b) const { return a + b; }
  __device__ Sums2 operator()(Sums2 x, Sums2 y) const { return {x.a + y.a, x.b + y.b}; }
};
struct Merge {  // Chan et al.: no cancellation however far apart the means are
  __device__ Moments operator()(const Moments& a, const Moments& b) const {
    if (b.n == 0) return a;
    if (a.n == 0) return b;
    const double n = a.n + b.n, d = b.mean - a.mean, f = b.n / n;
    return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
  }
};
struct MergeMaxSum {
  __device__ MaxSum operator()(MaxSum a, MaxSum b) const {  // ordered by maximum: both lanes of a butterfly agree
    const MaxSum hi = a.m < b.m ? b : a, lo = a.m < b.m ? a : b;
    return lo.s == 0 ? hi : MaxSum{hi.m, hi.s + lo.s * exp(lo.m - hi.m)};
  }
};

template <class A, class Op>
__device__ A warp_reduce(A v, Op op) {
  for (int k = 16; k > 0; k >>= 1) v = op(v, shfl_xor(v, k));
  return v;
}

// The reduction over the block (blockDim a multiple of 32), in every thread: each combines the warps' partials in the
// same order, so all hold the same bits.
template <class A, class Op>
__device__ A block_reduce(A v, Op op) {
  __shared__ A part[32];
  v = warp_reduce(v, op);
  __syncthreads();  // an earlier call's readers are done with part
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  v = part[0];
  for (unsigned w = 1; w < (blockDim.x >> 5); ++w) v = op(v, part[w]);
  return v;
}

// Warp 0 of a block of channel ch: the partials that the channel's gridDim.y blocks wrote, merged (lane 0 holds it).
template <class A, class Op>
__device__ A merge_parts(const A* part, int64_t ch, Op op) {
  A s{};
  for (unsigned k = threadIdx.x; k < gridDim.y; k += 32) s = op(s, part[ch * gridDim.y + k]);
  return warp_reduce(s, op);
}

// ---- batch norm over axis 1 of (N, C, S...) ----
// Grid (C, B): B blocks share a channel, so that a few wide channels still fill the GPU. Within a channel, element j
// is (n, s) = (j / S, j % S), at n*C*S + c*S + s; threads stride over j with a precomputed step instead of dividing.

struct Plane {
  int64_t m;       // values per channel, N * S
  int64_t s, cs;   // S (1 when empty), C * S
  int64_t step;    // B * blockDim: a thread's stride over j
  int64_t dn, ds;  // step / S, step % S
};

struct Cursor {
  int64_t j, s, off;
  __device__ Cursor(const Plane& p, int64_t ch, int64_t j0) : j(j0) {
    const int64_t n = j0 / p.s;
    s = j0 - n * p.s;
    off = n * p.cs + ch * p.s + s;
  }
  __device__ void next(const Plane& p) {
    j += p.step;
    s += p.ds;
    off += p.dn * p.cs + p.ds;
    if (s >= p.s) s -= p.s, off += p.cs - p.s;
  }
};

// Calls use(offset, load(offset)) for this thread's elements of channel ch. Four loads are issued before they are used:
// one load in flight per thread is too few to keep HBM busy.
template <class Load, class Use>
__device__ void walk(const Plane& p, int64_t ch, Load load, Use use) {
  constexpr int U = 4;
  using V = decltype(load(int64_t(0)));
  const int64_t j0 = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (j0 >= p.m) return;
  Cursor c(p, ch, j0);
  while (c.j < p.m) {
    V v[U] = {};
    int64_t off[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      ok[u] = c.j < p.m;
      off[u] = c.off;
      if (ok[u]) v[u] = load(off[u]);
      c.next(p);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (ok[u]) use(off[u], v[u]);
  }
}

// Per thread Welford in T (the CPU too sums short runs in T and combines them in double), merged in double.
template <class T>
__global__ void bn_stats(const T* x, Plane p, Moments* part) {
  T mean = 0, m2 = 0;
  int cnt = 0;
  const auto load = [&](int64_t o) { return x[o]; };
  walk(p, blockIdx.x, load, [&](int64_t, T v) {
    const T d = v - mean;
    mean += d / T(++cnt);
    m2 += d * (v - mean);
  });
  const Moments s = block_reduce(Moments{double(cnt), double(mean), double(m2)}, Merge{});
  if (threadIdx.x == 0) part[blockIdx.x * gridDim.y + blockIdx.y] = s;
}

template <class T>
struct BnArgs {
  const T *gamma, *beta, *rm, *rv;
  T *nrm, *nrv, *mean_out, *invstd_out;
  double eps, momentum;
};

// y = x * a + b. Every block of a channel merges its partials (the same bits in each); the first writes the
// statistics. Without partials (inference) the running statistics normalize.
template <class T>
__global__ void bn_apply(const T* x, T* y, Plane p, const Moments* part, BnArgs<T> a) {
  __shared__ T coef[2];
  const int64_t ch = blockIdx.x;
  if (threadIdx.x < 32) {
    double mean, var;
    if (part) {
      const Moments s = merge_parts(part, ch, Merge{});
      mean = s.mean;
      var = s.m2 / double(p.m);
    } else {
      mean = a.rm[ch];
      var = a.rv[ch];
    }
    if (threadIdx.x == 0) {
      const double invstd = 1.0 / sqrt(var + a.eps), gamma = a.gamma[ch];
      coef[0] = T(gamma * invstd);
      coef[1] = T(a.beta[ch] - mean * gamma * invstd);
      if (blockIdx.y == 0) {
        const double m = double(p.m), mom = a.momentum;
        // In inference the new running statistics are the old: blocks reading rm while it is rewritten in place
        // read the same value.
        a.nrm[ch] = part ? T((1 - mom) * a.rm[ch] + mom * mean) : a.rm[ch];
        a.nrv[ch] = part ? T((1 - mom) * a.rv[ch] + mom * var * m / (m - 1)) : a.rv[ch];  // unbiased, as torch
        a.mean_out[ch] = T(mean);
        a.invstd_out[ch] = T(invstd);
      }
    }
  }
  __syncthreads();
  const T ca = coef[0], cb = coef[1];
  const auto load = [&](int64_t o) { return x[o]; };
  walk(p, ch, load, [&](int64_t o, T v) { y[o] = v * ca + cb; });
}

template <class T>
struct GX {
  T g, x;
};

// sum(g) and sum(g * (x - mean)) per block; the CPU multiplies by invstd after summing too.
template <class T>
__global__ void bn_grad_sums(const T* g, const T* x, const T* mean, Plane p, Sums2* part) {
  const T mu = mean[blockIdx.x];
  T sg = 0, sgx = 0;
  const auto load = [&](int64_t o) { return GX<T>{g[o], x[o]}; };
  walk(p, blockIdx.x, load, [&](int64_t, GX<T> v) {
    sg += v.g;
    sgx += v.g * (v.x - mu);
  });
  const Sums2 s = block_reduce(Sums2{double(sg), double(sgx)}, Add{});
  if (threadIdx.x == 0) part[blockIdx.x * gridDim.y + blockIdx.y] = s;
}

template <class T>
struct BnGradArgs {
  const T *gamma, *mean, *invstd;
  T *dgamma, *dbeta;
  bool training;
};

template <class T>
__global__ void bn_grad_apply(const T* g, const T* x, T* dx, Plane p, const Sums2* part, BnGradArgs<T> a) {
  __shared__ T coef[3];
  const int64_t ch = blockIdx.x;
  const T is = a.invstd[ch], mu = a.mean[ch];
  if (threadIdx.x < 32) {
    const Sums2 s = merge_parts(part, ch, Add{});
    if (threadIdx.x == 0) {
      const double sg = s.a, sgx = s.b * is;
      coef[0] = a.gamma[ch] * is;  // a product in T, as the CPU's
      coef[1] = T(sg / p.m);
      coef[2] = T(sgx / p.m);
      if (blockIdx.y == 0) a.dgamma[ch] = T(sgx), a.dbeta[ch] = T(sg);
    }
  }
  __syncthreads();
  const T sc = coef[0], mg = coef[1], mgx = coef[2];
  const auto load_gx = [&](int64_t o) { return GX<T>{g[o], x[o]}; };
  const auto load_g = [&](int64_t o) { return g[o]; };
  if (a.training)  // the batch statistics depend on x too
    walk(p, ch, load_gx, [&](int64_t o, GX<T> v) { dx[o] = sc * (v.g - mg - (v.x - mu) * is * mgx); });
  else
    walk(p, ch, load_g, [&](int64_t o, T v) { dx[o] = sc * v; });
}

// Blocks of both kernels of a pass that fit on the GPU at once.
template <class K1, class K2>
int64_t resident_blocks(K1 first, K2 second) {
  int a = 0, b = 0, sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "querying the multiprocessor count");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&a, first, kThreads, 0), "an occupancy query");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, second, kThreads, 0), "an occupancy query");
  return std::max(1, std::min(a, b)) * int64_t(sms);
}

// Blocks per channel: what fills the GPU in one wave (a second, partial wave would cost a whole one), but no fewer
// than four elements per thread.
Plane plane_of(const Shape& x, int64_t resident) {
  int64_t s = 1;
  for (int i = 2; i < x.rank(); ++i) s *= x[i];
  const int64_t c = std::max<int64_t>(x[1], 1), m = x[0] * s;
  const int64_t b = std::clamp<int64_t>(std::min(resident / c, (m + 4 * kThreads - 1) / (4 * kThreads)), 1, 65535);
  Plane p{m, std::max<int64_t>(s, 1), x[1] * s, b * kThreads, 0, 0};
  p.dn = p.step / p.s;
  p.ds = p.step % p.s;
  return p;
}
dim3 grid_of(const Shape& x, const Plane& p) {
  return dim3(static_cast<unsigned>(x[1]), static_cast<unsigned>(p.step / kThreads));
}

// inputs: x, gamma, beta, running_mean, running_var
// outputs: y, new running_mean, new running_var, mean used, 1/sqrt(var used + eps)
template <class T>
void batch_norm_typed(const KernelContext& c) {
  const Tensor& x = c.input(0);
  static const int64_t resident = resident_blocks(bn_stats<T>, bn_apply<T>);
  const Plane p = plane_of(x.shape(), resident);
  if (c.training && p.m <= 1)
    throw Error("batch_norm: training needs more than one value per channel, got input of shape " + x.shape().str());
  const dim3 grid = grid_of(x.shape(), p);
  if (grid.x == 0) return;
  const auto in = [&](int i) { return c.input(i).data<T>(); };
  const auto out = [&](int i) { return c.output(i).data<T>(); };
  const BnArgs<T> a{
      in(1), in(2), in(3), in(4), out(1), out(2), out(3), out(4), c.attrs.f("eps"), c.attrs.f("momentum")};
  Scratch part(c.training ? size_t(grid.x) * grid.y * sizeof(Moments) : 0);
  if (c.training) {
    bn_stats<T><<<grid, kThreads, 0, stream()>>>(in(0), p, part.as<Moments>());
    check_launch("batch_norm");
  }
  bn_apply<T><<<grid, kThreads, 0, stream()>>>(in(0), out(0), p, part.as<Moments>(), a);
  check_launch("batch_norm");
}

// inputs: g, x, gamma, mean, invstd; outputs: dx, dgamma, dbeta
template <class T>
void batch_norm_grad_typed(const KernelContext& c) {
  static const int64_t resident = resident_blocks(bn_grad_sums<T>, bn_grad_apply<T>);
  const Plane p = plane_of(c.input(1).shape(), resident);
  const dim3 grid = grid_of(c.input(1).shape(), p);
  if (grid.x == 0) return;
  const auto in = [&](int i) { return c.input(i).data<T>(); };
  const BnGradArgs<T> a{in(2), in(3), in(4), c.output(1).data<T>(), c.output(2).data<T>(), c.training};
  Scratch part(size_t(grid.x) * grid.y * sizeof(Sums2));
  bn_grad_sums<T><<<grid, kThreads, 0, stream()>>>(in(0), in(1), a.mean, p, part.as<Sums2>());
  check_launch("batch_norm_grad");
  bn_grad_apply<T><<<grid, kThreads, 0, stream()>>>(in(0), in(1), c.output(0).data<T>(), p, part.as<Sums2>(), a);
  check_launch("batch_norm_grad");
}

#ifdef KILN_WITH_CUDNN
// Batch statistics through cuDNN (spatial mode, (N, C, H*W, 1)), when KILN_CUDNN_BATCH_NORM=1. cuDNN's training
// pass also keeps the running statistics (the variance unbiased, as kiln's) and saves the mean and
// 1/sqrt(var + eps) that its backward pass and kiln's both take. Off by default: on an H200 (2026-11-30) cuDNN's
// forward took 1.6x and its backward 2.6x the time of kiln's kernels in a ResNet-18 step (bench/README.md).
bool cudnn_batch_norm(const KernelContext& c, double eps) {
  const char* on = std::getenv("KILN_CUDNN_BATCH_NORM");  // read each call: a benchmark switches it
  return on && std::string(on) == "1" && c.training && eps >= CUDNN_BN_MIN_EPSILON;
}

struct BnDescs {
  TensorDesc x, stats;
  BnDescs(const Shape& shape, DType dtype, const char* op) : x(op), stats(op) {
    int64_t s = 1;
    for (int i = 2; i < shape.rank(); ++i) s *= shape[i];
    const int64_t spatial[2] = {s, 1};
    set_tensor(x.d, dnn_type(dtype, op), shape[0], shape[1], spatial, 2, op);
    check_dnn(cudnnDeriveBNTensorDescriptor(stats.d, x.d, CUDNN_BATCHNORM_SPATIAL), op,
              "cudnnDeriveBNTensorDescriptor");
  }
};

// cuDNN's scaling factors: double for double data, float otherwise.
struct Scale {
  float f;
  double d;
  const void* of(DType t) const { return t == DType::float64 ? static_cast<const void*>(&d) : &f; }
};
constexpr Scale kOne{1, 1}, kZero{0, 0};

void batch_norm_cudnn(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const BnDescs dd(x.shape(), x.dtype(), "batch_norm");
  // cuDNN updates the running statistics in place: outputs 1 and 2 start as their old values.
  for (int i = 1; i <= 2; ++i)
    if (c.output(i).raw() != c.input(i + 2).raw())
      check(cudaMemcpyAsync(c.output(i).raw(), c.input(i + 2).raw(), c.output(i).nbytes(), cudaMemcpyDeviceToDevice,
                            stream()),
            "batch_norm");
  check_dnn(cudnnBatchNormalizationForwardTraining(
                handle("batch_norm"), CUDNN_BATCHNORM_SPATIAL, kOne.of(x.dtype()), kZero.of(x.dtype()), dd.x.d, x.raw(),
                dd.x.d, c.output(0).raw(), dd.stats.d, c.input(1).raw(), c.input(2).raw(), c.attrs.f("momentum"),
                c.output(1).raw(), c.output(2).raw(), c.attrs.f("eps"), c.output(3).raw(), c.output(4).raw()),
            "batch_norm", "cudnnBatchNormalizationForwardTraining");
}

// inputs: g, x, gamma, mean, invstd; outputs: dx, dgamma, dbeta. With the saved statistics given, cuDNN does not
// read eps.
void batch_norm_grad_cudnn(const KernelContext& c) {
  const Tensor& x = c.input(1);
  const BnDescs dd(x.shape(), x.dtype(), "batch_norm_grad");
  const void *one = kOne.of(x.dtype()), *zero = kZero.of(x.dtype());
  check_dnn(cudnnBatchNormalizationBackward(handle("batch_norm_grad"), CUDNN_BATCHNORM_SPATIAL, one, zero, one, zero,
                                            dd.x.d, x.raw(), dd.x.d, c.input(0).raw(), dd.x.d, c.output(0).raw(),
                                            dd.stats.d, c.input(2).raw(), c.output(1).raw(), c.output(2).raw(),
                                            CUDNN_BN_MIN_EPSILON, c.input(3).raw(), c.input(4).raw()),
            "batch_norm_grad", "cudnnBatchNormalizationBackward");
}
#endif

// ---- softmax cross-entropy over the last axis of (N, C) logits: one block per row ----
// A label outside [0, C) that is not ignore_index cannot throw here as on the CPU (that would need a copy to the
// host): its loss, weight and gradient row are NaN instead, so the error still shows.

// The row's maximum and sum of exp(v - max) in one pass over it (the online softmax); the rescaling runs in double.
template <class T>
__device__ MaxSum row_max_sum(const T* row, int64_t classes) {
  T m = -INFINITY;
  double s = 0;
  for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
    const T v = row[j];
    if (v > m) {
      s = s * exp(double(m) - double(v)) + double(v - v + T(1));  // v - v: NaN for +inf, as the CPU's exp(inf - inf)
      m = v;
    } else if (v != T(-INFINITY)) {  // -inf adds nothing, even while the maximum is -inf
      s += double(exp_t(T(v - m)));
    }
  }
  return block_reduce(MaxSum{double(m), s}, MergeMaxSum{});
}

struct CeArgs {
  int64_t n, c, ignore;
  double smoothing;
};

template <class T, class L>
__global__ void ce_forward(const T* z, const L* labels, const T* w, CeArgs a, T* loss, T* wout) {
  for (int64_t i = blockIdx.x; i < a.n; i += gridDim.x) {
    const T* row = z + i * a.c;
    const int64_t y = labels[i];
    if (y == a.ignore || y < 0 || y >= a.c) {
      if (threadIdx.x == 0) loss[i] = wout[i] = y == a.ignore ? T(0) : T(NAN);
      continue;
    }
    const MaxSum ms = row_max_sum(row, a.c);
    const double lse = ms.m + log(ms.s), wy = w ? double(w[y]) : 1.0;
    double l = wy * (lse - row[y]);
    if (a.smoothing > 0) {
      double smooth = 0;
      for (int64_t j = threadIdx.x; j < a.c; j += blockDim.x) smooth += (w ? double(w[j]) : 1.0) * (lse - row[j]);
      smooth = block_reduce(smooth, Add{});
      l = (1 - a.smoothing) * l + a.smoothing / a.c * smooth;
    }
    if (threadIdx.x == 0) loss[i] = T(l), wout[i] = T(wy);
  }
}

template <class T, class L>
__global__ void ce_backward(const T* g, const T* z, const L* labels, const T* w, CeArgs a, T* dz) {
  const double soft = a.smoothing / a.c;
  double ws = a.c;  // the sum of the class weights: each block sums them (in L2) rather than wait for another kernel
  if (w) {
    ws = 0;
    for (int64_t j = threadIdx.x; j < a.c; j += blockDim.x) ws += w[j];
    ws = block_reduce(ws, Add{});
  }
  for (int64_t i = blockIdx.x; i < a.n; i += gridDim.x) {
    const T* row = z + i * a.c;
    T* d = dz + i * a.c;
    const int64_t y = labels[i];
    if (y == a.ignore || y < 0 || y >= a.c) {
      for (int64_t j = threadIdx.x; j < a.c; j += blockDim.x) d[j] = y == a.ignore ? T(0) : T(NAN);
      continue;
    }
    const MaxSum ms = row_max_sum(row, a.c);
    const T mx = T(ms.m);
    const double wy = w ? double(w[y]) : 1.0, gi = g[i], hard = wy * (1 - a.smoothing);
    for (int64_t j = threadIdx.x; j < a.c; j += blockDim.x) {
      const double p = double(exp_t(T(row[j] - mx))) / ms.s;
      const double dj = hard * (p - (j == y)) + soft * (p * ws - (w ? double(w[j]) : 1.0));
      d[j] = T(gi * dj);
    }
  }
}

unsigned ce_threads(int64_t classes) {  // enough for the row, a multiple of a warp
  return static_cast<unsigned>(std::clamp<int64_t>((classes + 31) / 32 * 32, 32, 512));
}
unsigned ce_blocks(int64_t rows) { return static_cast<unsigned>(std::min<int64_t>(rows, 1 << 30)); }

template <class F>
void with_labels(const Tensor& labels, F f) {
  if (labels.dtype() == DType::int32)
    f(labels.data<int32_t>());
  else
    f(labels.data<int64_t>());
}

CeArgs ce_args(const KernelContext& c, const Tensor& z) {
  return {z.shape()[0], z.shape()[1], c.attrs.i("ignore_index", -100), c.attrs.f("label_smoothing", 0.0)};
}

// inputs: logits, labels[, weight]; outputs: per-sample loss, per-sample weight (0 if ignored)
template <class T>
void ce_typed(const KernelContext& c) {
  const CeArgs a = ce_args(c, c.input(0));
  if (a.n == 0) return;
  const T *z = c.input(0).data<T>(), *w = c.n_in > 2 ? c.input(2).data<T>() : nullptr;
  with_labels(c.input(1), [&](auto* labels) {
    ce_forward<<<ce_blocks(a.n), ce_threads(a.c), 0, stream()>>>(z, labels, w, a, c.output(0).data<T>(),
                                                                 c.output(1).data<T>());
  });
  check_launch("softmax_cross_entropy");
}

// inputs: g (N,), logits, labels[, weight]; output: d logits
template <class T>
void ce_grad_typed(const KernelContext& c) {
  const CeArgs a = ce_args(c, c.input(1));
  if (a.n == 0) return;
  const T* w = c.n_in > 3 ? c.input(3).data<T>() : nullptr;
  with_labels(c.input(2), [&](auto* labels) {
    ce_backward<<<ce_blocks(a.n), ce_threads(a.c), 0, stream()>>>(c.input(0).data<T>(), c.input(1).data<T>(), labels, w,
                                                                  a, c.output(0).data<T>());
  });
  check_launch("softmax_cross_entropy_grad");
}

}  // namespace

void register_nn_kernels(OpRegistry& r) {
  r.set_cuda_kernel("batch_norm", [](const KernelContext& c) {
#ifdef KILN_WITH_CUDNN
    const Shape& xs = c.input(0).shape();
    if (cudnn_batch_norm(c, c.attrs.f("eps")) && xs[1] > 0 && c.input(0).numel() > xs[1]) return batch_norm_cudnn(c);
#endif
    KILN_DISPATCH_FLOAT(c.input(0).dtype(), "batch_norm", batch_norm_typed<scalar_t>(c));
  });
  r.set_cuda_kernel("batch_norm_grad", [](const KernelContext& c) {
#ifdef KILN_WITH_CUDNN
    // The op has no eps: the saved statistics stand for it.
    if (cudnn_batch_norm(c, CUDNN_BN_MIN_EPSILON) && c.input(1).numel() > 0) return batch_norm_grad_cudnn(c);
#endif
    KILN_DISPATCH_FLOAT(c.input(1).dtype(), "batch_norm_grad", batch_norm_grad_typed<scalar_t>(c));
  });
  r.set_cuda_kernel("softmax_cross_entropy", [](const KernelContext& c) {
    KILN_DISPATCH_FLOAT(c.input(0).dtype(), "softmax_cross_entropy", ce_typed<scalar_t>(c));
  });
  r.set_cuda_kernel("softmax_cross_entropy_grad", [](const KernelContext& c) {
    KILN_DISPATCH_FLOAT(c.input(1).dtype(), "softmax_cross_entropy_grad", ce_grad_typed<scalar_t>(c));
  });
}

}  // namespace kiln::cuda
