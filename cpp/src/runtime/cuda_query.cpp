// kiln::cuda for builds without the CUDA backend (cuda/device.cu replaces this file's answers
// when CMake finds the toolkit).
#ifndef KILN_WITH_CUDA
#include "kiln/cuda.h"
#include "kiln/error.h"

namespace kiln::cuda {

bool is_built() { return false; }
int device_count() { return 0; }
bool is_available() { return false; }
std::string status() { return "kiln was built without its CUDA backend (no CUDA toolkit, or KILN_CUDA=OFF)"; }
void self_test() { throw Error("cuda: " + status()); }

}  // namespace kiln::cuda
#endif
