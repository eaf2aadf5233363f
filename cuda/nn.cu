// CUDA kernels of the nn ops (cpp/src/ops/nn.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_nn_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
