// kiln._core: the extension module. Python-side API lives in python/kiln; this file wires the
// per-module binding files together and maps kiln::Error to kiln.Error (a ValueError).
#include <nanobind/nanobind.h>

#include "kiln/error.h"
#include "kiln/tensor.h"
#include "kiln/threads.h"

namespace nb = nanobind;

void bind_graph(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_function(nb::module_& m);

NB_MODULE(_core, m) {
  nb::exception<kiln::Error>(m, "Error", PyExc_ValueError);
  m.def("num_threads", &kiln::num_threads, "Threads in kiln's kernel pool.");
  m.def("set_num_threads", &kiln::set_num_threads, nb::arg("n"), "Resizes kiln's kernel pool.");
  m.def("allocation_count", &kiln::Storage::allocations,
        "Memory blocks kiln has allocated so far (for tests of the memory plan).");
  bind_graph(m);
  bind_ops(m);
  bind_function(m);
}
