// CUDA kernels of the reduce ops (cpp/src/ops/reduce.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_reduce_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
