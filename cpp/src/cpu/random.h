#pragma once
// Counter-based random bits: element i of call n of a function is a hash of (seed, n, i), so a
// draw is reproducible for a seed, fresh on every call, independent of threading, and can be
// recomputed (dropout's backward regenerates its forward mask instead of storing it).
#include <cstdint>

#include "ops/host_device.h"  // shared with the CUDA kernels

namespace kiln::cpu {

KILN_HD inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

KILN_HD inline uint64_t stream_key(int64_t seed, uint64_t call) {
  return splitmix64(static_cast<uint64_t>(seed) ^ splitmix64(call));
}

KILN_HD inline uint64_t random_bits(uint64_t key, int64_t i) {
  return splitmix64(key + static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull);
}

// Uniform in [0, 1) with 53 bits.
KILN_HD inline double unit_double(uint64_t bits) {
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}
// Uniform in [0, 1) with 24 bits.
KILN_HD inline float unit_float(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }

}  // namespace kiln::cpu
