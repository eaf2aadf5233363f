#pragma once
// numpy <-> kiln::Tensor, zero-copy both ways: a Tensor made from an array keeps the array
// alive; an array made from a Tensor keeps the Tensor's storage alive.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "kiln/tensor.h"

namespace kiln::py {

namespace nb = nanobind;
using Array = nb::ndarray<nb::numpy, nb::device::cpu>;

Tensor to_tensor(nb::handle array);  // any C-contiguous numpy array of a kiln dtype
nb::object to_numpy(const Tensor& t);
DType dtype_arg(nb::handle dtype);
Device device_arg(const std::string& device);  // "cpu", "cuda" or "cuda:0"  // "float32", np.float32, np.dtype('float32')

}  // namespace kiln::py
