#pragma once
// Internal: the device layer the core calls for GPU memory. cuda/memory.cu implements it when the
// CUDA backend is built; runtime/cuda_stubs.cpp answers with errors where it is not. Nothing
// here includes a CUDA header, so the core compiles without the toolkit.
#include <cstddef>

#include "kiln/tensor.h"

namespace kiln {
class OpRegistry;
}

namespace kiln::device {

void* alloc(size_t bytes);  // device memory from kiln's stream-ordered pool (CUDA device 0)
void free(void* p);
// Copies between any two devices. A copy to the host returns when the data is there; copies to
// the device are ordered on kiln's stream.
void copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void zero(void* p, size_t bytes);  // device memory
void synchronize();                // waits for the work queued on kiln's stream

// Adds each op's CUDA kernel to its registry entry (cuda/*.cu); nothing without the backend.
void register_cuda_kernels(OpRegistry& registry);

}  // namespace kiln::device
