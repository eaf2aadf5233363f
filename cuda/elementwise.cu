// CUDA kernels of the elementwise ops: the functors of ops/math.h (the same formulas as the CPU)
// mapped over contiguous tensors, with numpy broadcasting for the binary ops and where.
#include <cmath>
#include <limits>

#include "common.cuh"
#include "ops/half.h"
#include "ops/math.h"

namespace kiln::cuda {
namespace {
using namespace math;

template <class TI, class TO, class F>
__global__ void unary_map(int64_t n, const TI* x, TO* y, F f) {
  KILN_GRID_LOOP(i, n) y[i] = f(x[i]);
}

template <class TI, class TO, class F>
__global__ void binary_same(int64_t n, const TI* a, const TI* b, TO* z, F f) {
  KILN_GRID_LOOP(i, n) z[i] = f(a[i], b[i]);
}

template <class TI, class TO, class F>
__global__ void binary_bcast(int64_t n, const TI* a, const TI* b, TO* z, cpu::Broadcast<2> bc, F f) {
  KILN_GRID_LOOP(i, n) z[i] = f(a[bcast_offset(bc, i, 0)], b[bcast_offset(bc, i, 1)]);
}

template <class TI, class TO, class F>
void map_unary(const Tensor& x, Tensor& y, F f) {
  const int64_t n = y.numel();
  if (n == 0) return;
  unary_map<<<blocks_for(n), kThreads, 0, stream()>>>(n, x.data<TI>(), y.data<TO>(), f);
  check_launch("an elementwise kernel");
}

template <class TI, class TO, class F>
void map_binary(const Tensor& a, const Tensor& b, Tensor& z, F f) {
  const int64_t n = z.numel();
  if (n == 0) return;
  if (a.numel() == n && b.numel() == n) {
    binary_same<<<blocks_for(n), kThreads, 0, stream()>>>(n, a.data<TI>(), b.data<TI>(), z.data<TO>(), f);
  } else {
    const Shape* shapes[2] = {&a.shape(), &b.shape()};
    binary_bcast<<<blocks_for(n), kThreads, 0, stream()>>>(n, a.data<TI>(), b.data<TI>(), z.data<TO>(),
                                                           cpu::Broadcast<2>(z.shape(), shapes), f);
  }
  check_launch("an elementwise kernel");
}

struct CudaMap {
  template <class TI, class TO, class F>
  static void unary(const Tensor& x, Tensor& y, F f) {
    map_unary<TI, TO>(x, y, f);
  }
  template <class TI, class TO, class F>
  static void binary(const Tensor& a, const Tensor& b, Tensor& z, F f) {
    map_binary<TI, TO>(a, b, z, f);
  }
};
template <class F, Types types>
constexpr KernelFn unary_kernel = unary_dispatch<CudaMap, F, types>;
template <class F, Types types, bool to_bool>
constexpr KernelFn binary_kernel = binary_dispatch<CudaMap, F, types, to_bool>;

// Activations carry attributes: the functor is built on the host and travels by value.
template <class F>
void act_kernel(const KernelContext& c) {
  const F f(c.attrs);
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "activation", map_unary<scalar_t, scalar_t>(c.input(0), c.output(0), f));
}

struct GeluGrad {
  Gelu gelu;
  template <class T>
  __device__ T operator()(T g, T x) const {
    return g * gelu.grad(x);
  }
};

void gelu_grad_kernel(const KernelContext& c) {
  const GeluGrad f{Gelu(c.attrs)};
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "gelu_grad",
                      map_binary<scalar_t, scalar_t>(c.input(0), c.input(1), c.output(0), f));
}

template <class T>
__global__ void where_bcast(int64_t n, const bool* cond, const T* a, const T* b, T* out, cpu::Broadcast<3> bc) {
  KILN_GRID_LOOP(i, n) out[i] = cond[bcast_offset(bc, i, 0)] ? a[bcast_offset(bc, i, 1)] : b[bcast_offset(bc, i, 2)];
}

void where_kernel(const KernelContext& c) {
  const Tensor &cond = c.input(0), &a = c.input(1), &b = c.input(2);
  Tensor& out = c.output(0);
  const int64_t n = out.numel();
  if (n == 0) return;
  const Shape* shapes[3] = {&cond.shape(), &a.shape(), &b.shape()};
  const cpu::Broadcast<3> bc(out.shape(), shapes);
  KILN_DISPATCH_ALL(out.dtype(), "where", {
    where_bcast<<<blocks_for(n), kThreads, 0, stream()>>>(n, cond.data<bool>(), a.data<scalar_t>(), b.data<scalar_t>(),
                                                          out.data<scalar_t>(), bc);
  });
  check_launch("where");
}

template <class T>
struct Clip {
  T lo, hi;
  __device__ T operator()(T v) const { return v < lo ? lo : (v > hi ? hi : v); }
};

void clip_kernel(const KernelContext& c) {
  const double lo = c.attrs.f("min", -INFINITY), hi = c.attrs.f("max", INFINITY);
  KILN_DISPATCH_NUMERIC(c.input(0).dtype(), "clip", {
    const scalar_t l = std::isinf(lo) ? std::numeric_limits<scalar_t>::lowest() : scalar_t(lo);
    const scalar_t h = std::isinf(hi) ? std::numeric_limits<scalar_t>::max() : scalar_t(hi);
    map_unary<scalar_t, scalar_t>(c.input(0), c.output(0), Clip<scalar_t>{l, h});
  });
}

template <class TI, class TO>
struct Cast {
  __device__ TO operator()(TI v) const {
    if constexpr (std::is_same_v<TO, bool>)
      return v != TI(0);
    else
      return static_cast<TO>(v);
  }
};

void cast_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  KILN_DISPATCH_ALL_AND_HALF(x.dtype(), "cast", {
    using in_t = scalar_t;
    KILN_DISPATCH_ALL_AND_HALF(y.dtype(), "cast", (map_unary<in_t, scalar_t>(x, y, Cast<in_t, scalar_t>{})));
  });
}

}  // namespace

void register_elementwise_kernels(OpRegistry& r) {
  r.set_cuda_kernel("neg", unary_kernel<Neg, Types::numeric>);
  r.set_cuda_kernel("abs", unary_kernel<Abs, Types::numeric>);
  r.set_cuda_kernel("sign", unary_kernel<Sign, Types::numeric>);
  r.set_cuda_kernel("square", unary_kernel<Square, Types::numeric>);
  r.set_cuda_kernel("exp", unary_kernel<Exp, Types::floats>);
  r.set_cuda_kernel("log", unary_kernel<Log, Types::floats>);
  r.set_cuda_kernel("sqrt", unary_kernel<Sqrt, Types::floats>);
  r.set_cuda_kernel("rsqrt", unary_kernel<Rsqrt, Types::floats>);
  r.set_cuda_kernel("sigmoid", unary_kernel<Sigmoid, Types::floats>);
  r.set_cuda_kernel("tanh", unary_kernel<Tanh, Types::floats>);
  r.set_cuda_kernel("relu", unary_kernel<Relu, Types::numeric>);
  r.set_cuda_kernel("floor", unary_kernel<Floor, Types::floats>);
  r.set_cuda_kernel("cos", unary_kernel<Cos, Types::floats>);
  r.set_cuda_kernel("sin", unary_kernel<Sin, Types::floats>);
  r.set_cuda_kernel("erf", unary_kernel<Erf, Types::floats>);
  r.set_cuda_kernel("logical_not", unary_kernel<LogicalNot, Types::boolean>);
  r.set_cuda_kernel("add", binary_kernel<Add, Types::numeric, false>);
  r.set_cuda_kernel("sub", binary_kernel<Sub, Types::numeric, false>);
  r.set_cuda_kernel("mul", binary_kernel<Mul, Types::numeric, false>);
  r.set_cuda_kernel("div", binary_kernel<Div, Types::numeric, false>);
  r.set_cuda_kernel("pow", binary_kernel<Pow, Types::numeric, false>);
  r.set_cuda_kernel("maximum", binary_kernel<Maximum, Types::numeric, false>);
  r.set_cuda_kernel("minimum", binary_kernel<Minimum, Types::numeric, false>);
  r.set_cuda_kernel("relu_grad", binary_kernel<ReluGrad, Types::numeric, false>);
  r.set_cuda_kernel("eq", binary_kernel<Eq, Types::numeric, true>);
  r.set_cuda_kernel("ne", binary_kernel<Ne, Types::numeric, true>);
  r.set_cuda_kernel("lt", binary_kernel<Lt, Types::numeric, true>);
  r.set_cuda_kernel("le", binary_kernel<Le, Types::numeric, true>);
  r.set_cuda_kernel("gt", binary_kernel<Gt, Types::numeric, true>);
  r.set_cuda_kernel("ge", binary_kernel<Ge, Types::numeric, true>);
  r.set_cuda_kernel("logical_and", binary_kernel<And, Types::boolean, false>);
  r.set_cuda_kernel("logical_or", binary_kernel<Or, Types::boolean, false>);
  r.set_cuda_kernel("logical_xor", binary_kernel<Xor, Types::boolean, false>);
  r.set_cuda_kernel("where", where_kernel);
  r.set_cuda_kernel("clip", clip_kernel);
  r.set_cuda_kernel("cast", cast_kernel);
  r.set_cuda_kernel("leaky_relu", act_kernel<LeakyRelu>);
  r.set_cuda_kernel("elu", act_kernel<Elu>);
  r.set_cuda_kernel("selu", act_kernel<Selu>);
  r.set_cuda_kernel("softplus", act_kernel<Softplus>);
  r.set_cuda_kernel("gelu", act_kernel<Gelu>);
  r.set_cuda_kernel("gelu_grad", gelu_grad_kernel);
}

}  // namespace kiln::cuda
