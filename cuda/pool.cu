// CUDA kernels of the pool ops (cpp/src/ops/pool.cpp defines the ops and their CPU kernels). One
// thread per output element, or per input element for the gradients that gather, with the CPU's
// window formulas, tie and NaN rules and order of summation: the results match the CPU's bit for bit,
// but for max_pool_grad's float atomics where three or more windows share one maximum.
#include <climits>
#include <string>

#include "common.cuh"

namespace kiln::cuda {
namespace {

// A pooling's geometry as 3-D (1-D and 2-D have leading size-1 dims), as ops/pool.cpp's PoolGeom.
struct PoolGeom {
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, ker[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
  bool adaptive = false, include_pad = true;
  __host__ __device__ int64_t I() const { return in[0] * in[1] * in[2]; }
  __host__ __device__ int64_t P() const { return out[0] * out[1] * out[2]; }
};

// x: the input's shape, y: the output's (the output size, ceil_mode included, is read from it).
PoolGeom make_geom(const Shape& x, const Shape& y, const Attrs& a, bool adaptive, const char* op) {
  PoolGeom g;
  const int sp = x.rank() - 2;
  if (sp < 1 || sp > 3 || y.rank() != x.rank())
    throw Error(std::string(op) + ": expects (N, C, ...) tensors with 1-3 spatial dims, got " + x.str() + " and " +
                y.str());
  g.adaptive = adaptive;
  g.include_pad = a.i("count_include_pad", 1) != 0;
  auto vec = [&](const char* name) -> const std::vector<int64_t>& {
    const auto& v = a.ints(name);
    if (static_cast<int>(v.size()) != sp)
      throw Error(std::string(op) + ": " + name + " needs " + std::to_string(sp) + " values for input " + x.str());
    return v;
  };
  for (int i = 0; i < sp; ++i) {
    const int j = 3 - sp + i;
    g.in[j] = x[2 + i];
    g.out[j] = y[2 + i];
    if (adaptive) continue;
    g.ker[j] = vec("kernel")[i];
    g.stride[j] = vec("stride")[i];
    g.pad[j] = vec("padding")[i];
  }
  return g;
}

// Flat index -> (plane, coordinates) over (planes, size[0..2]); 32-bit division where the tensor
// allows (Idx = int32_t): a 64-bit division is a long software sequence on the GPU, several per element.
template <class Idx>
__device__ inline int64_t split(int64_t flat, const int64_t* size, int64_t* c) {
  Idx i = static_cast<Idx>(flat);
  const Idx s0 = static_cast<Idx>(size[0]), s1 = static_cast<Idx>(size[1]), s2 = static_cast<Idx>(size[2]);
  c[2] = i % s2;
  i /= s2;
  c[1] = i % s1;
  i /= s1;
  c[0] = i % s0;
  return i / s0;
}

template <class F>
void with_index_type(int64_t n, F&& f) {
  if (n <= INT_MAX)
    f(int32_t{});
  else
    f(int64_t{});
}

// The window of output index o along dim d, clipped to the input, and its divisor (pool.cpp's window()).
struct Window {
  int64_t lo, hi, count;
};
__device__ inline Window window(const PoolGeom& g, int d, int64_t o) {
  if (g.adaptive) {
    const int64_t lo = (o * g.in[d]) / g.out[d], hi = ((o + 1) * g.in[d] + g.out[d] - 1) / g.out[d];
    return {lo, hi, hi - lo};
  }
  int64_t lo = o * g.stride[d] - g.pad[d], hi = min(lo + g.ker[d], g.in[d] + g.pad[d]);
  const int64_t padded = hi - lo;
  lo = max(lo, int64_t(0));
  hi = min(hi, g.in[d]);
  return {lo, hi, g.include_pad ? padded : hi - lo};
}

// The output indices [lo, hi) along dim d whose windows may hold input index x (a superset: the
// gather checks each window).
__device__ inline void outputs_of(const PoolGeom& g, int d, int64_t x, int64_t& lo, int64_t& hi) {
  if (g.adaptive) {
    lo = x * g.out[d] / g.in[d];
    hi = min(g.out[d], ((x + 1) * g.out[d] + g.in[d] - 1) / g.in[d]);
    return;
  }
  const int64_t t = x + g.pad[d] - g.ker[d] + 1;
  lo = t <= 0 ? 0 : (t + g.stride[d] - 1) / g.stride[d];
  hi = min(g.out[d], (x + g.pad[d]) / g.stride[d] + 1);
}

// The first maximum in window order (d, h, w) and its plane index; a NaN, once met, wins (torch's
// rule, which the CPU's fold_max and first_nan reproduce).
template <class T, class Idx>
__global__ void max_pool_kernel(int64_t n, const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ idx,
                                PoolGeom g) {
  const int64_t I = g.I();
  KILN_GRID_LOOP(i, n) {
    int64_t o[3];
    const int64_t pl = split<Idx>(i, g.out, o);
    const Window w0 = window(g, 0, o[0]), w1 = window(g, 1, o[1]), w2 = window(g, 2, o[2]);
    if (w0.lo >= w0.hi || w1.lo >= w1.hi || w2.lo >= w2.hi) {  // only an empty input has empty windows
      y[i] = T(NAN);
      idx[i] = -1;
      continue;
    }
    const T* plane = x + pl * I;
    int64_t arg = (w0.lo * g.in[1] + w1.lo) * g.in[2] + w2.lo;
    T best = plane[arg];
    for (int64_t d = w0.lo; d < w0.hi; ++d)
      for (int64_t h = w1.lo; h < w1.hi; ++h) {
        const int64_t row = (d * g.in[1] + h) * g.in[2];
        for (int64_t v = w2.lo; v < w2.hi; ++v) {
          const T val = plane[row + v];
          if (val > best || (val != val && best == best)) best = val, arg = row + v;
        }
      }
    y[i] = best;
    idx[i] = arg;
  }
}

// Sums in double in window order, as the CPU.
template <class T, class Idx>
__global__ void avg_pool_kernel(int64_t n, const T* __restrict__ x, T* __restrict__ y, PoolGeom g) {
  const int64_t I = g.I();
  KILN_GRID_LOOP(i, n) {
    int64_t o[3];
    const int64_t pl = split<Idx>(i, g.out, o);
    const Window w0 = window(g, 0, o[0]), w1 = window(g, 1, o[1]), w2 = window(g, 2, o[2]);
    const T* plane = x + pl * I;
    double s = 0;
    for (int64_t d = w0.lo; d < w0.hi; ++d)
      for (int64_t h = w1.lo; h < w1.hi; ++h) {
        const int64_t row = (d * g.in[1] + h) * g.in[2];
        for (int64_t v = w2.lo; v < w2.hi; ++v) s += double(plane[row + v]);
      }
    const int64_t count = w0.count * w1.count * w2.count;
    y[i] = T(count ? s / double(count) : 0.0);
  }
}

template <bool adaptive>
void pool_kernel(const KernelContext& c, bool is_max) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const int64_t n = y.numel();
  if (n == 0) return;
  const PoolGeom g = make_geom(x.shape(), y.shape(), c.attrs, adaptive, "pool");
  KILN_DISPATCH_FLOAT(x.dtype(), "pool", with_index_type(n, [&](auto tag) {
                        using Idx = decltype(tag);
                        if (is_max)
                          max_pool_kernel<scalar_t, Idx><<<blocks_for(n), kThreads, 0, stream()>>>(
                              n, x.data<scalar_t>(), y.data<scalar_t>(), c.output(1).data<int64_t>(), g);
                        else
                          avg_pool_kernel<scalar_t, Idx>
                              <<<blocks_for(n), kThreads, 0, stream()>>>(n, x.data<scalar_t>(), y.data<scalar_t>(), g);
                      }));
  check_launch(is_max ? "max_pool" : "avg_pool");
}

void max_pool(const KernelContext& c) { pool_kernel<false>(c, true); }
void avg_pool(const KernelContext& c) { pool_kernel<false>(c, false); }
void adaptive_max_pool(const KernelContext& c) { pool_kernel<true>(c, true); }
void adaptive_avg_pool(const KernelContext& c) { pool_kernel<true>(c, false); }

// The op has no attributes, so the windows that hold an input are unknown: each gradient goes to
// its argmax with an atomic add. Two windows sharing a maximum add in either order to the same
// bits; with three or more the last bit may differ from the CPU's (which adds in output order).
template <class T, class Idx>
__global__ void max_pool_grad_kernel(int64_t n, int64_t P, int64_t I, const T* __restrict__ gy,
                                     const int64_t* __restrict__ idx, T* __restrict__ dx) {
  KILN_GRID_LOOP(i, n) {
    const int64_t j = idx[i];
    if (j >= 0 && j < I) atomicAdd(dx + int64_t(static_cast<Idx>(i) / static_cast<Idx>(P)) * I + j, gy[i]);
  }
}

void max_pool_grad(const KernelContext& c) {
  const Tensor &gy = c.input(0), &idx = c.input(1);
  Tensor& dx = c.output(0);
  if (dx.numel() == 0) return;
  check(cudaMemsetAsync(dx.raw(), 0, dx.nbytes(), stream()), "max_pool_grad");
  const int64_t n = gy.numel(), planes = dx.shape()[0] * dx.shape()[1];
  if (n == 0) return;
  const int64_t I = dx.numel() / planes, P = n / planes;
  KILN_DISPATCH_FLOAT(gy.dtype(), "max_pool_grad", with_index_type(n, [&](auto tag) {
                        max_pool_grad_kernel<scalar_t, decltype(tag)><<<blocks_for(n), kThreads, 0, stream()>>>(
                            n, P, I, gy.data<scalar_t>(), idx.data<int64_t>(), dx.data<scalar_t>());
                      }));
  check_launch("max_pool_grad");
}

// dx at one input position: the shares of the windows that hold it, added in output order from
// zero, as the CPU's scatter adds them (so the same bits).
template <class T, class Idx>
__global__ void avg_pool_grad_kernel(int64_t n, const T* __restrict__ gy, T* __restrict__ dx, PoolGeom g) {
  const int64_t P = g.P();
  KILN_GRID_LOOP(i, n) {
    int64_t x[3], lo[3], hi[3];
    const int64_t pl = split<Idx>(i, g.in, x);
    for (int d = 0; d < 3; ++d) outputs_of(g, d, x[d], lo[d], hi[d]);
    const T* gp = gy + pl * P;
    T acc = T(0);
    for (int64_t od = lo[0]; od < hi[0]; ++od) {
      const Window w0 = window(g, 0, od);
      if (x[0] < w0.lo || x[0] >= w0.hi) continue;
      for (int64_t oh = lo[1]; oh < hi[1]; ++oh) {
        const Window w1 = window(g, 1, oh);
        if (x[1] < w1.lo || x[1] >= w1.hi) continue;
        for (int64_t ow = lo[2]; ow < hi[2]; ++ow) {
          const Window w2 = window(g, 2, ow);
          const int64_t count = w0.count * w1.count * w2.count;
          if (x[2] < w2.lo || x[2] >= w2.hi || !count) continue;
          acc += gp[(od * g.out[1] + oh) * g.out[2] + ow] / T(count);
        }
      }
    }
    dx[i] = acc;
  }
}

template <bool adaptive>
void avg_pool_grad(const KernelContext& c) {
  const Tensor& gy = c.input(0);
  Tensor& dx = c.output(0);
  const int64_t n = dx.numel();
  if (n == 0) return;
  const PoolGeom g = make_geom(dx.shape(), gy.shape(), c.attrs, adaptive, "avg_pool_grad");
  KILN_DISPATCH_FLOAT(gy.dtype(), "avg_pool_grad", with_index_type(n, [&](auto tag) {
                        avg_pool_grad_kernel<scalar_t, decltype(tag)>
                            <<<blocks_for(n), kThreads, 0, stream()>>>(n, gy.data<scalar_t>(), dx.data<scalar_t>(), g);
                      }));
  check_launch("avg_pool_grad");
}

// ---- upsampling ----

// Per dim: sizes, and the host's step (in / out, or 1 / scale) and align_corners ratio, so the
// device repeats pool.cpp's source_coord operation for operation. The _rn intrinsics keep nvcc
// from fusing a multiply and an add the CPU rounds apart.
struct UpGeom {
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  double step[3] = {1, 1, 1}, ratio[3] = {0, 0, 0};
  bool nearest = false, align = false;
};

struct Lerp {
  int64_t i0, i1;
  double w1;  // the weight of i1
};

__device__ inline Lerp lerp(const UpGeom& g, int d, int64_t o) {
  const int64_t in = g.in[d];
  if (g.nearest) {
    const int64_t s = int64_t(fmin(floor(__dmul_rn(double(o), g.step[d])), double(in - 1)));
    return {s, s, 0.0};
  }
  double s;
  if (g.align) {
    s = g.out[d] > 1 ? __dmul_rn(double(o), g.ratio[d]) : 0.0;
  } else {
    s = __dsub_rn(__dmul_rn(__dadd_rn(double(o), 0.5), g.step[d]), 0.5);
    s = s < 0 ? 0.0 : s;
  }
  const int64_t i0 = min(int64_t(s), in - 1), i1 = min(i0 + 1, in - 1);
  return {i0, i1, __dsub_rn(s, double(i0))};
}

__device__ inline double weight(const Lerp& l, int side) { return side ? l.w1 : __dsub_rn(1.0, l.w1); }
__device__ inline int64_t source(const Lerp& l, int side) { return side ? l.i1 : l.i0; }

template <class T, class Idx>
__global__ void upsample_kernel(int64_t n, const T* __restrict__ x, T* __restrict__ y, UpGeom g) {
  const int64_t I = g.in[0] * g.in[1] * g.in[2];
  KILN_GRID_LOOP(i, n) {
    int64_t o[3];
    const int64_t pl = split<Idx>(i, g.out, o);
    const Lerp l[3] = {lerp(g, 0, o[0]), lerp(g, 1, o[1]), lerp(g, 2, o[2])};
    const T* plane = x + pl * I;
    double acc = 0;
    for (int a = 0; a < 2; ++a) {
      const double wa = weight(l[0], a);
      if (wa == 0) continue;
      for (int b = 0; b < 2; ++b) {
        const double wb = weight(l[1], b);
        if (wb == 0) continue;
        for (int e = 0; e < 2; ++e) {
          const double we = weight(l[2], e);
          if (we == 0) continue;
          const double v = double(plane[(source(l[0], a) * g.in[1] + source(l[1], b)) * g.in[2] + source(l[2], e)]);
          acc = __dadd_rn(acc, __dmul_rn(__dmul_rn(__dmul_rn(wa, wb), we), v));
        }
      }
    }
    y[i] = T(acc);
  }
}

// Per dim and input index x: the outputs [lo, hi) whose two sources may include x. Sources never
// decrease with the output index and i0 <= i1 <= i0 + 1, so they are those with i1 >= x and i0 <= x:
// two binary searches.
__global__ void upsample_ranges_kernel(UpGeom g, int64_t* ranges) {
  const int64_t n = g.in[0] + g.in[1] + g.in[2];
  KILN_GRID_LOOP(t, n) {
    int d = 0;
    int64_t x = t;
    while (x >= g.in[d]) x -= g.in[d++];
    int64_t lo = 0, hi = g.out[d];  // first o with i1(o) >= x
    while (lo < hi) {
      const int64_t m = (lo + hi) / 2;
      if (lerp(g, d, m).i1 >= x)
        hi = m;
      else
        lo = m + 1;
    }
    ranges[2 * t] = lo;
    hi = g.out[d];  // first o with i0(o) > x
    while (lo < hi) {
      const int64_t m = (lo + hi) / 2;
      if (lerp(g, d, m).i0 > x)
        hi = m;
      else
        lo = m + 1;
    }
    ranges[2 * t + 1] = lo;
  }
}

// dx at one input position: the CPU's scatter turned around, each term in the same order (output,
// then the sides a, b, e) and rounding (product in double, cast, added in T).
template <class T, class Idx>
__global__ void upsample_grad_kernel(int64_t n, const T* __restrict__ gy, T* __restrict__ dx,
                                     const int64_t* __restrict__ ranges, UpGeom g) {
  const int64_t P = g.out[0] * g.out[1] * g.out[2];
  KILN_GRID_LOOP(i, n) {
    int64_t x[3];
    const int64_t pl = split<Idx>(i, g.in, x);
    const int64_t* r0 = ranges + 2 * x[0];
    const int64_t* r1 = ranges + 2 * (g.in[0] + x[1]);
    const int64_t* r2 = ranges + 2 * (g.in[0] + g.in[1] + x[2]);
    const T* gp = gy + pl * P;
    T acc = T(0);
    for (int64_t od = r0[0]; od < r0[1]; ++od) {
      const Lerp ld = lerp(g, 0, od);
      for (int64_t oh = r1[0]; oh < r1[1]; ++oh) {
        const Lerp lh = lerp(g, 1, oh);
        for (int64_t ow = r2[0]; ow < r2[1]; ++ow) {
          const Lerp lw = lerp(g, 2, ow);
          const double gv = double(gp[(od * g.out[1] + oh) * g.out[2] + ow]);
          for (int a = 0; a < 2; ++a) {
            const double wa = weight(ld, a);
            if (wa == 0 || source(ld, a) != x[0]) continue;
            for (int b = 0; b < 2; ++b) {
              const double wb = weight(lh, b);
              if (wb == 0 || source(lh, b) != x[1]) continue;
              for (int e = 0; e < 2; ++e) {
                const double we = weight(lw, e);
                if (we == 0 || source(lw, e) != x[2]) continue;
                acc += T(__dmul_rn(__dmul_rn(__dmul_rn(gv, wa), wb), we));
              }
            }
          }
        }
      }
    }
    dx[i] = acc;
  }
}

// big: the upsampled side's shape, small: the other's.
UpGeom make_up(const Shape& small, const Shape& big, const Attrs& a) {
  UpGeom g;
  const int sp = small.rank() - 2;
  if (sp < 1 || sp > 3 || big.rank() != small.rank())
    throw Error("upsample: expects (N, C, ...) tensors with 1-3 spatial dims, got " + small.str() + " and " +
                big.str());
  g.nearest = a.s("mode") == "nearest";
  g.align = a.i("align_corners", 0) != 0;
  for (int i = 0; i < sp; ++i) {
    const int d = 3 - sp + i;
    g.in[d] = small[2 + i];
    g.out[d] = big[2 + i];
    const double scale = a.f("scale" + std::to_string(i), 0.0);
    g.step[d] = scale > 0 ? 1.0 / scale : static_cast<double>(g.in[d]) / g.out[d];
    g.ratio[d] = g.out[d] > 1 ? static_cast<double>(g.in[d] - 1) / (g.out[d] - 1) : 0.0;
  }
  return g;
}

void upsample(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const int64_t n = y.numel();
  if (n == 0) return;
  const UpGeom g = make_up(x.shape(), y.shape(), c.attrs);
  KILN_DISPATCH_FLOAT(x.dtype(), "upsample", with_index_type(n, [&](auto tag) {
                        upsample_kernel<scalar_t, decltype(tag)>
                            <<<blocks_for(n), kThreads, 0, stream()>>>(n, x.data<scalar_t>(), y.data<scalar_t>(), g);
                      }));
  check_launch("upsample");
}

void upsample_grad(const KernelContext& c) {
  const Tensor& gy = c.input(0);
  Tensor& dx = c.output(0);
  const int64_t n = dx.numel();
  if (n == 0) return;
  const UpGeom g = make_up(dx.shape(), gy.shape(), c.attrs);
  if (gy.numel() == 0) {
    check(cudaMemsetAsync(dx.raw(), 0, dx.nbytes(), stream()), "upsample_grad");
    return;
  }
  const int64_t lines = g.in[0] + g.in[1] + g.in[2];
  Scratch ranges(static_cast<size_t>(2 * lines) * sizeof(int64_t));
  upsample_ranges_kernel<<<blocks_for(lines), kThreads, 0, stream()>>>(g, ranges.as<int64_t>());
  check_launch("upsample_grad");
  KILN_DISPATCH_FLOAT(gy.dtype(), "upsample_grad", with_index_type(n, [&](auto tag) {
                        upsample_grad_kernel<scalar_t, decltype(tag)><<<blocks_for(n), kThreads, 0, stream()>>>(
                            n, gy.data<scalar_t>(), dx.data<scalar_t>(), ranges.as<int64_t>(), g);
                      }));
  check_launch("upsample_grad");
}

}  // namespace

void register_pool_kernels(OpRegistry& r) {
  r.set_cuda_kernel("max_pool", max_pool);
  r.set_cuda_kernel("avg_pool", avg_pool);
  r.set_cuda_kernel("adaptive_max_pool", adaptive_max_pool);
  r.set_cuda_kernel("adaptive_avg_pool", adaptive_avg_pool);
  r.set_cuda_kernel("max_pool_grad", max_pool_grad);
  r.set_cuda_kernel("avg_pool_grad", avg_pool_grad<false>);
  r.set_cuda_kernel("adaptive_avg_pool_grad", avg_pool_grad<true>);
  r.set_cuda_kernel("upsample", upsample);
  r.set_cuda_kernel("upsample_grad", upsample_grad);
}

}  // namespace kiln::cuda
