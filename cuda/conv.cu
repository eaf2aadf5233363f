// CUDA kernels of the conv ops (cpp/src/ops/conv.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_conv_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
