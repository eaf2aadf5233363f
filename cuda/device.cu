// The CUDA backend's device layer: device discovery and a smoke-test kernel. Compiled only when
// CMake finds the CUDA toolkit (KILN_CUDA=AUTO or ON); cpp/src/runtime/cuda_query.cpp answers for
// builds without it.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kiln/cuda.h"
#include "kiln/error.h"

namespace kiln::cuda {
namespace {

std::string error_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("cuda: ") + what + " failed (" + error_text(e) + ")");
}

__global__ void axpy_kernel(int n, float a, const float* x, float* y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}

}  // namespace

bool is_built() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" / "no device" error
    return 0;
  }
  return n;
}

bool is_available() { return device_count() > 0; }

std::string status() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return "no CUDA device (" + error_text(e) + ")";
  }
  if (n == 0) return "no CUDA device";
  std::string out = std::to_string(n) + " CUDA device" + (n > 1 ? "s" : "") + ":";
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess)
      out += " [" + std::to_string(i) + "] " + p.name + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) +
             ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
  }
  return out;
}

void self_test() {
  if (!is_available()) throw Error("cuda: " + status());
  constexpr int n = 1000;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i), y[i] = 1.0f;
  float *dx = nullptr, *dy = nullptr;
  check(cudaMalloc(&dx, n * sizeof(float)), "cudaMalloc");
  struct Free {
    float* p;
    ~Free() { cudaFree(p); }
  } free_x{dx};
  check(cudaMalloc(&dy, n * sizeof(float)), "cudaMalloc");
  Free free_y{dy};
  check(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy to the device");
  check(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice), "copy to the device");
  axpy_kernel<<<(n + 255) / 256, 256>>>(n, 2.0f, dx, dy);
  check(cudaGetLastError(), "launching a kernel");
  check(cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost), "copy to the host");
  for (int i = 0; i < n; ++i)
    if (y[i] != 1.0f + 2.0f * i)
      throw Error("cuda: the smoke-test kernel computed " + std::to_string(y[i]) + " at " + std::to_string(i) +
                  ", expected " + std::to_string(1.0f + 2.0f * i));
}

}  // namespace kiln::cuda
