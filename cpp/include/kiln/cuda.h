#pragma once
// Whether this kiln has its CUDA backend and whether a GPU is there to run it. Safe to call on any
// machine: without a driver or a device the answers are false and 0, never an error.
#include <cstdint>
#include <string>

namespace kiln::cuda {

bool is_built();       // compiled with the CUDA backend (KILN_CUDA=AUTO found the toolkit, or ON)
int device_count();    // usable CUDA devices: 0 without a driver or a GPU
bool is_available();   // is_built() and a device is present
std::string status();  // one line: the devices, or why there are none ("no CUDA device", ...)

// Runs a small kernel on device 0 and checks its result on the host (a GPU smoke test); throws
// kiln::Error naming what failed, or when no device is available.
void self_test();

// Bytes and copies between host and device since the process started: a training step should
// move only its batch in and its fetched outputs (the loss) out.
struct Transfers {
  uint64_t to_device_bytes = 0, to_host_bytes = 0;
  uint64_t to_device_copies = 0, to_host_copies = 0;
};
Transfers transfers();

// TensorFloat-32 for float32 matrix products and convolutions: faster on Ampere and newer, with
// 10-bit mantissas inside the products. Off unless the user opts in (as torch.backends.*.allow_tf32).
void allow_tf32(bool on);
bool tf32_allowed();

}  // namespace kiln::cuda
