// kiln::cuda and the device layer for builds without the CUDA backend (cuda/*.cu replace these
// answers when CMake finds the toolkit).
#ifndef KILN_WITH_CUDA
#include "kiln/cuda.h"
#include "kiln/error.h"
#include "runtime/device.h"

namespace kiln::cuda {

bool is_built() { return false; }
int device_count() { return 0; }
bool is_available() { return false; }
std::string status() { return "kiln was built without its CUDA backend (no CUDA toolkit, or KILN_CUDA=OFF)"; }
void self_test() { throw Error("cuda: " + status()); }
Transfers transfers() { return {}; }
void allow_tf32(bool) {}
bool tf32_allowed() { return false; }

}  // namespace kiln::cuda

namespace kiln::device {

static Error unavailable() { return Error("cuda: " + cuda::status()); }
void* alloc(size_t) { throw unavailable(); }
void free(void*) {}
void copy(void*, Device, const void*, Device, size_t) { throw unavailable(); }
void zero(void*, size_t) { throw unavailable(); }
void synchronize() {}
void register_cuda_kernels(OpRegistry&) {}

}  // namespace kiln::device
#endif
