// CUDA kernels of the linalg ops (cpp/src/ops/linalg.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_linalg_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
