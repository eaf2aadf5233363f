#pragma once
// What the cuDNN users (conv.cu, nn.cu's batch norm) share: the handle on kiln's stream, status
// checks, and NCHW tensor descriptors.
#include <cudnn.h>

#include <climits>
#include <string>

#include "common.cuh"

namespace kiln::cuda {

inline void check_dnn(cudnnStatus_t s, const char* op, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS)
    throw Error(std::string(op) + ": cuDNN " + what + " failed (" + cudnnGetErrorString(s) + ")");
}

// Made on first use and never destroyed, as memory.cu's stream and cuBLAS handle.
inline cudnnHandle_t handle(const char* op) {
  static const cudnnHandle_t h = [op] {
    cudnnHandle_t made = nullptr;
    check_dnn(cudnnCreate(&made), op, "cudnnCreate");
    check_dnn(cudnnSetStream(made, stream()), op, "cudnnSetStream");
    return made;
  }();
  return h;
}

inline int to_int(int64_t v, const char* op) {
  if (v < 0 || v > INT_MAX) throw Error(std::string(op) + ": a size past cuDNN's 32-bit limit: " + std::to_string(v));
  return static_cast<int>(v);
}

inline cudnnDataType_t dnn_type(DType t, const char* op) {
  if (t == DType::float32) return CUDNN_DATA_FLOAT;
  if (t == DType::float64) return CUDNN_DATA_DOUBLE;
  throw Error(std::string(op) + ": dtype " + dtype_name(t) + " is not supported");
}

// (N, channels, spatial...) contiguous.
inline void set_tensor(cudnnTensorDescriptor_t d, cudnnDataType_t t, int64_t n, int64_t channels,
                       const int64_t* spatial, int nd, const char* op) {
  int dims[5], strides[5];
  dims[0] = to_int(n, op), dims[1] = to_int(channels, op);
  for (int j = 0; j < nd; ++j) dims[2 + j] = to_int(spatial[j], op);
  int64_t s = 1;
  for (int j = nd + 1; j >= 0; --j) strides[j] = to_int(s, op), s *= dims[j];
  check_dnn(cudnnSetTensorNdDescriptor(d, t, nd + 2, dims, strides), op, "cudnnSetTensorNdDescriptor");
}

// An owned tensor descriptor.
struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  explicit TensorDesc(const char* op) { check_dnn(cudnnCreateTensorDescriptor(&d), op, "cudnnCreateTensorDescriptor"); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
};

}  // namespace kiln::cuda
