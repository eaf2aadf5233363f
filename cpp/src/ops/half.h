#pragma once
// float16 elements: IEEE binary16 held as bits, converted to and from float with round-to-nearest-
// even as numpy converts them. Kernels do their arithmetic in float and store halves; only cast and
// matmul take float16 (the rest of a float16 graph is cast to float32 first, as with numpy's BLAS).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kiln/dtype.h"
#include "ops/host_device.h"

namespace kiln {

namespace half_bits {

KILN_HD inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
KILN_HD inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// After F. Giesen's float_to_half_fast3_rtne: subnormal halves come out of one float addition
// (which rounds to nearest even), normal ones from a rounding bias on the bits.
KILN_HD inline uint16_t from_float(float f) {
  uint32_t u = bits_of(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t h;
  if (u >= (127u + 16) << 23) {  // beyond the largest half after rounding: inf, or NaN kept quiet
    h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 113u << 23) {  // a subnormal half or zero
    const uint32_t magic = ((127u - 15) + (23 - 10) + 1) << 23;
    h = bits_of(float_of(u) + float_of(magic)) - magic;
  } else {
    const uint32_t odd = (u >> 13) & 1;
    u += (uint32_t(15 - 127) << 23) + 0xfff + odd;
    h = u >> 13;
  }
  return static_cast<uint16_t>(h | (sign >> 16));
}

// A double goes to float rounded to odd (truncated, then the last bit set when anything was cut),
// which makes the float's own round to nearest even exact: a plain (float) would round twice.
KILN_HD inline uint16_t from_double(double d) {
  float f = static_cast<float>(d);
  if ((bits_of(f) & 0x7f800000u) != 0x7f800000u && static_cast<double>(f) != d) {
    if (::fabs(static_cast<double>(f)) > ::fabs(d)) f = ::nextafterf(f, 0.0f);
    f = float_of(bits_of(f) | 1u);
  }
  return from_float(f);
}

KILN_HD inline float to_float(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t u = (uint32_t(h) & 0x7fffu) << 13;
  const uint32_t exp = u & shifted_exp;
  u += (127u - 15) << 23;
  float f;
  if (exp == shifted_exp) {  // inf or NaN
    f = float_of(u + ((128u - 16) << 23));
  } else if (exp == 0) {  // zero or subnormal: renormalised by one subtraction
    f = float_of(u + (1u << 23)) - float_of(113u << 23);
  } else {
    f = float_of(u);
  }
  return float_of(bits_of(f) | ((uint32_t(h) & 0x8000u) << 16));
}

}  // namespace half_bits

struct half {
  uint16_t bits = 0;
  half() = default;
  template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
  KILN_HD explicit half(T v) {
    if constexpr (std::is_same_v<T, double>)
      bits = half_bits::from_double(v);
    else
      bits = half_bits::from_float(static_cast<float>(v));
  }
  KILN_HD operator float() const { return half_bits::to_float(bits); }
};
static_assert(sizeof(half) == 2);

}  // namespace kiln

// KILN_DISPATCH_ALL with float16 as kiln::half: for the ops that take float16 (cast, matmul).
#define KILN_DISPATCH_ALL_AND_HALF(dtype, opname, ...)     \
  switch (dtype) {                                         \
    KILN_FLOAT_CASES(__VA_ARGS__)                          \
    KILN_INT_CASES(__VA_ARGS__)                            \
    KILN_DISPATCH_CASE(bool_, bool, __VA_ARGS__)           \
    KILN_DISPATCH_CASE(float16, ::kiln::half, __VA_ARGS__) \
    KILN_DISPATCH_DEFAULT(dtype, opname);                  \
  }
