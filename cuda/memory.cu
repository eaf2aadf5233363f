// The device layer: memory from a stream-ordered caching pool (CUDA's own: cudaMallocAsync with
// the pool told to keep what it has), copies, kiln's stream and the cuBLAS handle.
#include <atomic>
#include <cstdint>

#include "common.cuh"
#include "kiln/cuda.h"
#include "runtime/device.h"

namespace kiln::cuda {
namespace {

std::atomic<uint64_t> g_to_device_bytes{0}, g_to_host_bytes{0}, g_to_device_copies{0}, g_to_host_copies{0};
std::atomic<bool> g_tf32{false};

struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  Context() {
    if (!is_available()) throw Error("cuda: " + status());
    check(cudaSetDevice(0), "selecting device 0");
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "creating a stream");
    // Keep freed memory in the pool: after a function's first call, its calls allocate nothing.
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, 0), "getting the memory pool");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "configuring the memory pool");
    check_blas(cublasCreate(&blas), "cublasCreate");
    check_blas(cublasSetStream(blas, stream), "cublasSetStream");
  }
  // Never destroyed: device storages may be freed during static destruction.
  static Context& get() {
    static Context* c = new Context();
    return *c;
  }
};

}  // namespace

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(std::string("cuda: ") + what + " failed (" + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + ")");
}

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuda: ") + what + " failed (" + cublasGetStatusName(s) + ": " + cublasGetStatusString(s) +
                ")");
}

cudaStream_t stream() { return Context::get().stream; }
cublasHandle_t blas() { return Context::get().blas; }

Scratch::Scratch(size_t bytes) : data_(bytes ? device::alloc(bytes) : nullptr) {}
Scratch::~Scratch() {
  if (data_) device::free(data_);
}

Transfers transfers() {
  return {g_to_device_bytes.load(), g_to_host_bytes.load(), g_to_device_copies.load(), g_to_host_copies.load()};
}
void allow_tf32(bool on) { g_tf32 = on; }
bool tf32_allowed() { return g_tf32; }

}  // namespace kiln::cuda

namespace kiln::device {
using cuda::check;

void* alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMallocAsync(&p, bytes ? bytes : 1, cuda::stream());
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    throw Error("cuda: out of device memory allocating " + std::to_string(bytes) + " bytes (" +
                std::to_string(free_bytes >> 20) + " MiB free of " + std::to_string(total >> 20) + " MiB)");
  }
  return p;
}

void free(void* p) {
  if (cudaFreeAsync(p, cuda::stream()) != cudaSuccess) cudaGetLastError();  // at exit the driver may be gone
}

void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = cuda::stream();
  if (dst_device == Device::cuda && src_device == Device::cuda) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "a device-to-device copy");
  } else if (dst_device == Device::cuda) {
    cuda::g_to_device_bytes += bytes;
    ++cuda::g_to_device_copies;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "a copy to the device");
  } else {
    cuda::g_to_host_bytes += bytes;
    ++cuda::g_to_host_copies;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "a copy to the host");
    check(cudaStreamSynchronize(s), "waiting for a copy to the host");
  }
}

void zero(void* p, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(p, 0, bytes, cuda::stream()), "cudaMemsetAsync");
}

void synchronize() { check(cudaStreamSynchronize(cuda::stream()), "running the function's kernels"); }

}  // namespace kiln::device
