// Function: a compiled program called with numpy arrays.
#include "kiln/function.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "convert.h"
#include "kiln/io.h"
#include "kiln/op.h"
// The optimised program's structure (for kn.onnx.export); internal to libkiln, hence the path.
#include "runtime/program.h"  // the compiled program, for kn.onnx.export

namespace nb = nanobind;
using namespace kiln;

namespace {

nb::tuple spec_tuple(const TensorSpec& s) {
  nb::list dims;
  for (int64_t d : s.shape)
    if (d < 0)
      dims.append(nb::none());
    else
      dims.append(nb::int_(d));
  return nb::make_tuple(std::string(dtype_name(s.dtype)), nb::tuple(dims));
}

nb::object attr_object(const AttrValue& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return nb::int_(*i);
  if (const auto* f = std::get_if<double>(&v)) return nb::float_(*f);
  if (const auto* s = std::get_if<std::string>(&v)) return nb::str(s->c_str(), s->size());
  nb::list l;
  for (int64_t x : std::get<std::vector<int64_t>>(v)) l.append(nb::int_(x));
  return l;
}

nb::tuple edge_tuple(const Edge& e) { return nb::make_tuple(e.node, e.index); }

nb::object host_copy(const Tensor& t) {
  return py::to_numpy(t.device() == Device::cpu ? t.clone() : t.to(Device::cpu));
}

// The optimised program as Python data: {"nodes": [{op, attrs, inputs: [(node, index)], outputs:
// [(dtype, shape)], name, site, value}], "inputs": [node ids], "outputs": [(node, index)],
// "updates": [(variable, (node, index))], "training": bool}. `value`: a constant's array, a
// variable's current value (a copy), else None.
nb::dict program_dict(const Function& f) {
  const Program& p = f.program();
  nb::list nodes;
  for (const ProgramNode& n : p.nodes) {
    nb::dict d;
    d["op"] = n.op->name;
    nb::dict attrs;
    for (const auto& [k, v] : n.attrs.items()) attrs[k.c_str()] = attr_object(v);
    d["attrs"] = attrs;
    nb::list inputs, outputs;
    for (const Edge& e : n.inputs) inputs.append(edge_tuple(e));
    for (const TensorSpec& s : n.outputs) outputs.append(spec_tuple(s));
    d["inputs"] = inputs;
    d["outputs"] = outputs;
    d["name"] = n.name;
    d["site"] = n.site;
    if (n.op->name == "constant" && n.value.defined())
      d["value"] = host_copy(n.value);
    else if (n.op->name == "variable" && p.variables->has(n.attrs.s("name")))
      d["value"] = host_copy(p.variables->get(n.attrs.s("name")));
    else
      d["value"] = nb::none();
    nodes.append(d);
  }
  nb::dict out;
  out["nodes"] = nodes;
  nb::list ins, outs, updates;
  for (int32_t id : p.inputs) ins.append(id);
  for (const Edge& e : p.outputs) outs.append(edge_tuple(e));
  for (const auto& [name, e] : p.updates) updates.append(nb::make_tuple(name, edge_tuple(e)));
  out["inputs"] = ins;
  out["outputs"] = outs;
  out["updates"] = updates;
  out["training"] = p.training;
  return out;
}

}  // namespace

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
                     for (const TensorSpec& s : f.input_specs()) l.append(spec_tuple(s));
                     return l;
                   })
      .def_prop_ro("output_specs",
                   [](const Function& f) {
                     nb::list l;
                     for (const TensorSpec& s : f.output_specs()) l.append(spec_tuple(s));
                     return l;
                   })
      .def("program", &program_dict,
           "The optimised program, node by node (op, typed attrs, input edges, output specs, name, "
           "constant and variable values): what kn.onnx.export translates.")
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
