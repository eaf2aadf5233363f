// The CUDA kernels' entry into the op registry: one registration function per kernel file.
#include "kiln/op.h"
#include "runtime/device.h"

namespace kiln::cuda {
void register_elementwise_kernels(OpRegistry&);
void register_reduce_kernels(OpRegistry&);
void register_linalg_kernels(OpRegistry&);
void register_shape_kernels(OpRegistry&);
void register_index_kernels(OpRegistry&);
void register_random_kernels(OpRegistry&);
void register_nn_kernels(OpRegistry&);
void register_optim_kernels(OpRegistry&);
void register_conv_kernels(OpRegistry&);
void register_pool_kernels(OpRegistry&);
}  // namespace kiln::cuda

namespace kiln::device {

void register_cuda_kernels(OpRegistry& r) {
  cuda::register_elementwise_kernels(r);
  cuda::register_reduce_kernels(r);
  cuda::register_linalg_kernels(r);
  cuda::register_shape_kernels(r);
  cuda::register_index_kernels(r);
  cuda::register_random_kernels(r);
  cuda::register_nn_kernels(r);
  cuda::register_optim_kernels(r);
  cuda::register_conv_kernels(r);
  cuda::register_pool_kernels(r);
}

}  // namespace kiln::device
