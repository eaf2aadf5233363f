// CUDA kernels of the optim ops (cpp/src/ops/optim.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_optim_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
