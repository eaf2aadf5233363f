// kiln::ops: the graph-building functions. They resolve user conveniences (promotion, negative
// axes, 1-d matmul, None axes) into the registry's primitive ops, and write composite ops
// (var, logsumexp, softmax, ...) in terms of primitives.
#include <random>

#include "ops/common.h"

namespace kiln::ops {

namespace {

Graph& graph_of(const Value& v) {
  if (!v.valid()) throw Error("an operand is not a valid tensor");
  return *v.graph;
}

std::vector<int64_t> all_axes(int rank) {
  std::vector<int64_t> a(rank);
  for (int i = 0; i < rank; ++i) a[i] = i;
  return a;
}

std::vector<int64_t> resolve_axes(const Axes& axes, int rank, const char* op) {
  return axes ? sorted_axes(*axes, rank, op) : all_axes(rank);
}

std::string dname(DType t) { return dtype_name(t); }

}  // namespace

Value constant_like(double value, const Value& like) {
  return graph_of(like).constant(Tensor::scalar(value, like.dtype()));
}

Value cast(const Value& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return graph_of(x).apply1("cast", {x}, {{"dtype", dname(dtype)}});
}

Value stop_gradient(const Value& x) { return graph_of(x).apply1("stop_gradient", {x}); }

Value binary(const std::string& op_name, Value a, Value b) {
  Graph& g = graph_of(a);
  if (b.graph != a.graph) throw Error(op_name + ": operands belong to different graphs");
  std::string op = op_name;
  if (a.dtype() == DType::bool_ && b.dtype() == DType::bool_) {  // numpy: bool arithmetic is logic
    if (op == "add" || op == "maximum") op = "logical_or";
    if (op == "mul" || op == "minimum") op = "logical_and";
  }
  if (op == "logical_and" || op == "logical_or" || op == "logical_xor") {
    a = cast(a, DType::bool_);
    b = cast(b, DType::bool_);
  } else {
    DType t = promote(a.dtype(), b.dtype());
    if (op == "div" && !is_floating(t)) t = DType::float32;  // true division, as Python's /
    a = cast(a, t);
    b = cast(b, t);
  }
  return g.apply1(op, {a, b});
}

Value unary(const std::string& op, const Value& x) {
  static const char* float_only[] = {"exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "floor", "cos", "sin"};
  Value v = x;
  if (op == "logical_not") v = cast(v, DType::bool_);
  for (const char* f : float_only)
    if (op == f && !is_floating(v.dtype())) v = cast(v, DType::float32);
  return graph_of(x).apply1(op, {v});
}

Value add(const Value& a, const Value& b) { return binary("add", a, b); }
Value sub(const Value& a, const Value& b) { return binary("sub", a, b); }
Value mul(const Value& a, const Value& b) { return binary("mul", a, b); }
Value div(const Value& a, const Value& b) { return binary("div", a, b); }
Value neg(const Value& x) { return unary("neg", x); }

Value where(const Value& cond, Value a, Value b) {
  DType t = promote(a.dtype(), b.dtype());
  return graph_of(cond).apply1("where", {cast(cond, DType::bool_), cast(a, t), cast(b, t)});
}

Value clip(const Value& x, std::optional<double> lo, std::optional<double> hi) {
  Attrs a;
  if (lo) a.set("min", *lo);
  if (hi) a.set("max", *hi);
  return graph_of(x).apply1("clip", {x}, a);
}

// ---- reductions ----

Value reduce(const std::string& op, const Value& x, const Axes& axes, bool keepdims) {
  Value v = x;
  if ((op == "sum" || op == "prod") && is_integral(v.dtype())) v = cast(v, DType::int64);  // numpy
  if (op == "mean" && !is_floating(v.dtype())) v = cast(v, DType::float64);
  if ((op == "max" || op == "min") && v.dtype() == DType::bool_) v = cast(v, DType::uint8);
  return graph_of(x).apply1(op, {v},
                            {{"axes", resolve_axes(axes, x.rank(), op.c_str())}, {"keepdims", int64_t(keepdims)}});
}
Value sum(const Value& x, const Axes& axes, bool keepdims) { return reduce("sum", x, axes, keepdims); }
Value mean(const Value& x, const Axes& axes, bool keepdims) { return reduce("mean", x, axes, keepdims); }

Value count(const Value& x, const std::vector<int64_t>& axes, DType dtype) {
  return graph_of(x).apply1("count", {x}, {{"axes", sorted_axes(axes, x.rank(), "count")}, {"dtype", dname(dtype)}});
}

Value var(const Value& x, const Axes& axes, bool keepdims, int64_t ddof) {
  Value xf = is_floating(x.dtype()) ? x : cast(x, DType::float64);
  std::vector<int64_t> ax = resolve_axes(axes, x.rank(), "var");
  Value centered = sub(xf, mean(xf, ax, true));
  Value ss = sum(unary("square", centered), ax, keepdims);
  Value n = count(xf, ax, xf.dtype());
  if (ddof) n = sub(n, constant_like(static_cast<double>(ddof), n));
  return div(ss, n);
}

Value std_(const Value& x, const Axes& axes, bool keepdims, int64_t ddof) {
  return unary("sqrt", var(x, axes, keepdims, ddof));
}

Value logsumexp(const Value& x, const Axes& axes, bool keepdims) {
  Value xf = is_floating(x.dtype()) ? x : cast(x, DType::float32);
  std::vector<int64_t> ax = resolve_axes(axes, x.rank(), "logsumexp");
  // Shift by the max for stability; the shift is a constant as far as gradients go. An
  // all -inf slice would give nan - nan: the where keeps its max at 0 instead.
  Value m = stop_gradient(reduce("max", xf, ax, true));
  m = where(binary("lt", unary("abs", m), constant_like(INFINITY, m)), m, zeros_like(m));
  Value s = unary("log", sum(unary("exp", sub(xf, m)), ax, true));
  Value out = add(s, m);
  return keepdims ? out : squeeze(out, ax);
}

Value softmax(const Value& x, int64_t axis) { return unary("exp", log_softmax(x, axis)); }

Value log_softmax(const Value& x, int64_t axis) { return sub(x, logsumexp(x, std::vector<int64_t>{axis}, true)); }

// argmax/argmin along one axis; with none, of the flattened x (keepdims: all dims kept as 1).
static Value arg_reduce(const char* op, const Value& x, std::optional<int64_t> axis, bool keepdims) {
  Graph& g = graph_of(x);
  if (axis)
    return g.apply1(op, {x}, {{"axis", int64_t(normalize_axis(*axis, x.rank(), op))}, {"keepdims", int64_t(keepdims)}});
  Value flat = g.apply1(op, {reshape(x, {-1})}, {{"axis", int64_t(0)}, {"keepdims", int64_t(0)}});
  return keepdims ? reshape(flat, std::vector<int64_t>(x.rank(), 1)) : flat;
}
Value argmax(const Value& x, std::optional<int64_t> axis, bool keepdims) {
  return arg_reduce("argmax", x, axis, keepdims);
}
Value argmin(const Value& x, std::optional<int64_t> axis, bool keepdims) {
  return arg_reduce("argmin", x, axis, keepdims);
}
std::vector<Value> topk(const Value& x, int64_t k, int64_t axis, bool largest) {
  if (x.rank() == 0) throw Error("topk: expects a tensor of at least one dimension, got a scalar");
  return graph_of(x).apply(
      "topk", {x},
      {{"k", k}, {"axis", int64_t(normalize_axis(axis, x.rank(), "topk"))}, {"largest", int64_t(largest)}});
}

// ---- linear algebra ----

Value matmul(Value a, Value b, bool transpose_a, bool transpose_b) {
  Graph& g = graph_of(a);
  if (a.rank() == 0 || b.rank() == 0)
    throw Error("matmul: operands must have at least one dimension, got shapes " + a.shape().str() + " and " +
                b.shape().str());
  DType t = promote(a.dtype(), b.dtype());
  a = cast(a, t);
  b = cast(b, t);
  const bool a_vec = a.rank() == 1, b_vec = b.rank() == 1;  // numpy's 1-d rules
  if (a_vec) a = unsqueeze(a, 0);
  if (b_vec) b = unsqueeze(b, -1);
  Value out =
      g.apply1("matmul", {a, b}, {{"transpose_a", int64_t(transpose_a)}, {"transpose_b", int64_t(transpose_b)}});
  if (a_vec) out = squeeze(out, std::vector<int64_t>{-2});
  if (b_vec) out = squeeze(out, std::vector<int64_t>{-1});
  return out;
}

Value permute(const Value& x, std::vector<int64_t> dims) {
  if (static_cast<int>(dims.size()) != x.rank())
    throw Error("permute: dims " + Shape(dims).str() + " do not match the rank of " + x.shape().str());
  for (auto& d : dims) d = normalize_axis(d, x.rank(), "permute");
  return graph_of(x).apply1("permute", {x}, {{"dims", dims}});
}

Value transpose(const Value& x, int64_t dim0, int64_t dim1) {
  std::vector<int64_t> dims = all_axes(x.rank());
  std::swap(dims.at(normalize_axis(dim0, x.rank(), "transpose")), dims.at(normalize_axis(dim1, x.rank(), "transpose")));
  return permute(x, dims);
}

// ---- shape ----

Value reshape(const Value& x, const std::vector<int64_t>& shape) {
  return graph_of(x).apply1("reshape", {x}, {{"shape", shape}});
}
Value flatten(const Value& x, int64_t start_dim, int64_t end_dim) {
  return graph_of(x).apply1("flatten", {x}, {{"start_dim", start_dim}, {"end_dim", end_dim}});
}
Value squeeze(const Value& x, const Axes& axes) {
  std::vector<int64_t> ax;
  if (axes) {
    ax = sorted_axes(*axes, x.rank(), "squeeze");
  } else {
    for (int i = 0; i < x.rank(); ++i)
      if (x.shape()[i] == 1) ax.push_back(i);
  }
  return graph_of(x).apply1("squeeze", {x}, {{"axes", ax}});
}
Value unsqueeze(const Value& x, int64_t axis) {
  return graph_of(x).apply1("unsqueeze", {x}, {{"axis", int64_t(normalize_axis(axis, x.rank() + 1, "unsqueeze"))}});
}
Value broadcast_to(const Value& x, const std::vector<int64_t>& shape) {
  return graph_of(x).apply1("broadcast_to", {x}, {{"shape", shape}});
}
Value broadcast_like(const Value& x, const Value& like) {
  if (x.shape() == like.shape() && x.shape().known()) return x;
  return graph_of(x).apply1("broadcast_like", {x, like});
}
Value sum_to_like(const Value& x, const Value& like) {
  if (x.shape() == like.shape() && x.shape().known()) return x;
  return graph_of(x).apply1("sum_to_like", {x, like});
}
Value reshape_like(const Value& x, const Value& like) {
  if (x.shape() == like.shape() && x.shape().known()) return x;
  return graph_of(x).apply1("reshape_like", {x, like});
}
Value zeros_like(const Value& x) { return graph_of(x).apply1("full_like", {x}, {{"value", 0.0}}); }
Value ones_like(const Value& x) { return graph_of(x).apply1("full_like", {x}, {{"value", 1.0}}); }

static std::vector<Value> promoted(const std::vector<Value>& xs, const char* op) {
  if (xs.empty()) throw Error(std::string(op) + ": needs at least one tensor");
  DType t = xs[0].dtype();
  for (const Value& v : xs) t = promote(t, v.dtype());
  std::vector<Value> out;
  for (const Value& v : xs) out.push_back(cast(v, t));
  return out;
}

Value concat(const std::vector<Value>& xs, int64_t axis) {
  auto ys = promoted(xs, "concat");
  if (ys.size() == 1) return ys[0];
  return graph_of(ys[0]).apply1("concat", ys, {{"axis", int64_t(normalize_axis(axis, ys[0].rank(), "concat"))}});
}

Value stack(const std::vector<Value>& xs, int64_t axis) {
  auto ys = promoted(xs, "stack");
  const Shape first = ys[0].shape();
  const int64_t at = normalize_axis(axis, first.rank() + 1, "stack");
  for (auto& y : ys) {
    if (y.shape() != first)
      throw Error("stack: all tensors need the same shape, got " + first.str() + " and " + y.shape().str());
    y = unsqueeze(y, at);
  }
  return concat(ys, at);
}

std::vector<Value> split(const Value& x, const std::vector<int64_t>& sizes, int64_t axis) {
  return graph_of(x).apply("split", {x},
                           {{"sizes", sizes}, {"axis", int64_t(normalize_axis(axis, x.rank(), "split"))}});
}

std::vector<Value> split_like(const Value& x, const std::vector<Value>& likes, int64_t axis) {
  std::vector<Value> in{x};
  in.insert(in.end(), likes.begin(), likes.end());
  return graph_of(x).apply("split_like", in, {{"axis", axis}});
}

Value slice(const Value& x, const std::vector<int64_t>& starts, const std::vector<int64_t>& stops,
            const std::vector<int64_t>& steps) {
  return graph_of(x).apply1("slice", {x}, {{"starts", starts}, {"stops", stops}, {"steps", steps}});
}

Value pad(const Value& x, const std::vector<int64_t>& pads, double value) {
  return graph_of(x).apply1("pad", {x}, {{"pads", pads}, {"value", value}});
}

// ---- indexing ----

Value take(const Value& x, const Value& indices, int64_t axis) {
  return graph_of(x).apply1("take", {x, indices}, {{"axis", int64_t(normalize_axis(axis, x.rank(), "take"))}});
}
Value gather(const Value& x, const Value& indices, int64_t axis) {
  return graph_of(x).apply1("gather", {x, indices}, {{"axis", int64_t(normalize_axis(axis, x.rank(), "gather"))}});
}
Value one_hot(const Value& indices, int64_t num_classes, DType dtype) {
  return graph_of(indices).apply1("one_hot", {indices}, {{"num_classes", num_classes}, {"dtype", dname(dtype)}});
}

// ---- random ----

static int64_t resolve_seed(int64_t seed) {
  if (seed >= 0) return seed;
  static std::random_device rd;
  return static_cast<int64_t>((uint64_t(rd()) << 31) ^ rd());
}

static Value draw(Graph& g, const char* op, const char* a_name, double a, const char* b_name, double b,
                  const Shape& shape, int64_t seed, DType dtype, const Value& like) {
  if (!like.valid() && !shape.known())
    throw Error(std::string(op) + ": the shape " + shape.str() +
                " must be fully known (or pass a tensor to take it from)");
  std::vector<Value> in;
  if (like.valid()) in.push_back(like);
  return g.apply1(
      op, in,
      {{"shape", shape.vec()}, {"dtype", dname(dtype)}, {"seed", resolve_seed(seed)}, {a_name, a}, {b_name, b}});
}

Value uniform(Graph& g, const Shape& shape, double low, double high, int64_t seed, DType dtype, const Value& like) {
  return draw(g, "uniform", "low", low, "high", high, shape, seed, dtype, like);
}
Value normal(Graph& g, const Shape& shape, double mean, double std, int64_t seed, DType dtype, const Value& like) {
  if (std < 0) throw Error("normal: std must be non-negative, got " + std::to_string(std));
  return draw(g, "normal", "mean", mean, "std", std, shape, seed, dtype, like);
}
Value bernoulli(Graph& g, double p, const Shape& shape, int64_t seed, DType dtype, const Value& like) {
  if (!(p >= 0 && p <= 1)) throw Error("bernoulli: p must be in [0, 1], got " + std::to_string(p));
  Value u = uniform(g, shape, 0.0, 1.0, seed, DType::float32, like);
  return cast(binary("lt", u, constant_like(p, u)), dtype);
}

}  // namespace kiln::ops
