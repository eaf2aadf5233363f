// CUDA kernels of the index ops (cpp/src/ops/index.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_index_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
