// CUDA kernels of the random ops: uniform and normal (cpp/src/ops/random.cpp) and dropout with its gradient
// (cpp/src/ops/nn.cpp). Element i of a draw is a hash of (seed, call, i), as on the CPU, so both backends draw the
// same numbers whatever the launch shape, and dropout's backward regenerates its forward mask.
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "cpu/random.h"  // the host half: cpu::stream_key

namespace kiln::cuda {
namespace {

// Device copies of cpu/random.h's element-wise functions, which are host-only: keep the two in step.
namespace rng {
__device__ inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ inline uint64_t random_bits(uint64_t key, int64_t i) {
  return splitmix64(key + static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull);
}
__device__ inline double unit_double(uint64_t bits) {
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}
__device__ inline float unit_float(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }
}  // namespace rng

// The CPU's `a + (b - a) * u` and `a + b * r * c` are contracted to one fused multiply-add by its -march=native build
// (GCC's -ffp-contract=fast on FMA hardware): fma here rounds the same way.
template <class T>
__global__ void uniform_kernel(int64_t n, uint64_t key, double lo, double hi, T* out) {
  KILN_GRID_LOOP(i, n) {
    const uint64_t h = rng::random_bits(key, i);
    double u;
    if constexpr (std::is_same_v<T, float>)
      u = rng::unit_float(h);
    else
      u = rng::unit_double(h);
    out[i] = static_cast<T>(fma(hi - lo, u, lo));
  }
}

// Box-Muller on two independent uniforms. log and cos are CUDA's, within an ulp or two of glibc's.
template <class T>
__global__ void normal_kernel(int64_t n, uint64_t key, double mean, double sd, T* out) {
  constexpr double two_pi = 2.0 * 3.14159265358979323846;
  KILN_GRID_LOOP(i, n) {
    const uint64_t h = rng::random_bits(key, i);
    const double u1 = (static_cast<double>(h >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    const double u2 = rng::unit_double(rng::splitmix64(h));
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
  KILN_GRID_LOOP(i, n) out[i] = rng::unit_double(rng::random_bits(key, i)) < p ? T(0) : in[i] * scale;
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
