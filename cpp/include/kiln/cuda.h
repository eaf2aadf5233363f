#pragma once
// Whether this kiln has its CUDA backend and whether a GPU is there to run it. Safe to call on any
// machine: without a driver or a device the answers are false and 0, never an error.
#include <string>

namespace kiln::cuda {

bool is_built();       // compiled with the CUDA backend (KILN_CUDA=AUTO found the toolkit, or ON)
int device_count();    // usable CUDA devices: 0 without a driver or a GPU
bool is_available();   // is_built() and a device is present
std::string status();  // one line: the devices, or why there are none ("no CUDA device", ...)

// Runs a small kernel on device 0 and checks its result on the host (a GPU smoke test); throws
// kiln::Error naming what failed, or when no device is available.
void self_test();

}  // namespace kiln::cuda
