#include "kiln/autodiff.h"

#include <map>

#include "kiln/error.h"
#include "kiln/op.h"
#include "kiln/ops.h"

namespace kiln {

std::vector<Value> grad(const Value& y, const std::vector<Value>& wrt, const Value& grad_output) {
  if (!y.valid()) throw Error("grad: y is not a valid tensor");
  Graph& g = *y.graph;
  const std::string where = y.node().site.empty() ? "" : "\n  at " + y.node().site;
  if (!is_floating(y.dtype()))
    throw Error("grad: y has dtype " + std::string(dtype_name(y.dtype())) +
                "; only floating-point tensors have gradients" + where);
  for (const Value& w : wrt) {
    if (w.graph != &g) throw Error("grad: a tensor in wrt belongs to another graph");
    if (!is_floating(w.dtype()))
      throw Error("grad: cannot differentiate with respect to a tensor of dtype " + std::string(dtype_name(w.dtype())) +
                  " (" + w.node().op->name + " " + w.shape().str() + "); gradients exist for float32 and float64 only");
  }
  Value seed;
  if (grad_output.valid()) {
    if (grad_output.graph != &g) throw Error("grad: grad_output belongs to another graph");
    Shape gs = grad_output.shape(), ys = y.shape();
    bool ok = gs.rank() == ys.rank();
    for (int i = 0; ok && i < gs.rank(); ++i) ok = gs[i] < 0 || ys[i] < 0 || gs[i] == ys[i];
    if (!ok) throw Error("grad: grad_output has shape " + gs.str() + " but y has shape " + ys.str());
    seed = ops::cast(grad_output, y.dtype());
  } else {
    if (y.shape().numel() != 1)
      throw Error("grad: y has shape " + y.shape().str() + "; pass grad_output to differentiate a non-scalar" + where);
    seed = ops::ones_like(y);
  }

  // Nodes that depend on some wrt: only they can carry gradient from y back to wrt.
  std::vector<bool> depends(g.size(), false);
  for (const Value& w : wrt) depends[w.edge.node] = true;
  const int32_t top = y.edge.node;
  for (int32_t id = 0; id <= top; ++id) {
    if (depends[id]) continue;
    for (const Edge& e : g.node(id).inputs)
      if (depends[e.node]) {
        depends[id] = true;
        break;
      }
  }

  std::map<Edge, Value> grads;  // gradient accumulated for each edge
  auto accumulate = [&](const Edge& e, const Value& v) {
    auto it = grads.find(e);
    if (it == grads.end())
      grads.emplace(e, v);
    else
      it->second = ops::add(it->second, v);
  };
  accumulate(y.edge, seed);

  for (int32_t id = top; id >= 0; --id) {
    if (!depends[id]) continue;
    const Node node = g.node(id);  // a copy: VJP rules append to the graph's node list
    bool any = false;
    VjpContext ctx{g, node, {}, {}, {}, {}};
    for (int32_t k = 0; k < static_cast<int32_t>(node.outputs.size()); ++k) {
      auto it = grads.find(Edge{id, k});
      ctx.grads.push_back(it == grads.end() ? Value{} : it->second);
      ctx.outputs.push_back(Value{&g, Edge{id, k}});
      any = any || it != grads.end();
    }
    if (!any || !node.op->differentiable || node.op->kind == OpKind::source) continue;
    for (const Edge& e : node.inputs) {
      ctx.inputs.push_back(Value{&g, e});
      ctx.needs_grad.push_back(depends[e.node]);
    }
    // A single-output rule may assume its output gradient exists; multi-output rules handle gaps.
    SiteScope site(node.site);
    std::vector<Value> in_grads = node.op->vjp(ctx);
    for (size_t i = 0; i < node.inputs.size() && i < in_grads.size(); ++i) {
      const Edge& e = node.inputs[i];
      if (!in_grads[i].valid() || !depends[e.node] || !is_floating(g.node(e.node).outputs[e.index].dtype)) continue;
      accumulate(e, ops::cast(in_grads[i], g.node(e.node).outputs[e.index].dtype));
    }
  }

  std::vector<Value> out;
  for (const Value& w : wrt) {
    auto it = grads.find(w.edge);
    out.push_back(it != grads.end() ? it->second : ops::zeros_like(w));
  }
  return out;
}

}  // namespace kiln
