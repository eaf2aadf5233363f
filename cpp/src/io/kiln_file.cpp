// The .kiln file: a safetensors file whose tensors are the graph's variables (under their own
// names) and the functions' constants ("kiln.constant/<function>/<node>"), and whose metadata
// holds "kiln.format" (the version) and "kiln.graph": the functions' optimised programs as JSON.
// Loading rebuilds every node through the op registry and re-runs its shape inference, so a file
// that loads describes a graph kiln could have built itself.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "kiln/error.h"
#include "kiln/io.h"
#include "kiln/op.h"
#include "runtime/program.h"

namespace kiln {
namespace {

using json = nlohmann::json;

using io::printable;

json spec_json(const TensorSpec& s) { return {dtype_name(s.dtype), s.shape.vec()}; }
json edge_json(const Edge& e) { return {e.node, e.index}; }

// JSON has no infinities or NaN: those doubles are written as {"float": "inf"}.
json attr_json(const AttrValue& v) {
  if (auto p = std::get_if<int64_t>(&v)) return *p;
  if (auto p = std::get_if<double>(&v)) {
    if (std::isfinite(*p)) return *p;
    return {{"float", std::isnan(*p) ? "nan" : (*p > 0 ? "inf" : "-inf")}};
  }
  if (auto p = std::get_if<std::string>(&v)) return *p;
  return std::get<std::vector<int64_t>>(v);
}

std::string constant_name(const std::string& function, size_t node) {
  return "kiln.constant/" + function + "/" + std::to_string(node);
}

json program_json(const std::string& name, const Function& f) {
  const Program& p = f.program();
  json nodes = json::array();
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const ProgramNode& n = p.nodes[i];
    json attrs = json::object();
    for (const auto& [k, v] : n.attrs.items()) attrs[k] = attr_json(v);
    json inputs = json::array(), outputs = json::array();
    for (const Edge& e : n.inputs) inputs.push_back(edge_json(e));
    for (const TensorSpec& s : n.outputs) outputs.push_back(spec_json(s));
    json nj = {{"op", n.op->name}, {"attrs", attrs}, {"inputs", inputs}, {"outputs", outputs}};
    if (!n.name.empty()) nj["name"] = n.name;
    if (!n.site.empty()) nj["site"] = n.site;
    if (n.value.defined()) nj["tensor"] = constant_name(name, i);
    nodes.push_back(std::move(nj));
  }
  json outputs = json::array(), updates = json::array();
  for (const Edge& e : p.outputs) outputs.push_back(edge_json(e));
  for (const auto& [var, e] : p.updates) updates.push_back({var, edge_json(e)});
  return {{"name", name},
          {"training", p.training},
          {"calls", f.calls()},
          {"annotations", f.annotations()},
          {"inputs", p.inputs},
          {"input_names", p.input_names},
          {"output_names", p.output_names},
          {"outputs", outputs},
          {"updates", updates},
          {"nodes", nodes}};
}

// Reads one function's program back, checking everything against the registry and the file.
class ProgramReader {
 public:
  ProgramReader(const std::string& path, const io::Safetensors& file, std::shared_ptr<VariableStore> vars)
      : path_(path), file_(file), vars_(std::move(vars)) {}

  std::shared_ptr<Function> read(const json& fj) {
    where_ = "a function";
    const std::string name = fj.at("name").get<std::string>();
    where_ = "function '" + name + "'";
    auto p = std::make_shared<Program>();
    p->variables = vars_;
    p->training = fj.at("training").get<bool>();
    const json& nodes = fj.at("nodes");
    if (!nodes.is_array()) throw fail("nodes is not a list");
    for (size_t i = 0; i < nodes.size(); ++i) p->nodes.push_back(read_node(name, p->nodes, i, nodes[i]));
    where_ = "function '" + name + "'";
    for (const json& id : fj.at("inputs")) {
      const int32_t i = id.get<int32_t>();
      if (i < 0 || i >= static_cast<int32_t>(p->nodes.size()) || p->nodes[i].op->name != "input")
        throw fail("input " + id.dump() + " is not an input node");
      p->inputs.push_back(i);
      p->input_names.push_back(p->nodes[i].name);
    }
    if (fj.at("input_names").get<std::vector<std::string>>() != p->input_names)
      throw fail("input_names do not match the input nodes");
    for (const json& e : fj.at("outputs")) p->outputs.push_back(read_edge(p->nodes, p->nodes.size(), e));
    p->output_names = fj.at("output_names").get<std::vector<std::string>>();
    if (p->output_names.size() != p->outputs.size()) throw fail("output_names and outputs differ in number");
    for (const json& u : fj.at("updates")) {
      const std::string var = u.at(0).get<std::string>();
      const Edge e = read_edge(p->nodes, p->nodes.size(), u.at(1));
      if (!vars_->has(var)) throw fail("updates variable '" + var + "', which the file does not hold");
      const Tensor& t = vars_->get(var);
      const TensorSpec& s = p->nodes[e.node].outputs[e.index];
      if (s.dtype != t.dtype() || !(s.shape == t.shape()))
        throw fail("the update of '" + var + "' is " + s.str() + ", the variable is " + dtype_name(t.dtype()) +
                   t.shape().str());
      p->updates.emplace_back(var, e);
    }
    if (!fj.at("calls").is_number_unsigned()) throw fail("calls must be a count, got " + fj["calls"].dump());
    auto f = std::make_shared<Function>(p, fj.at("calls").get<uint64_t>());
    for (const auto& [k, v] : fj.at("annotations").items()) f->annotations()[k] = v.get<std::string>();
    return f;
  }

  Error fail(const std::string& what) const { return Error(path_ + ": " + where_ + ": " + what); }
  const std::string& where() const { return where_; }

 private:
  Edge read_edge(const std::vector<ProgramNode>& nodes, size_t before, const json& j) const {
    if (!j.is_array() || j.size() != 2) throw fail("an edge must be [node, output], got " + j.dump());
    const int64_t node = j[0].get<int64_t>(), index = j[1].get<int64_t>();
    if (node < 0 || node >= static_cast<int64_t>(before) || index < 0 ||
        index >= static_cast<int64_t>(nodes[node].outputs.size()))
      throw fail("edge " + j.dump() + " does not name an output of an earlier node");
    return Edge{static_cast<int32_t>(node), static_cast<int32_t>(index)};
  }

  static AttrValue read_attr(const json& v) {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) return v.get<double>();
    if (v.is_string()) return v.get<std::string>();
    if (v.is_array()) return v.get<std::vector<int64_t>>();
    if (v.is_object() && v.size() == 1 && v.contains("float")) {
      const std::string s = v["float"].get<std::string>();
      if (s == "inf") return std::numeric_limits<double>::infinity();
      if (s == "-inf") return -std::numeric_limits<double>::infinity();
      if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    }
    throw Error("attribute value " + v.dump() + " is not an integer, a number, a string or a list of integers");
  }

  static TensorSpec read_spec(const json& j) {
    if (!j.is_array() || j.size() != 2 || !j[1].is_array() || j[1].size() > static_cast<size_t>(kMaxRank))
      throw Error("an output spec must be [dtype, shape], got " + j.dump());
    TensorSpec s{dtype_from_name(j[0].get<std::string>()), Shape{}};
    for (const json& d : j[1]) {
      const int64_t v = d.get<int64_t>();
      if (v < -1) throw Error("bad size " + std::to_string(v) + " in " + j.dump());
      s.shape.push_back(v);
    }
    return s;
  }

  ProgramNode read_node(const std::string& function, const std::vector<ProgramNode>& done, size_t i, const json& nj) {
    const std::string op_name = nj.at("op").get<std::string>();
    where_ = "function '" + function + "', node " + std::to_string(i) + " (" + op_name + ")";
    ProgramNode n;
    n.op = OpRegistry::get().find(op_name);
    if (!n.op) throw fail("unknown op '" + op_name + "' (a file from a newer kiln?)");
    for (const auto& [k, v] : nj.at("attrs").items()) {
      const bool known =
          std::any_of(n.op->attrs.begin(), n.op->attrs.end(), [&, k = k](const AttrSpec& a) { return a.name == k; });
      if (!known) throw fail("unknown attribute '" + k + "'");
      try {
        n.attrs.set(k, read_attr(v));
      } catch (const Error& e) {
        throw fail(e.what());
      }
    }
    for (const AttrSpec& a : n.op->attrs)
      if (a.required && !n.attrs.has(a.name)) throw fail("missing attribute '" + a.name + "'");
    std::vector<TensorSpec> in;
    for (const json& e : nj.at("inputs")) {
      n.inputs.push_back(read_edge(done, i, e));
      in.push_back(done[n.inputs.back().node].outputs[n.inputs.back().index]);
    }
    if (n.op->num_inputs >= 0 && static_cast<int>(n.inputs.size()) != n.op->num_inputs)
      throw fail("has " + std::to_string(n.inputs.size()) + " inputs, the op takes " +
                 std::to_string(n.op->num_inputs));
    std::vector<TensorSpec> stored;
    try {
      for (const json& s : nj.at("outputs")) stored.push_back(read_spec(s));
      n.outputs = n.op->infer(in, n.attrs);  // the same checks as building the graph
      for (const TensorSpec& s : n.outputs) check_size(s);
    } catch (const Error& e) {
      throw fail(e.what());
    }
    if (n.outputs != stored) {
      std::string got, want;
      for (const TensorSpec& s : n.outputs) got += s.str() + " ";
      for (const TensorSpec& s : stored) want += s.str() + " ";
      throw fail("the file says it gives " + want + "but its inputs and attributes give " + got);
    }
    n.name = nj.value("name", "");
    n.site = nj.value("site", "");
    if (op_name == "variable") {
      std::string var;
      try {
        var = n.attrs.s("name");
      } catch (const Error& e) {
        throw fail(e.what());
      }
      if (!vars_->has(var)) throw fail("reads variable '" + var + "', which the file does not hold");
      const Tensor& t = vars_->get(var);
      if (t.dtype() != n.outputs[0].dtype || !(t.shape() == n.outputs[0].shape))
        throw fail("variable '" + var + "' is " + dtype_name(t.dtype()) + t.shape().str() + ", the node reads " +
                   n.outputs[0].str());
    } else if (op_name == "constant") {
      const std::string tensor = nj.at("tensor").get<std::string>();
      auto it = file_.tensors.find(tensor);
      if (it == file_.tensors.end()) throw fail("its tensor '" + tensor + "' is not in the file");
      if (it->second.dtype() != n.outputs[0].dtype || !(it->second.shape() == n.outputs[0].shape))
        throw fail("its tensor '" + tensor + "' is " + dtype_name(it->second.dtype()) + it->second.shape().str() +
                   ", the node says " + n.outputs[0].str());
      n.value = it->second;
    } else if (op_name == "input" && n.name.empty()) {
      throw fail("an input without a name");
    }
    return n;
  }

  std::string path_;
  const io::Safetensors& file_;
  std::shared_ptr<VariableStore> vars_;
  std::string where_;
};

}  // namespace

Function& Bundle::at(const std::string& name) const {
  auto it = functions.find(name);
  if (it != functions.end()) return *it->second;
  std::string have;
  for (const std::string& n : names) have += (have.empty() ? "" : ", ") + n;
  throw Error("no function '" + name + "' here (there are: " + have + ")");
}

void save(const std::string& path, const std::vector<std::pair<std::string, const Function*>>& functions) {
  if (functions.empty()) throw Error("save: no functions to save");
  const std::shared_ptr<VariableStore>& vars = functions[0].second->variables();
  json graph = {{"functions", json::array()}, {"variables", json::array()}};
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::set<std::string> names;
  for (const auto& [name, f] : functions) {
    if (name.empty() || !names.insert(name).second)
      throw Error("save: function names must be unique and non-empty, got '" + name + "' twice");
    if (f->variables() != vars)
      throw Error("save: '" + functions[0].first + "' and '" + name +
                  "' come from different graphs; a file holds the functions of one graph");
    graph["functions"].push_back(program_json(name, *f));
    const Program& p = f->program();
    for (size_t i = 0; i < p.nodes.size(); ++i)
      if (p.nodes[i].value.defined()) tensors.emplace_back(constant_name(name, i), p.nodes[i].value);
  }
  for (const auto& [name, t] : vars->all()) {
    graph["variables"].push_back({{"name", name}, {"spec", spec_json({t.dtype(), t.shape()})}});
    tensors.emplace_back(name, t.to(Device::cpu));  // variables a GPU function trains are copied back
  }
  io::write_safetensors(path, {{"kiln.format", std::to_string(kFileFormat)}, {"kiln.graph", graph.dump()}}, tensors);
}

Bundle load_bundle(const std::string& path) {
  io::Safetensors file = io::read_safetensors(path);
  auto meta = file.metadata.find("kiln.format");
  if (meta == file.metadata.end())
    throw Error(path + ": not a kiln file: its metadata has no kiln.format (a safetensors file of weights only?)");
  int version = 0;
  const std::string& v = meta->second;
  if (!v.empty() && v.size() < 6 && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
    version = std::stoi(v);
  if (version < 1 || version > kFileFormat)
    throw Error(path + ": format version '" + meta->second + "' is not one this kiln reads (versions 1 to " +
                std::to_string(kFileFormat) + ")" + (version > kFileFormat ? ": the file is from a newer kiln" : ""));
  auto text = file.metadata.find("kiln.graph");
  if (text == file.metadata.end()) throw Error(path + ": the metadata has no kiln.graph");

  Bundle b;
  b.variables = std::make_shared<VariableStore>();
  ProgramReader reader(path, file, b.variables);
  try {
    const json graph = json::parse(text->second);
    for (const json& v : graph.at("variables")) {
      const std::string name = v.at("name").get<std::string>();
      auto it = file.tensors.find(name);
      if (it == file.tensors.end()) throw Error(path + ": variable '" + name + "' has no tensor in the file");
      b.variables->set(name, it->second);
    }
    for (const json& fj : graph.at("functions")) {
      std::shared_ptr<Function> f = reader.read(fj);
      const std::string name = fj.at("name").get<std::string>();
      if (b.functions.count(name)) throw Error(path + ": two functions named '" + name + "'");
      b.names.push_back(name);
      b.functions[name] = std::move(f);
    }
  } catch (const json::exception& e) {
    throw Error(path + ": kiln.graph" + (reader.where().empty() ? "" : ", in " + reader.where()) + ": " +
                printable(e.what()));
  }
  if (b.names.empty()) throw Error(path + ": the file holds no functions");
  return b;
}

Function load(const std::string& path, const std::string& name) {
  Bundle b = load_bundle(path);
  if (name.empty() && b.names.size() != 1)
    throw Error(path + ": holds " + std::to_string(b.names.size()) + " functions; name the one to load");
  Function& f = b.at(name.empty() ? b.names[0] : name);
  return std::move(f);
}

}  // namespace kiln
