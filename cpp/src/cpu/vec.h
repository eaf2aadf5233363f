#pragma once
// Vectors of float32 through the compiler's vector extension: no intrinsics, and with -march=native
// (KILN_NATIVE) each operation on a v16 is one AVX-512 instruction (two AVX2 ones elsewhere).
#include <cstring>

namespace kiln::cpu {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

// Unaligned loads and stores (memcpy: the compiler emits one vector move).
template <class V = v16>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
inline void store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// n floats (up to 16) from p into a vector, the lanes past them 0, and a vector's first n lanes back: a row's
// end, where whole vectors would reach past the row or the array.
inline v16 load_part(const float* p, long n) {
  float t[16] = {};
  std::memcpy(t, p, n * sizeof(float));
  return load(t);
}
inline void store_part(float* p, const v16& v, long n) {
  float t[16];
  store(t, v);
  std::memcpy(p, t, n * sizeof(float));
}

// All lanes s (`v16{} + s` would add a zero the compiler may not drop, for -0's sake).
inline v16 splat(float s) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

}  // namespace kiln::cpu
