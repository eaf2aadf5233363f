// Function: a compiled program called with numpy arrays.
#include "kiln/function.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "convert.h"
#include "kiln/io.h"

namespace nb = nanobind;
using namespace kiln;

void bind_function(nb::module_& m) {
  nb::class_<Function>(m, "Function")
      .def(
          "__init__",
          [](Function* f, const std::vector<Value>& inputs, const std::vector<std::pair<std::string, Value>>& outputs,
             const std::vector<std::pair<Value, Value>>& updates, bool training, const std::string& device) {
            new (f) Function(inputs, outputs, updates, training, py::device_arg(device));
          },
          nb::arg("inputs"), nb::arg("outputs"), nb::arg("updates"), nb::arg("training"), nb::arg("device"))
      .def_prop_rw(
          "device", [](const Function& f) { return std::string(f.device() == Device::cuda ? "cuda" : "cpu"); },
          [](Function& f, const std::string& device) { f.set_device(py::device_arg(device)); })
      .def("run",
           [](Function& f, const nb::list& arrays) {
             std::vector<Tensor> in;
             in.reserve(arrays.size());
             for (nb::handle a : arrays) in.push_back(py::to_tensor(a));
             std::vector<Tensor> out;
             {
               nb::gil_scoped_release unlocked;  // other Python threads run meanwhile
               out = f.run(in);
             }
             nb::list result;
             for (const Tensor& t : out) result.append(py::to_numpy(t));
             return result;
           })
      .def_prop_ro("input_names", &Function::input_names)
      .def_prop_ro("output_names", &Function::output_names)
      .def_prop_ro("input_specs",
                   [](const Function& f) {
                     nb::list l;
                     for (const TensorSpec& s : f.input_specs()) {
                       nb::list dims;
                       for (int64_t d : s.shape)
                         if (d < 0)
                           dims.append(nb::none());
                         else
                           dims.append(nb::int_(d));
                       l.append(nb::make_tuple(std::string(dtype_name(s.dtype)), nb::tuple(dims)));
                     }
                     return l;
                   })
      .def_prop_ro("num_nodes", &Function::num_nodes)
      .def_prop_ro("num_plans", &Function::num_plans)
      .def("plan_stats",
           [](const Function& f) {
             PlanStats s = f.plan_stats();
             nb::dict d;
             d["steps"] = s.steps;
             d["buffers"] = s.buffers;
             d["buffer_bytes"] = s.buffer_bytes;
             d["values"] = s.values;
             d["in_place"] = s.in_place;
             return d;
           })
      .def("set_profiling", &Function::set_profiling, nb::arg("on"))
      .def("profile",
           [](const Function& f) {
             nb::list rows;
             for (const auto& e : f.profile()) rows.append(nb::make_tuple(e.node, e.op, e.calls, e.seconds));
             return rows;
           })
      .def_prop_rw(
          "annotations", [](const Function& f) { return f.annotations(); },
          [](Function& f, const std::map<std::string, std::string>& a) { f.annotations() = a; })
      .def_prop_ro("training", &Function::training)
      .def_prop_ro("calls", &Function::calls)
      .def("__str__", &Function::str);

  m.def(
      "save",
      [](const std::string& path, const std::vector<std::pair<std::string, const Function*>>& functions) {
        nb::gil_scoped_release unlocked;
        save(path, functions);
      },
      nb::arg("path"), nb::arg("functions"));
  m.def(
      "load",
      [](const std::string& path) {
        Bundle b = [&] {
          nb::gil_scoped_release unlocked;
          return load_bundle(path);
        }();
        std::vector<std::pair<std::string, Function>> out;
        for (const std::string& name : b.names) out.emplace_back(name, std::move(*b.functions[name]));
        return out;
      },
      nb::arg("path"));
}
