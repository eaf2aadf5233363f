// CUDA kernels of the pool ops (cpp/src/ops/pool.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_pool_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
