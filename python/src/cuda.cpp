// kiln._core's CUDA queries (kn.cuda).
#include "kiln/cuda.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

namespace nb = nanobind;

void bind_cuda(nb::module_& m) {
  m.def("cuda_is_built", &kiln::cuda::is_built);
  m.def("cuda_device_count", &kiln::cuda::device_count);
  m.def("cuda_is_available", &kiln::cuda::is_available);
  m.def("cuda_status", &kiln::cuda::status);
  m.def("cuda_self_test", [] {
    nb::gil_scoped_release unlocked;
    kiln::cuda::self_test();
  });
}
