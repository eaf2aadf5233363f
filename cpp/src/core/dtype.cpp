#include "kiln/dtype.h"

#include "kiln/error.h"

namespace kiln {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::float32:
      return 4;
    case DType::float64:
      return 8;
    case DType::float16:
      return 2;
    case DType::bfloat16:
      return 2;
    case DType::int32:
      return 4;
    case DType::int64:
      return 8;
    case DType::uint8:
      return 1;
    case DType::bool_:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::float32:
      return "float32";
    case DType::float64:
      return "float64";
    case DType::float16:
      return "float16";
    case DType::bfloat16:
      return "bfloat16";
    case DType::int32:
      return "int32";
    case DType::int64:
      return "int64";
    case DType::uint8:
      return "uint8";
    case DType::bool_:
      return "bool";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::float32, DType::float64, DType::float16, DType::bfloat16, DType::int32, DType::int64,
                  DType::uint8, DType::bool_})
    if (name == dtype_name(t)) return t;
  throw Error("unknown dtype '" + name +
              "' (expected float32, float64, float16, bfloat16, int32, int64, uint8 or bool)");
}

bool is_floating(DType t) {
  return t == DType::float32 || t == DType::float64 || t == DType::float16 || t == DType::bfloat16;
}
bool is_integral(DType t) { return !is_floating(t); }

DType promote(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::bool_) return b;
  if (b == DType::bool_) return a;
  auto rank = [](DType t) {  // position in numpy's lattice for kiln's types
    switch (t) {
      case DType::uint8:
        return 0;
      case DType::int32:
        return 1;
      case DType::int64:
        return 2;
      case DType::float16:
        return 3;
      case DType::bfloat16:
        return 3;
      case DType::float32:
        return 4;
      default:
        return 5;
    }
  };
  DType lo = rank(a) < rank(b) ? a : b, hi = rank(a) < rank(b) ? b : a;
  // numpy: 32/64-bit integers do not fit a float32 exactly, so the pair goes to float64.
  if (hi == DType::float32 && (lo == DType::int32 || lo == DType::int64)) return DType::float64;
  return hi;
}

Error unsupported_dtype(const std::string& op, DType t) {
  std::string msg = op + ": dtype " + dtype_name(t) + " is not supported";
  if (t == DType::float16)
    msg += "; float16 tensors take cast, matmul and the shape ops only: cast to float32 for the rest";
  return Error(msg);
}

}  // namespace kiln
