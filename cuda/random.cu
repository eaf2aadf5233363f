// CUDA kernels of the random ops: uniform and normal (cpp/src/ops/random.cpp) and dropout with its gradient
// (cpp/src/ops/nn.cpp). Element i of a draw is a hash of (seed, call, i), as on the CPU, so both backends draw the
// same numbers whatever the launch shape, and dropout's backward regenerates its forward mask.
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "cpu/random.h"  // the generator, shared with the CPU kernels

namespace kiln::cuda {
namespace {

using cpu::random_bits;
using cpu::splitmix64;
using cpu::unit_double;
using cpu::unit_float;

// The CPU's `a + (b - a) * u` and `a + b * r * c` are contracted to one fused multiply-add by its -march=native build
// (GCC's -ffp-contract=fast on FMA hardware): fma here rounds the same way.
template <class T>
__global__ void uniform_kernel(int64_t n, uint64_t key, double lo, double hi, T* out) {
  KILN_GRID_LOOP(i, n) {
    const uint64_t h = random_bits(key, i);
    double u;
    if constexpr (std::is_same_v<T, float>)
      u = unit_float(h);
    else
      u = unit_double(h);
    out[i] = static_cast<T>(fma(hi - lo, u, lo));
  }
}

// Box-Muller on two independent uniforms. log and cos are CUDA's, within an ulp or two of glibc's.
template <class T>
__global__ void normal_kernel(int64_t n, uint64_t key, double mean, double sd, T* out) {
  constexpr double two_pi = 2.0 * 3.14159265358979323846;
  KILN_GRID_LOOP(i, n) {
    const uint64_t h = random_bits(key, i);
    const double u1 = (static_cast<double>(h >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    const double u2 = unit_double(splitmix64(h));
    out[i] = static_cast<T>(fma(sd * sqrt(-2.0 * log(u1)), cos(two_pi * u2), mean));
  }
}

template <bool gaussian>
void random_kernel(const KernelContext& c) {
  Tensor& out = c.output(0);
  const int64_t n = out.numel();
  if (n == 0) return;
  const uint64_t key = cpu::stream_key(c.attrs.i("seed"), c.call_counter);
  const double a = c.attrs.f(gaussian ? "mean" : "low"), b = c.attrs.f(gaussian ? "std" : "high");
  KILN_DISPATCH_FLOAT(out.dtype(), gaussian ? "normal" : "uniform", {
    if constexpr (gaussian)
      normal_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(n, key, a, b, out.data<scalar_t>());
    else
      uniform_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(n, key, a, b, out.data<scalar_t>());
  });
  check_launch(gaussian ? "normal" : "uniform");
}

// Inverted dropout: element i is dropped when its uniform double is below p, as on the CPU, so the masks agree.
template <class T>
__global__ void dropout_apply(int64_t n, uint64_t key, double p, T scale, const T* in, T* out) {
  KILN_GRID_LOOP(i, n) out[i] = unit_double(random_bits(key, i)) < p ? T(0) : in[i] * scale;
}

void dropout_kernel(const KernelContext& c) {  // also the gradient: the same mask, regenerated
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const double p = c.attrs.f("p");
  if (!c.training || p == 0.0) {
    if (y.raw() != x.raw()) y.copy_from(x);  // a device-to-device copy on kiln's stream
    return;
  }
  const int64_t n = x.numel();
  if (n == 0) return;
  const uint64_t key = cpu::stream_key(c.attrs.i("seed"), c.call_counter);
  KILN_DISPATCH_FLOAT(x.dtype(), "dropout", {
    const scalar_t scale = p >= 1.0 ? scalar_t(0) : scalar_t(1.0 / (1.0 - p));
    dropout_apply<<<blocks_for(n), kThreads, 0, stream()>>>(n, key, p, scale, x.data<scalar_t>(), y.data<scalar_t>());
  });
  check_launch("dropout");
}

}  // namespace

void register_random_kernels(OpRegistry& r) {
  r.set_cuda_kernel("uniform", random_kernel<false>);
  r.set_cuda_kernel("normal", random_kernel<true>);
  r.set_cuda_kernel("dropout", dropout_kernel);
  r.set_cuda_kernel("dropout_grad", dropout_kernel);
}

}  // namespace kiln::cuda
