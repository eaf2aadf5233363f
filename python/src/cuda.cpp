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
  m.def("cuda_transfers", [] {
    const kiln::cuda::Transfers t = kiln::cuda::transfers();
    nb::dict d;
    d["to_device_bytes"] = t.to_device_bytes;
    d["to_host_bytes"] = t.to_host_bytes;
    d["to_device_copies"] = t.to_device_copies;
    d["to_host_copies"] = t.to_host_copies;
    return d;
  });
  m.def("cuda_allow_tf32", &kiln::cuda::allow_tf32);
  m.def("cuda_tf32_allowed", &kiln::cuda::tf32_allowed);
}
