// CUDA kernels of the random ops (cpp/src/ops/random.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_random_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
