#include "kiln/graph.h"

#include <algorithm>
#include <sstream>

#include "kiln/error.h"
#include "kiln/op.h"
#include "runtime/device.h"

namespace kiln {

// ---- Attrs ----

Attrs::Attrs(std::initializer_list<std::pair<std::string, AttrValue>> items) {
  for (auto& kv : items) set(kv.first, kv.second);
}

Attrs& Attrs::set(const std::string& name, AttrValue v) {
  auto it = std::lower_bound(items_.begin(), items_.end(), name,
                             [](const auto& kv, const std::string& n) { return kv.first < n; });
  if (it != items_.end() && it->first == name)
    it->second = std::move(v);
  else
    items_.insert(it, {name, std::move(v)});
  return *this;
}

const AttrValue* Attrs::find(const std::string& name) const {
  for (auto& kv : items_)
    if (kv.first == name) return &kv.second;
  return nullptr;
}
const AttrValue& Attrs::get(const std::string& name) const {
  const AttrValue* v = find(name);
  if (!v) throw Error("missing attribute '" + name + "'");
  return *v;
}

int64_t Attrs::i(const std::string& name) const {
  const AttrValue& v = get(name);
  if (auto p = std::get_if<int64_t>(&v)) return *p;
  if (auto p = std::get_if<double>(&v)) return static_cast<int64_t>(*p);
  throw Error("attribute '" + name + "' is not an integer");
}
int64_t Attrs::i(const std::string& name, int64_t fallback) const { return has(name) ? i(name) : fallback; }
double Attrs::f(const std::string& name) const {
  const AttrValue& v = get(name);
  if (auto p = std::get_if<double>(&v)) return *p;
  if (auto p = std::get_if<int64_t>(&v)) return static_cast<double>(*p);
  throw Error("attribute '" + name + "' is not a number");
}
double Attrs::f(const std::string& name, double fallback) const { return has(name) ? f(name) : fallback; }
const std::string& Attrs::s(const std::string& name) const {
  if (auto p = std::get_if<std::string>(&get(name))) return *p;
  throw Error("attribute '" + name + "' is not a string");
}
const std::vector<int64_t>& Attrs::ints(const std::string& name) const {
  if (auto p = std::get_if<std::vector<int64_t>>(&get(name))) return *p;
  throw Error("attribute '" + name + "' is not a list of integers");
}

size_t Attrs::hash() const {
  size_t h = items_.size();
  auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
  for (auto& [k, v] : items_) {
    mix(std::hash<std::string>()(k));
    mix(v.index());
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            for (int64_t e : x) mix(std::hash<int64_t>()(e));
          } else {
            mix(std::hash<T>()(x));
          }
        },
        v);
  }
  return h;
}

std::string Attrs::str() const {
  std::ostringstream os;
  bool first = true;
  for (auto& [k, v] : items_) {
    os << (first ? "" : ", ") << k << "=";
    first = false;
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            os << "[";
            for (size_t i = 0; i < x.size(); ++i) os << (i ? ", " : "") << x[i];
            os << "]";
          } else {
            os << x;
          }
        },
        v);
  }
  return os.str();
}

// ---- Value ----

const Node& Value::node() const { return graph->node(edge.node); }
const TensorSpec& Value::spec() const { return node().outputs.at(edge.index); }

// ---- VariableStore ----

Tensor& VariableStore::get(const std::string& name) {
  auto it = vars_.find(name);
  if (it == vars_.end()) throw Error("no variable named '" + name + "'");
  return it->second;
}

void VariableStore::set(const std::string& name, Tensor t) {
  if (t.defined()) t.storage()->track();
  vars_[name] = std::move(t);
}

Tensor& VariableStore::on(const std::string& name, Device device) {
  Tensor& t = get(name);
  if (t.device() != device) {
    t = t.to(device);
    t.storage()->track();
  }
  return t;
}

// ---- SiteScope ----

namespace {
thread_local std::string g_site;
}
SiteScope::SiteScope(std::string site) : saved_(std::move(g_site)) { g_site = std::move(site); }
SiteScope::~SiteScope() { g_site = std::move(saved_); }
const std::string& SiteScope::current() { return g_site; }
void SiteScope::set(std::string site) { g_site = std::move(site); }

// ---- Graph ----

Graph::Graph() : vars_(std::make_shared<VariableStore>()) {}

std::string Graph::unique_name(const std::string& base) {
  int& n = name_counts_[base];
  std::string name = n == 0 ? base : base + "_" + std::to_string(n);
  ++n;
  while (name_counts_.count(name) && name != base) name = base + "_" + std::to_string(n++);
  if (name != base) name_counts_[name] = 1;
  return name;
}

static std::string with_site(const std::string& msg, const std::string& site) {
  return site.empty() ? msg : msg + "\n  at " + site;
}

void check_size(const TensorSpec& spec) {
  constexpr uint64_t kLimit = uint64_t(1) << 62;
  uint64_t bytes = dtype_size(spec.dtype);
  for (int64_t d : spec.shape) {
    if (d <= 0) continue;  // symbolic or empty
    if (bytes > kLimit / static_cast<uint64_t>(d))
      throw Error("shape " + spec.shape.str() + " of " + dtype_name(spec.dtype) + " is larger than any memory");
    bytes *= static_cast<uint64_t>(d);
  }
}

std::vector<Value> Graph::apply(const std::string& op_name, const std::vector<Value>& inputs, const Attrs& attrs) {
  const std::string& site = SiteScope::current();
  const OpDef* op = OpRegistry::get().find(op_name);
  if (!op) throw Error(with_site("unknown op '" + op_name + "'", site));
  if (op->num_inputs >= 0 && static_cast<int>(inputs.size()) != op->num_inputs)
    throw Error(with_site(
        op_name + ": expected " + std::to_string(op->num_inputs) + " inputs, got " + std::to_string(inputs.size()),
        site));
  for (auto& [k, v] : attrs.items()) {
    bool known = std::any_of(op->attrs.begin(), op->attrs.end(), [&](const AttrSpec& a) { return a.name == k; });
    if (!known) throw Error(with_site(op_name + ": unknown attribute '" + k + "'", site));
  }
  for (const AttrSpec& a : op->attrs)
    if (a.required && !attrs.has(a.name))
      throw Error(with_site(op_name + ": missing attribute '" + a.name + "'", site));

  Node n;
  n.id = size();
  n.op = op;
  n.attrs = attrs;
  n.site = site;
  std::vector<TensorSpec> in_specs;
  for (const Value& v : inputs) {
    if (v.graph != this) throw Error(with_site(op_name + ": an input belongs to another graph", site));
    n.inputs.push_back(v.edge);
    in_specs.push_back(v.spec());
  }
  try {
    n.outputs = op->infer(in_specs, attrs);
    for (const TensorSpec& s : n.outputs) check_size(s);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind(op_name + ":", 0) != 0) msg = op_name + ": " + msg;
    throw Error(with_site(msg, site));
  }
  nodes_.push_back(std::move(n));
  std::vector<Value> outs;
  for (int32_t i = 0; i < static_cast<int32_t>(nodes_.back().outputs.size()); ++i)
    outs.push_back(Value{this, Edge{nodes_.back().id, i}});
  return outs;
}

Value Graph::input(const std::string& name, const Shape& shape, DType dtype) {
  if (name.empty()) throw Error("input: a name is required");
  if (name_counts_.count(name))
    throw Error(with_site("input: the name '" + name + "' is already used in this graph", SiteScope::current()));
  unique_name(name);
  Value v = apply1("input", {}, {{"shape", shape.vec()}, {"dtype", std::string(dtype_name(dtype))}});
  nodes_.back().name = name;
  return v;
}

Value Graph::constant(const Tensor& value) {
  Tensor c = value.contiguous();
  Value v = apply1("constant", {}, {{"shape", c.shape().vec()}, {"dtype", std::string(dtype_name(c.dtype()))}});
  constants_[v.edge.node] = c;
  return v;
}

Value Graph::variable(const std::string& base, const Tensor& value, bool trainable) {
  std::string name = unique_name(base.empty() ? "param" : base);
  Tensor t = value.clone();
  vars_->set(name, t);
  Value v = apply1("variable", {},
                   {{"shape", t.shape().vec()},
                    {"dtype", std::string(dtype_name(t.dtype()))},
                    {"name", name},
                    {"trainable", int64_t(trainable)}});
  nodes_.back().name = name;
  return v;
}

// ---- OpRegistry ----

void register_source_ops(OpRegistry&);
void register_elementwise_ops(OpRegistry&);
void register_reduce_ops(OpRegistry&);
void register_linalg_ops(OpRegistry&);
void register_shape_ops(OpRegistry&);
void register_index_ops(OpRegistry&);
void register_random_ops(OpRegistry&);
void register_activation_ops(OpRegistry&);
void register_nn_ops(OpRegistry&);
void register_optim_ops(OpRegistry&);
void register_conv_ops(OpRegistry&);
void register_pool_ops(OpRegistry&);

OpRegistry::OpRegistry() {
  register_source_ops(*this);
  register_elementwise_ops(*this);
  register_reduce_ops(*this);
  register_linalg_ops(*this);
  register_shape_ops(*this);
  register_index_ops(*this);
  register_random_ops(*this);
  register_activation_ops(*this);
  register_nn_ops(*this);
  register_optim_ops(*this);
  register_conv_ops(*this);
  register_pool_ops(*this);
  device::register_cuda_kernels(*this);  // cuda/*.cu: each op's GPU kernel, where the backend is built
}

OpRegistry& OpRegistry::get() {
  static OpRegistry r;
  return r;
}

void OpRegistry::add(OpDef def) {
  if (find(def.name)) throw Error("op '" + def.name + "' registered twice");
  defs_.push_back(std::make_unique<OpDef>(std::move(def)));
}

void OpRegistry::set_cuda_kernel(const std::string& name, KernelFn kernel) {
  auto it = std::find_if(defs_.begin(), defs_.end(), [&](auto& d) { return d->name == name; });
  if (it == defs_.end()) throw Error("internal: a CUDA kernel for the unknown op '" + name + "'");
  if ((*it)->cuda) throw Error("internal: op '" + name + "' has two CUDA kernels");
  (*it)->cuda = kernel;
}

const OpDef* OpRegistry::find(const std::string& name) const {
  for (auto& d : defs_)
    if (d->name == name) return d.get();
  return nullptr;
}

const OpDef& OpRegistry::at(const std::string& name) const {
  const OpDef* d = find(name);
  if (!d) throw Error("unknown op '" + name + "'");
  return *d;
}

std::vector<const OpDef*> OpRegistry::all() const {
  std::vector<const OpDef*> out;
  for (auto& d : defs_) out.push_back(d.get());
  return out;
}

std::string specs_str(const std::vector<TensorSpec>& specs) {
  std::string s;
  for (size_t i = 0; i < specs.size(); ++i) s += (i ? ", " : "") + specs[i].str();
  return s;
}

}  // namespace kiln
