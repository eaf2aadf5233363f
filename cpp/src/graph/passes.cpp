// Compile-time passes over a function's slice of the graph: dead-code elimination, constant
// folding, common-subexpression elimination.
#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "kiln/error.h"
#include "runtime/program.h"

namespace kiln {

namespace {

bool is_op(const ProgramNode& n, const char* name) { return n.op->name == name; }

// Keeps the nodes reachable from the roots (and every input), renumbering edges.
void eliminate_dead(Program& p) {
  std::vector<bool> live(p.nodes.size(), false);
  for (int32_t i : p.inputs) live[i] = true;
  for (const Edge& e : p.outputs) live[e.node] = true;
  for (auto& u : p.updates) live[u.second.node] = true;
  for (int32_t id = static_cast<int32_t>(p.nodes.size()) - 1; id >= 0; --id)
    if (live[id])
      for (const Edge& e : p.nodes[id].inputs) live[e.node] = true;
  std::vector<int32_t> remap(p.nodes.size(), -1);
  std::vector<ProgramNode> kept;
  for (size_t id = 0; id < p.nodes.size(); ++id) {
    if (!live[id]) continue;
    remap[id] = static_cast<int32_t>(kept.size());
    kept.push_back(std::move(p.nodes[id]));
    for (Edge& e : kept.back().inputs) e.node = remap[e.node];
  }
  p.nodes = std::move(kept);
  for (int32_t& i : p.inputs) i = remap[i];
  for (Edge& e : p.outputs) e.node = remap[e.node];
  for (auto& u : p.updates) u.second.node = remap[u.second.node];
}

// Evaluates, once, every pure node whose inputs are all constants, or whose only non-constant
// inputs are read for a shape that is already known (ones_like of a scalar loss, say).
void fold_constants(Program& p) {
  constexpr int64_t kMaxShapeFold = 4096;  // larger fills are cheaper to run than to store
  for (ProgramNode& n : p.nodes) {
    if (n.op->kind == OpKind::source || n.op->random || n.outputs.size() != 1 || n.inputs.empty()) continue;
    bool foldable = true, by_shape = false;
    for (size_t i = 0; i < n.inputs.size() && foldable; ++i) {
      const ProgramNode& src = p.nodes[n.inputs[i].node];
      if (is_op(src, "constant")) continue;
      bool shape_only = n.op->shape_only_from >= 0 && static_cast<int>(i) >= n.op->shape_only_from;
      foldable = shape_only && src.outputs[n.inputs[i].index].shape.known();
      by_shape = true;
    }
    // Folding trades run time for a stored (and saved) constant: not for large results.
    constexpr int64_t kMaxFold = int64_t(1) << 20;
    const int64_t size = n.outputs[0].shape.numel();
    if (!foldable || size < 0 || size > kMaxFold || (by_shape && size > kMaxShapeFold)) continue;
    std::vector<Tensor> in;
    for (const Edge& e : n.inputs) {
      const ProgramNode& src = p.nodes[e.node];
      const TensorSpec& s = src.outputs[e.index];
      in.push_back(is_op(src, "constant") ? src.value : Tensor::from_storage(nullptr, s.shape, s.dtype));
    }
    Tensor v = run_op(*n.op, n.attrs, in, p.training).at(0).contiguous();
    if (n.op->kind == OpKind::alias) v = v.clone();  // own the bytes
    n.op = &OpRegistry::get().at("constant");
    n.attrs = Attrs{{"shape", v.shape().vec()}, {"dtype", std::string(dtype_name(v.dtype()))}};
    n.inputs.clear();
    n.outputs = {TensorSpec{v.dtype(), v.shape()}};
    n.value = v;
  }
}

bool same_constant(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Merges nodes that compute the same op on the same inputs (and small equal constants).
void merge_common(Program& p) {
  std::unordered_map<size_t, std::vector<int32_t>> seen;
  std::vector<int32_t> canon(p.nodes.size());
  for (size_t id = 0; id < p.nodes.size(); ++id) {
    ProgramNode& n = p.nodes[id];
    canon[id] = static_cast<int32_t>(id);
    for (Edge& e : n.inputs) e.node = canon[e.node];
    bool is_const = is_op(n, "constant");
    if ((n.op->kind == OpKind::source && !is_const) || n.op->random) continue;
    if (is_const && n.value.numel() > 64) continue;
    size_t h = std::hash<const void*>()(n.op) ^ (n.attrs.hash() * 31);
    for (const Edge& e : n.inputs) h = h * 1000003u ^ (static_cast<size_t>(e.node) << 8 | static_cast<size_t>(e.index));
    auto& bucket = seen[h];
    for (int32_t other : bucket) {
      const ProgramNode& o = p.nodes[other];
      bool same = o.op == n.op && o.attrs == n.attrs && o.inputs.size() == n.inputs.size();
      for (size_t i = 0; same && i < n.inputs.size(); ++i) same = o.inputs[i] == n.inputs[i];
      if (same && is_const) same = same_constant(o.value, n.value);
      if (same) {
        canon[id] = other;
        break;
      }
    }
    if (canon[id] == static_cast<int32_t>(id)) bucket.push_back(static_cast<int32_t>(id));
  }
  for (Edge& e : p.outputs) e.node = canon[e.node];
  for (auto& u : p.updates) u.second.node = canon[u.second.node];
}

// How many readers each output of each node has (other nodes, the function's outputs, its updates).
std::vector<std::vector<int>> count_uses(const Program& p) {
  std::vector<std::vector<int>> uses(p.nodes.size());
  for (size_t id = 0; id < p.nodes.size(); ++id) {
    uses[id].assign(p.nodes[id].outputs.size(), 0);
    for (const Edge& e : p.nodes[id].inputs) ++uses[e.node][e.index];
  }
  for (const Edge& e : p.outputs) ++uses[e.node][e.index];
  for (auto& u : p.updates) ++uses[u.second.node][u.second.index];
  return uses;
}

// Replaces, in every node that `pick` accepts (visited in order), output 0 of some node with the
// edge the pick returns for it: redirect[node] = that edge. The function's outputs and updates follow.
template <class Pick>
void fuse_into_producer(Program& p, Pick pick) {
  std::vector<Edge> redirect(p.nodes.size(), Edge{});
  for (size_t id = 0; id < p.nodes.size(); ++id) {
    for (Edge& e : p.nodes[id].inputs)
      if (redirect[e.node].valid() && e.index == 0) e = redirect[e.node];
    redirect[id] = pick(id);
  }
  for (Edge& e : p.outputs)
    if (redirect[e.node].valid() && e.index == 0) e = redirect[e.node];
  for (auto& u : p.updates)
    if (redirect[u.second.node].valid() && u.second.index == 0) u.second = redirect[u.second.node];
}

// conv -> batch_norm in an inference program, where only the normalised output is read: the
// convolution takes the four statistics as inputs (attribute bn_eps) and scales and shifts each
// filter's output as it stores it, one pass over the activations fewer (ONNX Runtime folds the
// statistics into the weights once; kiln's are variables, read on every call).
void fold_batch_norm_into_conv(Program& p) {
  if (p.training) return;  // a training step normalises by the batch's statistics
  const auto uses = count_uses(p);
  fuse_into_producer(p, [&](size_t id) {
    ProgramNode& n = p.nodes[id];
    if (!is_op(n, "batch_norm") || n.inputs.size() != 5) return Edge{};
    for (int out = 1; out < 5; ++out)
      if (uses[id][out]) return Edge{};
    const Edge in = n.inputs[0];
    ProgramNode& c = p.nodes[in.node];
    if (!is_op(c, "conv") || c.attrs.has("bn_eps") || c.attrs.i("relu", 0) || uses[in.node][0] != 1) return Edge{};
    for (int i = 1; i < 5; ++i)  // the convolution runs first: its new inputs must come before it
      if (n.inputs[i].node >= in.node) return Edge{};
    c.inputs.insert(c.inputs.end(), n.inputs.begin() + 1, n.inputs.end());
    c.attrs.set("bn_eps", n.attrs.f("eps"));
    return in;  // the batch norm's readers now read the convolution; dead-code removes the batch norm
  });
}

// add(conv output, r) in an inference program, r shaped like the output (no broadcast) and computed
// before the convolution: the convolution adds r as it stores its output (attribute residual, r its
// last input): a ResNet block's shortcut, after which its ReLU fuses too.
void fold_residual_into_conv(Program& p) {
  if (p.training) return;
  const auto uses = count_uses(p);
  fuse_into_producer(p, [&](size_t id) {
    ProgramNode& n = p.nodes[id];
    if (!is_op(n, "add") || n.inputs.size() != 2) return Edge{};
    for (int side = 0; side < 2; ++side) {
      const Edge out = n.inputs[side], other = n.inputs[1 - side];
      ProgramNode& c = p.nodes[out.node];
      if (!is_op(c, "conv") || c.attrs.i("relu", 0) || c.attrs.i("residual", 0) || uses[out.node][0] != 1) continue;
      if (other.node >= out.node) continue;  // the convolution runs first, so r must be ready by then
      // No broadcast: the same shapes, of which only the batch may be unknown (two unknown batches
      // may still differ at run time, but only as a batch of 1 added to every sample, which the
      // convolution takes too).
      const TensorSpec& r = p.nodes[other.node].outputs[other.index];
      bool known = true;
      for (int i = 1; i < r.shape.rank(); ++i) known = known && r.shape[i] >= 0;
      if (!known || !(r == c.outputs[0]) || !(n.outputs[0] == c.outputs[0])) continue;
      c.inputs.push_back(other);
      c.attrs.set("residual", int64_t{1});
      return out;  // the add's readers now read the convolution
    }
    return Edge{};
  });
}

// conv -> relu where the convolution's output feeds nothing else: the convolution applies the ReLU
// as it stores its result (one pass over the activations fewer). In a training step the output
// also feeds relu's gradient, so this fuses in inference programs.
void fuse_conv_relu(Program& p) {
  const auto uses = count_uses(p);
  fuse_into_producer(p, [&](size_t id) {
    ProgramNode& n = p.nodes[id];
    if (!is_op(n, "relu")) return Edge{};
    const Edge in = n.inputs[0];
    ProgramNode& c = p.nodes[in.node];
    if (!is_op(c, "conv") || c.attrs.i("relu", 0) || uses[in.node][0] != 1) return Edge{};
    c.attrs.set("relu", int64_t{1});
    return in;  // relu's consumers now read the convolution; dead-code removes relu
  });
}

// max_pool whose indices nothing reads (inference; or no gradient flows through it): its kernel
// skips writing them, an int64 per output (more bytes than the values).
void skip_unread_indices(Program& p) {
  const auto uses = count_uses(p);
  for (size_t id = 0; id < p.nodes.size(); ++id)
    if (is_op(p.nodes[id], "max_pool") && uses[id].size() > 1 && uses[id][1] == 0)
      p.nodes[id].attrs.set("values_only", int64_t{1});
}

// matmul(permute(a) swapping the last two axes, b) -> matmul(a, b) with transpose_a flipped (and
// so for b): the transposed operand is read in place by the GEMM instead of copied every call
// (`x @ w.T`, and imported ONNX Gemms with transB). The permute stays for its other readers.
void fold_transposes_into_matmul(Program& p) {
  auto swaps_last_two = [&](const ProgramNode& n) {
    if (!is_op(n, "permute")) return false;
    const auto& dims = n.attrs.ints("dims");
    const int r = static_cast<int>(dims.size());
    if (r < 2) return false;
    for (int i = 0; i < r; ++i) {
      const int64_t want = i < r - 2 ? i : (i == r - 2 ? r - 1 : r - 2);
      if ((dims[i] + r) % r != want) return false;
    }
    return true;
  };
  for (ProgramNode& n : p.nodes) {
    if (!is_op(n, "matmul")) continue;
    for (int k = 0; k < 2; ++k) {
      const ProgramNode& src = p.nodes[n.inputs[k].node];
      if (!swaps_last_two(src)) continue;
      const char* flag = k == 0 ? "transpose_a" : "transpose_b";
      n.attrs.set(flag, int64_t{n.attrs.i(flag, 0) ? 0 : 1});
      n.inputs[k] = src.inputs[0];
    }
  }
}

// A training function writes back the state its ops declare (batch norm's running statistics):
// the user never has to collect these updates.
void add_state_updates(Program& p) {
  const size_t n = p.nodes.size();
  for (size_t id = 0; id < n; ++id) {
    const ProgramNode& node = p.nodes[id];
    for (auto [in, out] : node.op->state_updates) {
      const ProgramNode& var = p.nodes[node.inputs.at(in).node];
      if (var.op->name != "variable") continue;  // state fed as a plain tensor: nothing to write
      for (auto& u : p.updates)
        if (u.first == var.name && p.nodes[u.second.node].op != node.op)
          throw Error("function: variable '" + var.name + "' is given an update but is also state that " +
                      describe(node) + " updates itself");
      auto it = std::find_if(p.updates.begin(), p.updates.end(), [&](const auto& u) { return u.first == var.name; });
      Edge e{static_cast<int32_t>(id), out};
      if (it == p.updates.end())
        p.updates.push_back({var.name, e});
      else
        it->second = e;  // the op applied last in the program wins
    }
  }
}

}  // namespace

std::shared_ptr<Program> build_program(const std::vector<Value>& inputs,
                                       const std::vector<std::pair<std::string, Value>>& outputs,
                                       const std::vector<std::pair<Value, Value>>& updates, bool training) {
  Graph* g = nullptr;
  auto check = [&](const Value& v, const std::string& what) {
    if (!v.valid()) throw Error("function: " + what + " is not a valid tensor");
    if (g && v.graph != g) throw Error("function: " + what + " belongs to another graph");
    g = v.graph;
  };
  for (const Value& v : inputs) check(v, "an input");
  for (auto& o : outputs) check(o.second, "output '" + o.first + "'");
  for (auto& u : updates) {
    check(u.first, "an updated variable");
    check(u.second, "an update value");
  }
  if (!g) throw Error("function: needs at least one input or output");
  if (!training && !updates.empty())
    throw Error("function: updates were given with training=False; an inference function never writes state");

  auto p = std::make_shared<Program>();
  p->variables = g->variables();
  p->training = training;
  // Copy the graph prefix that the roots can reach; the passes then shrink it.
  int32_t top = -1;
  for (const Value& v : inputs) top = std::max(top, v.edge.node);
  for (auto& o : outputs) top = std::max(top, o.second.edge.node);
  for (auto& u : updates) top = std::max(top, u.second.edge.node);
  for (int32_t id = 0; id <= top; ++id) {
    const Node& n = g->node(id);
    ProgramNode pn{n.op, n.attrs, n.inputs, n.outputs, n.name, n.site, {}};
    if (n.op->name == "constant") pn.value = g->constant_value(id);
    p->nodes.push_back(std::move(pn));
  }
  std::vector<std::string> seen_inputs;
  for (const Value& v : inputs) {
    const Node& n = v.node();
    if (n.op->name != "input")
      throw Error("function: inputs must be kn.input tensors; got the result of '" + n.op->name + "'" +
                  (n.site.empty() ? "" : " made at " + n.site));
    if (std::find(seen_inputs.begin(), seen_inputs.end(), n.name) != seen_inputs.end())
      throw Error("function: input '" + n.name + "' is listed twice");
    seen_inputs.push_back(n.name);
    p->inputs.push_back(v.edge.node);
    p->input_names.push_back(n.name);
  }
  for (auto& o : outputs) {
    if (std::find(p->output_names.begin(), p->output_names.end(), o.first) != p->output_names.end())
      throw Error("function: two outputs are named '" + o.first + "'");
    p->output_names.push_back(o.first);
    p->outputs.push_back(o.second.edge);
  }
  for (auto& [var, val] : updates) {
    const Node& vn = var.node();
    if (vn.op->name != "variable") throw Error("function: an update targets '" + vn.op->name + "', not a variable");
    if (val.dtype() != var.dtype())
      throw Error("function: the update of '" + vn.name + "' has dtype " + dtype_name(val.dtype()) + ", the variable " +
                  dtype_name(var.dtype()));
    for (auto& u : p->updates)
      if (u.first == vn.name) throw Error("function: variable '" + vn.name + "' is given two updates");
    p->updates.push_back({vn.name, val.edge});
  }
  eliminate_dead(*p);
  if (training) add_state_updates(*p);
  // Every input source the outputs need must be fed.
  for (size_t id = 0; id < p->nodes.size(); ++id) {
    const ProgramNode& n = p->nodes[id];
    if (n.op->name == "input" &&
        std::find(p->inputs.begin(), p->inputs.end(), static_cast<int32_t>(id)) == p->inputs.end())
      throw Error("function: the outputs depend on input '" + n.name + "', which is not among the function's inputs");
  }
  fold_constants(*p);
  merge_common(*p);
  fold_batch_norm_into_conv(*p);
  eliminate_dead(*p);  // the folded nodes, which still read the convolutions
  fold_residual_into_conv(*p);
  eliminate_dead(*p);
  fuse_conv_relu(*p);
  fold_transposes_into_matmul(*p);
  eliminate_dead(*p);
  skip_unread_indices(*p);
  return p;
}

std::string describe(const ProgramNode& n) {
  return n.op->name + (n.site.empty() ? "" : " (created at " + n.site + ")");
}

}  // namespace kiln
