#pragma once
// Element types. The enum keeps room for half types; kernels exist for the rest.
#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/error.h"

namespace kiln {

enum class DType : uint8_t { float32, float64, float16, bfloat16, int32, int64, uint8, bool_ };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // throws kiln::Error on unknown names
bool is_floating(DType t);
bool is_integral(DType t);  // integers and bool
// numpy's result_type for the dtypes kiln supports (int32 + float32 -> float64, as numpy).
DType promote(DType a, DType b);
// The error of an op's kernel given a dtype it does not take.
Error unsupported_dtype(const std::string& op, DType t);

// Runs the code with `scalar_t` the C++ type of a runtime dtype; only the listed types are
// instantiated, and any other dtype throws kiln::Error naming the op.
#define KILN_DISPATCH_CASE(DT, T, ...) \
  case DType::DT: {                    \
    using scalar_t = T;                \
    __VA_ARGS__;                       \
    break;                             \
  }
#define KILN_FLOAT_CASES(...)                     \
  KILN_DISPATCH_CASE(float32, float, __VA_ARGS__) \
  KILN_DISPATCH_CASE(float64, double, __VA_ARGS__)
#define KILN_INT_CASES(...)                       \
  KILN_DISPATCH_CASE(int32, int32_t, __VA_ARGS__) \
  KILN_DISPATCH_CASE(int64, int64_t, __VA_ARGS__) \
  KILN_DISPATCH_CASE(uint8, uint8_t, __VA_ARGS__)
#define KILN_DISPATCH_DEFAULT(dtype, opname) \
  default:                                   \
    throw ::kiln::unsupported_dtype(opname, dtype)

#define KILN_DISPATCH_FLOAT(dtype, opname, ...) \
  switch (dtype) {                              \
    KILN_FLOAT_CASES(__VA_ARGS__)               \
    KILN_DISPATCH_DEFAULT(dtype, opname);       \
  }
#define KILN_DISPATCH_NUMERIC(dtype, opname, ...) \
  switch (dtype) {                                \
    KILN_FLOAT_CASES(__VA_ARGS__)                 \
    KILN_INT_CASES(__VA_ARGS__)                   \
    KILN_DISPATCH_DEFAULT(dtype, opname);         \
  }
#define KILN_DISPATCH_ALL(dtype, opname, ...)    \
  switch (dtype) {                               \
    KILN_FLOAT_CASES(__VA_ARGS__)                \
    KILN_INT_CASES(__VA_ARGS__)                  \
    KILN_DISPATCH_CASE(bool_, bool, __VA_ARGS__) \
    KILN_DISPATCH_DEFAULT(dtype, opname);        \
  }

// Runs f(T{}) with T the unsigned integer as wide as the dtype's elements: for kernels that move
// elements without looking at them (so float16 too).
template <class F>
void dispatch_by_size(DType dtype, const char* op, F&& f) {
  switch (dtype_size(dtype)) {
    case 1:
      return f(uint8_t{});
    case 2:
      return f(uint16_t{});
    case 4:
      return f(uint32_t{});
    case 8:
      return f(uint64_t{});
    default:
      throw unsupported_dtype(op, dtype);
  }
}

}  // namespace kiln
