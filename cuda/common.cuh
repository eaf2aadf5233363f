#pragma once
// What every CUDA kernel file shares: error checks, kiln's stream and library handles, launch
// shapes, scratch memory from the pool, and broadcast indexing. Device 0 only.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "cpu/broadcast.h"
#include "kiln/error.h"
#include "kiln/op.h"

namespace kiln::cuda {

void check(cudaError_t e, const char* what);
void check_blas(cublasStatus_t s, const char* what);
// After a launch: turns a bad configuration into kiln::Error naming the op.
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

cudaStream_t stream();  // kiln's one stream: every kernel, copy and library call is ordered on it
cublasHandle_t blas();  // bound to stream()

// Scratch device memory for the length of one kernel call, from the stream-ordered pool (no
// cudaMalloc once the pool has grown to the program's needs).
class Scratch {
 public:
  explicit Scratch(size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
};

inline void device_zero(Tensor& t) { check(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()), "zeroing"); }

constexpr int kThreads = 256;
// Blocks for a grid-stride loop over n elements: enough to fill the GPU, no more.
inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

#define KILN_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// Offset of output element i in operand k of a broadcast (cpu::Broadcast computes the merged
// shape and strides on the host; the struct travels to the kernel by value).
template <int N>
__device__ inline int64_t bcast_offset(const cpu::Broadcast<N>& b, int64_t i, int k) {
  int64_t off = 0;
  for (int d = b.rank - 1; d >= 0; --d) {
    const int64_t idx = i % b.shape[d];
    i /= b.shape[d];
    off += idx * b.strides[k][d];
  }
  return off;
}

// Row-major strides of a shape, for kernels that walk an n-d index (permute, pad, slice).
struct Dims {
  int rank = 0;
  int64_t size[kMaxRank] = {};
  int64_t stride[kMaxRank] = {};
};
inline Dims dims_of(const Shape& s) {
  Dims d;
  d.rank = s.rank();
  Shape st = contiguous_strides(s);
  for (int i = 0; i < d.rank; ++i) d.size[i] = s[i], d.stride[i] = st[i];
  return d;
}

}  // namespace kiln::cuda
