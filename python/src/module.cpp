// kiln._core: the extension module. Python-side API lives in python/kiln; this file wires the
// per-module binding files together and maps kiln::Error to kiln.Error (a ValueError).
#include <nanobind/nanobind.h>

#include <cstring>

#include "kiln/error.h"
#include "kiln/tensor.h"
#include "kiln/threads.h"

namespace nb = nanobind;

void bind_graph(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_function(nb::module_& m);
void bind_cuda(nb::module_& m);

NB_MODULE(_core, m) {
  static nb::exception<kiln::Error> error(m, "Error", PyExc_ValueError);
  // A message may quote bytes of a damaged file: decode it leniently, so the user always gets
  // kiln.Error (nanobind's own translation would raise UnicodeDecodeError instead).
  nb::register_exception_translator(
      [](const std::exception_ptr& p, void* type) {
        try {
          std::rethrow_exception(p);
        } catch (const kiln::Error& e) {
          PyObject* msg = PyUnicode_DecodeUTF8(e.what(), static_cast<Py_ssize_t>(std::strlen(e.what())), "replace");
          PyErr_SetObject(static_cast<PyObject*>(type), msg);
          Py_XDECREF(msg);
        }
      },
      error.ptr());
  m.def("num_threads", &kiln::num_threads, "Threads in kiln's kernel pool.");
  m.def("set_num_threads", &kiln::set_num_threads, nb::arg("n"), "Resizes kiln's kernel pool.");
  m.def("allocation_count", &kiln::Storage::allocations,
        "Memory blocks kiln has allocated so far (for tests of the memory plan).");
  bind_graph(m);
  bind_ops(m);
  bind_function(m);
  bind_cuda(m);
}
