// Graph, Value (a symbolic tensor), autodiff and the op registry.
#include "kiln/graph.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "convert.h"
#include "kiln/autodiff.h"
#include "kiln/op.h"

namespace nb = nanobind;
using namespace kiln;

namespace {

Shape shape_arg(const nb::handle& seq) {
  Shape s;
  for (nb::handle d : seq) s.push_back(d.is_none() ? kUnknownDim : nb::cast<int64_t>(d));
  return s;
}

nb::tuple shape_tuple(const Shape& s) {
  nb::list l;
  for (int64_t d : s) {
    if (d < 0)
      l.append(nb::none());
    else
      l.append(nb::int_(d));
  }
  return nb::tuple(l);
}

Attrs attrs_arg(const nb::dict& d) {
  Attrs a;
  for (auto [k, v] : d) {
    std::string key = nb::cast<std::string>(k);
    if (nb::isinstance<nb::bool_>(v))
      a.set(key, int64_t(nb::cast<bool>(v)));
    else if (nb::isinstance<nb::int_>(v))
      a.set(key, nb::cast<int64_t>(v));
    else if (nb::isinstance<nb::float_>(v))
      a.set(key, nb::cast<double>(v));
    else if (nb::isinstance<nb::str>(v))
      a.set(key, nb::cast<std::string>(v));
    else
      a.set(key, nb::cast<std::vector<int64_t>>(v));
  }
  return a;
}

}  // namespace

void bind_graph(nb::module_& m) {
  nb::class_<Graph>(m, "Graph")
      .def(nb::init<>())
      .def("__len__", &Graph::size)
      .def(
          "input",
          [](Graph& g, const std::string& name, nb::handle shape, nb::handle dtype) {
            return g.input(name, shape_arg(shape), py::dtype_arg(dtype));
          },
          nb::arg("name"), nb::arg("shape"), nb::arg("dtype"))
      .def("constant", [](Graph& g, nb::handle array) { return g.constant(py::to_tensor(array)); })
      .def(
          "variable",
          [](Graph& g, const std::string& name, nb::handle array, bool trainable) {
            return g.variable(name, py::to_tensor(array), trainable);
          },
          nb::arg("name"), nb::arg("value"), nb::arg("trainable") = true)
      .def("variable_value",
           [](Graph& g, const std::string& name) {
             const Tensor& v = g.variables()->get(name);  // copied: from the GPU, or away from the engine's own
             return py::to_numpy(v.device() == Device::cpu ? v.clone() : v.to(Device::cpu));
           })
      .def("assign",
           [](Graph& g, const std::string& name, nb::handle array) {
             Tensor& var = g.variables()->get(name);
             Tensor src = py::to_tensor(array);
             if (src.dtype() != var.dtype() || src.shape() != var.shape())
               throw Error("assign: variable '" + name + "' is " + dtype_name(var.dtype()) + var.shape().str() +
                           ", got " + dtype_name(src.dtype()) + src.shape().str());
             var.copy_from(src);
           })
      .def("variable_names",
           [](Graph& g) {
             std::vector<std::string> names;
             for (auto& kv : g.variables()->all()) names.push_back(kv.first);
             return names;
           })
      .def(
          "apply",
          [](Graph& g, const std::string& op, const std::vector<Value>& inputs, const nb::dict& attrs) {
            return g.apply(op, inputs, attrs_arg(attrs));
          },
          nb::arg("op"), nb::arg("inputs"), nb::arg("attrs") = nb::dict());

  nb::class_<Value>(m, "Value")
      .def_prop_ro("shape", [](const Value& v) { return shape_tuple(v.shape()); })
      .def_prop_ro("dtype", [](const Value& v) { return std::string(dtype_name(v.dtype())); })
      .def_prop_ro("op", [](const Value& v) { return v.node().op->name; })
      .def_prop_ro("name", [](const Value& v) { return v.node().name; })
      .def_prop_ro("site", [](const Value& v) { return v.node().site; })
      .def_prop_ro("node", [](const Value& v) { return v.edge.node; })
      .def_prop_ro("index", [](const Value& v) { return v.edge.index; })
      .def("same_as", [](const Value& a, const Value& b) { return a.graph == b.graph && a.edge == b.edge; });

  m.def("set_site", &SiteScope::set, nb::arg("site"), "Creation site given to the nodes built next.");
  m.def(
      "grad",
      [](const Value& y, const std::vector<Value>& wrt, std::optional<Value> grad_output) {
        return grad(y, wrt, grad_output ? *grad_output : Value{});
      },
      nb::arg("y"), nb::arg("wrt"), nb::arg("grad_output").none() = nb::none());

  m.def("op_names", [] {
    std::vector<std::string> names;
    for (const OpDef* d : OpRegistry::get().all()) names.push_back(d->name);
    return names;
  });
  m.def("op_info", [](const std::string& name) {
    const OpDef& d = OpRegistry::get().at(name);
    nb::dict info;
    info["differentiable"] = d.differentiable;
    info["has_vjp"] = static_cast<bool>(d.vjp);
    info["has_cpu_kernel"] = d.cpu != nullptr;
    info["has_cuda_kernel"] = d.cuda != nullptr;
    info["kind"] = d.kind == OpKind::source ? "source" : d.kind == OpKind::alias ? "alias" : "compute";
    info["random"] = d.random;
    return info;
  });
}
