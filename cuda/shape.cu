// CUDA kernels of the shape ops (cpp/src/ops/shape.cpp defines the ops and their CPU kernels).
#include "common.cuh"

namespace kiln::cuda {

void register_shape_kernels(OpRegistry& r) {}

}  // namespace kiln::cuda
