#include "convert.h"

#include <nanobind/stl/string.h>

#include <memory>

#include "kiln/error.h"

namespace kiln::py {

namespace {

DType from_dlpack(nb::dlpack::dtype t) {
  using nb::dlpack::dtype_code;
  auto code = static_cast<dtype_code>(t.code);
  if (code == dtype_code::Float && t.bits == 32) return DType::float32;
  if (code == dtype_code::Float && t.bits == 64) return DType::float64;
  if (code == dtype_code::Float && t.bits == 16) return DType::float16;
  if (code == dtype_code::Int && t.bits == 32) return DType::int32;
  if (code == dtype_code::Int && t.bits == 64) return DType::int64;
  if (code == dtype_code::UInt && t.bits == 8) return DType::uint8;
  if (code == dtype_code::Bool) return DType::bool_;
  throw Error("unsupported array dtype (kiln takes float32, float64, float16, int32, int64, uint8 and bool)");
}

nb::dlpack::dtype to_dlpack(DType t) {
  switch (t) {
    case DType::float32:
      return nb::dtype<float>();
    case DType::float64:
      return nb::dtype<double>();
    case DType::float16:
      return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    case DType::int32:
      return nb::dtype<int32_t>();
    case DType::int64:
      return nb::dtype<int64_t>();
    case DType::uint8:
      return nb::dtype<uint8_t>();
    case DType::bool_:
      return nb::dtype<bool>();
    default:
      throw Error(std::string("no numpy dtype for ") + dtype_name(t));
  }
}

}  // namespace

Tensor to_tensor(nb::handle obj) {
  // Read-only arrays too (onnx's numpy_helper makes them): kiln never writes into what it is
  // given, as inputs and constants are only read and variables are copies.
  nb::ndarray<nb::ro, nb::numpy, nb::device::cpu> a;
  if (!nb::try_cast(obj, a, false))
    throw Error("expected a numpy array, got " + std::string(nb::str(obj.type()).c_str()));
  DType dt = from_dlpack(a.dtype());
  Shape shape, strides;
  for (size_t i = 0; i < a.ndim(); ++i) {
    shape.push_back(static_cast<int64_t>(a.shape(i)));
    strides.push_back(static_cast<int64_t>(a.stride(i)));
  }
  nb::object keep = nb::borrow(obj);
  auto owner = std::shared_ptr<void>(keep.release().ptr(), [](void* p) {
    nb::gil_scoped_acquire gil;
    Py_DECREF(static_cast<PyObject*>(p));
  });
  return Tensor::from_blob(const_cast<void*>(a.data()), shape, dt, std::move(owner), &strides);
}

nb::object to_numpy(const Tensor& t) {
  auto holder = std::make_unique<Tensor>(t);
  void* data = holder->raw();
  size_t shape[kMaxRank];
  int64_t strides[kMaxRank];
  for (int i = 0; i < t.rank(); ++i) {
    shape[i] = static_cast<size_t>(t.shape()[i]);
    strides[i] = t.strides()[i];
  }
  nb::capsule owner(holder.release(), [](void* p) noexcept { delete static_cast<Tensor*>(p); });
  Array arr(data, static_cast<size_t>(t.rank()), shape, owner, strides, to_dlpack(t.dtype()), nb::device::cpu::value);
  return arr.cast();
}

Device device_arg(const std::string& device) {
  if (device == "cpu") return Device::cpu;
  if (device == "cuda" || device == "cuda:0") return Device::cuda;
  throw Error("device must be 'cpu' or 'cuda' (kiln uses CUDA device 0), got '" + device + "'");
}

DType dtype_arg(nb::handle dtype) {
  if (nb::isinstance<nb::str>(dtype)) return dtype_from_name(nb::cast<std::string>(dtype));
  nb::object np = nb::module_::import_("numpy");
  std::string name = nb::cast<std::string>(np.attr("dtype")(dtype).attr("name"));
  return dtype_from_name(name);
}

}  // namespace kiln::py
