#pragma once
// The graph IR: nodes in creation order (which is a topological order), each an op applied to
// the outputs of earlier nodes. Shapes may hold symbolic (-1) dimensions.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "kiln/tensor.h"

namespace kiln {

struct OpDef;
class Graph;

using AttrValue = std::variant<int64_t, double, std::string, std::vector<int64_t>>;

// An op's attributes: a short list of (name, value), kept sorted by name so that equal
// attribute sets compare and hash equal.
class Attrs {
 public:
  Attrs() = default;
  Attrs(std::initializer_list<std::pair<std::string, AttrValue>> items);
  Attrs& set(const std::string& name, AttrValue v);
  bool has(const std::string& name) const { return find(name) != nullptr; }
  int64_t i(const std::string& name) const;
  int64_t i(const std::string& name, int64_t fallback) const;
  double f(const std::string& name) const;
  double f(const std::string& name, double fallback) const;
  const std::string& s(const std::string& name) const;
  const std::vector<int64_t>& ints(const std::string& name) const;
  const std::vector<std::pair<std::string, AttrValue>>& items() const { return items_; }
  bool operator==(const Attrs& o) const { return items_ == o.items_; }
  size_t hash() const;
  std::string str() const;

 private:
  const AttrValue* find(const std::string& name) const;
  const AttrValue& get(const std::string& name) const;
  std::vector<std::pair<std::string, AttrValue>> items_;
};

struct TensorSpec {
  DType dtype = DType::float32;
  Shape shape;
  bool operator==(const TensorSpec& o) const { return dtype == o.dtype && shape == o.shape; }
  std::string str() const { return std::string(dtype_name(dtype)) + shape.str(); }
};

// One output of one node.
struct Edge {
  int32_t node = -1;
  int32_t index = 0;
  bool valid() const { return node >= 0; }
  bool operator==(const Edge& o) const { return node == o.node && index == o.index; }
  bool operator<(const Edge& o) const { return node < o.node || (node == o.node && index < o.index); }
};

struct Node {
  int32_t id = -1;
  const OpDef* op = nullptr;
  Attrs attrs;
  std::vector<Edge> inputs;
  std::vector<TensorSpec> outputs;
  std::string name;  // inputs and variables: the user's name
  std::string site;  // where the user created it ("train.py:12"), for error messages
};

// A symbolic tensor: an edge of a particular graph. Cheap to copy.
struct Value {
  Graph* graph = nullptr;
  Edge edge;
  bool valid() const { return graph != nullptr && edge.valid(); }
  const Node& node() const;
  const TensorSpec& spec() const;
  DType dtype() const { return spec().dtype; }
  const Shape& shape() const { return spec().shape; }
  int rank() const { return shape().rank(); }
};

// Variables (parameters, running statistics, optimiser slots): named tensors that live in the
// engine, shared by every function compiled from the graph.
class VariableStore {
 public:
  Tensor& get(const std::string& name);
  // The variable on `device`, moved there first if it lives elsewhere: a function on the GPU
  // keeps its variables there between calls; reading or saving them copies them back.
  Tensor& on(const std::string& name, Device device);
  bool has(const std::string& name) const { return vars_.count(name) != 0; }
  void set(const std::string& name, Tensor t);
  const std::map<std::string, Tensor>& all() const { return vars_; }

 private:
  std::map<std::string, Tensor> vars_;
};

class Graph {
 public:
  Graph();
  const Node& node(int32_t id) const { return nodes_.at(id); }
  int32_t size() const { return static_cast<int32_t>(nodes_.size()); }
  Value value(Edge e) { return Value{this, e}; }

  // Adds a node after checking its attributes and inferring its outputs; shape and dtype
  // errors are raised here, at build time, naming the op, the shapes and the creation site.
  std::vector<Value> apply(const std::string& op, const std::vector<Value>& inputs, const Attrs& attrs = {});
  Value apply1(const std::string& op, const std::vector<Value>& inputs, const Attrs& attrs = {}) {
    return apply(op, inputs, attrs).at(0);
  }

  Value input(const std::string& name, const Shape& shape, DType dtype);
  Value constant(const Tensor& value);
  // A trainable or state variable initialised to `value`; the name is made unique if taken.
  Value variable(const std::string& name, const Tensor& value, bool trainable = true);

  const Tensor& constant_value(int32_t node) const { return constants_.at(node); }
  const std::shared_ptr<VariableStore>& variables() const { return vars_; }
  std::string unique_name(const std::string& base);

 private:
  std::vector<Node> nodes_;
  std::map<int32_t, Tensor> constants_;
  std::map<std::string, int> name_counts_;
  std::shared_ptr<VariableStore> vars_;
};

// The creation site attached to nodes made while it is set (a thread-local; RAII to restore).
class SiteScope {
 public:
  explicit SiteScope(std::string site);
  ~SiteScope();
  SiteScope(const SiteScope&) = delete;
  SiteScope& operator=(const SiteScope&) = delete;
  static const std::string& current();
  static void set(std::string site);  // for bindings that set it once per user call

 private:
  std::string saved_;
};

}  // namespace kiln
