// Elementwise ops: unary math, binary arithmetic and comparisons with numpy broadcasting,
// where, clip, cast. Each op: functor (the kernel body), inference, and VJP, side by side.
#include <cmath>

#include "cpu/broadcast.h"
#include "ops/common.h"
#include "ops/half.h"
#include "ops/math.h"

namespace kiln {
using namespace ops;
using cpu::map_binary;
using cpu::map_unary;
using namespace math;

namespace {

struct CpuMap {
  template <class TI, class TO, class F>
  static void unary(const Tensor& x, Tensor& y, F f) {
    map_unary<TI, TO>(x, y, f);
  }
  template <class TI, class TO, class F>
  static void binary(const Tensor& a, const Tensor& b, Tensor& z, F f) {
    map_binary<TI, TO>(a, b, z, f);
  }
};
template <class F, Types types>
constexpr KernelFn unary_kernel = unary_dispatch<CpuMap, F, types>;
template <class F, Types types, bool to_bool>
constexpr KernelFn binary_kernel = binary_dispatch<CpuMap, F, types, to_bool>;

// ---- inference ----

std::vector<TensorSpec> infer_binary(const std::vector<TensorSpec>& in, const std::string& op, bool to_bool) {
  if (in[0].dtype != in[1].dtype)
    throw Error(op + ": operands have dtypes " + dtype_name(in[0].dtype) + " and " + dtype_name(in[1].dtype) +
                " (kiln.ops promotes them; the raw op does not)");
  Shape s = broadcast_shapes(in[0].shape, in[1].shape, op.c_str());
  return {TensorSpec{to_bool ? DType::bool_ : in[0].dtype, s}};
}

void add_unary(OpRegistry& r, const std::string& name, KernelFn k, VjpFn vjp) {
  OpDef d;
  d.name = name;
  d.infer = same_as_input;
  d.cpu = k;
  d.elementwise = true;
  if (vjp)
    d.vjp = std::move(vjp);
  else
    d.differentiable = false;
  r.add(std::move(d));
}

void add_binary(OpRegistry& r, const std::string& name, KernelFn k, VjpFn vjp, bool to_bool) {
  OpDef d;
  d.name = name;
  d.num_inputs = 2;
  d.infer = [name, to_bool](const std::vector<TensorSpec>& in, const Attrs&) {
    return infer_binary(in, name, to_bool);
  };
  d.cpu = k;
  d.elementwise = !to_bool;
  if (vjp)
    d.vjp = std::move(vjp);
  else
    d.differentiable = false;
  r.add(std::move(d));
}

// Gradient of a broadcasting binary op: reduce each contribution to its input's shape.
std::vector<Value> to_inputs(const VjpContext& c, Value ga, Value gb) {
  return {ga.valid() ? sum_to_like(ga, c.inputs[0]) : ga, gb.valid() ? sum_to_like(gb, c.inputs[1]) : gb};
}

// ---- where, clip, cast kernels ----

void where_kernel(const KernelContext& c) {
  const Tensor &cond = c.input(0), &a = c.input(1), &b = c.input(2);
  Tensor& out = c.output(0);
  const Shape* shapes[3] = {&cond.shape(), &a.shape(), &b.shape()};
  cpu::Broadcast<3> bc(out.shape(), shapes);
  const bool* cp = cond.data<bool>();
  KILN_DISPATCH_ALL(out.dtype(), "where", {
    const scalar_t* ap = a.data<scalar_t>();
    const scalar_t* bp = b.data<scalar_t>();
    scalar_t* op = out.data<scalar_t>();
    const int64_t inner = bc.inner();
    const int64_t s0 = bc.strides[0][bc.rank - 1], s1 = bc.strides[1][bc.rank - 1], s2 = bc.strides[2][bc.rank - 1];
    cpu::parallel_for(bc.rows(), inner >= cpu::kGrain ? 1 : cpu::kGrain / (inner ? inner : 1),
                      [&](int64_t r0, int64_t r1) {
                        int64_t off[3];
                        for (int64_t r = r0; r < r1; ++r) {
                          bc.row_offsets(r, off);
                          scalar_t* o = op + r * inner;
                          for (int64_t i = 0; i < inner; ++i)
                            o[i] = cp[off[0] + i * s0] ? ap[off[1] + i * s1] : bp[off[2] + i * s2];
                        }
                      });
  });
}

void clip_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const double lo = c.attrs.f("min", -INFINITY), hi = c.attrs.f("max", INFINITY);
  KILN_DISPATCH_NUMERIC(x.dtype(), "clip", {
    const scalar_t l = std::isinf(lo) ? std::numeric_limits<scalar_t>::lowest() : scalar_t(lo);
    const scalar_t h = std::isinf(hi) ? std::numeric_limits<scalar_t>::max() : scalar_t(hi);
    map_unary<scalar_t, scalar_t>(x, y, [l, h](scalar_t v) { return v < l ? l : (v > h ? h : v); });
  });
}

void cast_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  KILN_DISPATCH_ALL_AND_HALF(x.dtype(), "cast", {
    using in_t = scalar_t;
    KILN_DISPATCH_ALL_AND_HALF(y.dtype(), "cast", {
      map_unary<in_t, scalar_t>(x, y, [](in_t v) {
        if constexpr (std::is_same_v<scalar_t, bool>)
          return v != in_t(0);
        else
          return static_cast<scalar_t>(v);
      });
    });
  });
}

}  // namespace

void register_elementwise_ops(OpRegistry& r) {
  using C = const VjpContext&;
  auto g0 = [](C c) { return c.grads[0]; };
  auto x0 = [](C c) { return c.inputs[0]; };
  auto y0 = [](C c) { return c.outputs[0]; };

  add_unary(r, "neg", unary_kernel<Neg, Types::numeric>, [=](C c) { return std::vector<Value>{neg(g0(c))}; });
  add_unary(r, "abs", unary_kernel<Abs, Types::numeric>,
            [=](C c) { return std::vector<Value>{mul(g0(c), unary("sign", x0(c)))}; });
  add_unary(r, "sign", unary_kernel<Sign, Types::numeric>, [](C) { return std::vector<Value>{Value{}}; });
  add_unary(r, "square", unary_kernel<Square, Types::numeric>,
            [=](C c) { return std::vector<Value>{mul(g0(c), mul(x0(c), constant_like(2.0, x0(c))))}; });
  add_unary(r, "exp", unary_kernel<Exp, Types::floats>, [=](C c) { return std::vector<Value>{mul(g0(c), y0(c))}; });
  add_unary(r, "log", unary_kernel<Log, Types::floats>, [=](C c) { return std::vector<Value>{div(g0(c), x0(c))}; });
  add_unary(r, "sqrt", unary_kernel<Sqrt, Types::floats>,
            [=](C c) { return std::vector<Value>{div(mul(g0(c), constant_like(0.5, y0(c))), y0(c))}; });
  add_unary(r, "rsqrt", unary_kernel<Rsqrt, Types::floats>, [=](C c) {  // d x^-1/2 = -y^3 / 2
    Value y = y0(c);
    return std::vector<Value>{mul(g0(c), mul(constant_like(-0.5, y), mul(y, mul(y, y))))};
  });
  add_unary(r, "sigmoid", unary_kernel<Sigmoid, Types::floats>, [=](C c) {
    Value y = y0(c);
    return std::vector<Value>{mul(g0(c), mul(y, sub(constant_like(1.0, y), y)))};
  });
  add_unary(r, "tanh", unary_kernel<Tanh, Types::floats>, [=](C c) {
    Value y = y0(c);
    return std::vector<Value>{mul(g0(c), sub(constant_like(1.0, y), mul(y, y)))};
  });
  add_unary(r, "relu", unary_kernel<Relu, Types::numeric>, [=](C c) {
    return std::vector<Value>{c.graph.apply1("relu_grad", {g0(c), x0(c)})};
  });
  add_unary(r, "floor", unary_kernel<Floor, Types::floats>, [](C) { return std::vector<Value>{Value{}}; });
  add_unary(r, "cos", unary_kernel<Cos, Types::floats>,
            [=](C c) { return std::vector<Value>{neg(mul(g0(c), unary("sin", x0(c))))}; });
  add_unary(r, "sin", unary_kernel<Sin, Types::floats>,
            [=](C c) { return std::vector<Value>{mul(g0(c), unary("cos", x0(c)))}; });
  add_unary(r, "erf", unary_kernel<Erf, Types::floats>, [=](C c) {  // d erf(x) = 2 / sqrt(pi) exp(-x^2)
    Value x = x0(c);
    return std::vector<Value>{
        mul(g0(c), mul(constant_like(1.1283791670955126, x), unary("exp", neg(unary("square", x)))))};
  });
  add_unary(r, "logical_not", unary_kernel<LogicalNot, Types::boolean>, nullptr);

  add_binary(
      r, "add", binary_kernel<Add, Types::numeric, false>, [](C c) { return to_inputs(c, c.grads[0], c.grads[0]); },
      false);
  add_binary(
      r, "sub", binary_kernel<Sub, Types::numeric, false>,
      [](C c) { return to_inputs(c, c.grads[0], neg(c.grads[0])); }, false);
  add_binary(
      r, "mul", binary_kernel<Mul, Types::numeric, false>,
      [](C c) { return to_inputs(c, mul(c.grads[0], c.inputs[1]), mul(c.grads[0], c.inputs[0])); }, false);
  add_binary(
      r, "div", binary_kernel<Div, Types::numeric, false>,
      [](C c) {
        Value ga = div(c.grads[0], c.inputs[1]);
        return to_inputs(c, ga, neg(mul(ga, c.outputs[0])));  // d(a/b)/db = -(a/b)/b
      },
      false);
  add_binary(
      r, "pow", binary_kernel<Pow, Types::numeric, false>,
      [](C c) {
        Value a = c.inputs[0], b = c.inputs[1], g = c.grads[0];
        Value ga = mul(g, mul(b, binary("pow", a, sub(b, constant_like(1.0, b)))));
        Value gb = mul(g, mul(c.outputs[0], unary("log", a)));
        return to_inputs(c, ga, gb);
      },
      false);
  add_binary(
      r, "maximum", binary_kernel<Maximum, Types::numeric, false>,
      [](C c) {
        Value pick_a = binary("ge", c.inputs[0], c.inputs[1]), z = zeros_like(c.grads[0]);
        return to_inputs(c, where(pick_a, c.grads[0], z), where(pick_a, z, c.grads[0]));
      },
      false);
  add_binary(
      r, "minimum", binary_kernel<Minimum, Types::numeric, false>,
      [](C c) {
        Value pick_a = binary("le", c.inputs[0], c.inputs[1]), z = zeros_like(c.grads[0]);
        return to_inputs(c, where(pick_a, c.grads[0], z), where(pick_a, z, c.grads[0]));
      },
      false);
  add_binary(r, "eq", binary_kernel<Eq, Types::numeric, true>, nullptr, true);
  add_binary(r, "ne", binary_kernel<Ne, Types::numeric, true>, nullptr, true);
  add_binary(r, "lt", binary_kernel<Lt, Types::numeric, true>, nullptr, true);
  add_binary(r, "le", binary_kernel<Le, Types::numeric, true>, nullptr, true);
  add_binary(r, "gt", binary_kernel<Gt, Types::numeric, true>, nullptr, true);
  add_binary(r, "ge", binary_kernel<Ge, Types::numeric, true>, nullptr, true);
  add_binary(r, "logical_and", binary_kernel<And, Types::boolean, false>, nullptr, false);
  add_binary(r, "logical_or", binary_kernel<Or, Types::boolean, false>, nullptr, false);
  add_binary(r, "logical_xor", binary_kernel<Xor, Types::boolean, false>, nullptr, false);

  OpDef rg;  // relu's gradient in one pass: g where x > 0, else 0
  rg.name = "relu_grad";
  rg.num_inputs = 2;
  rg.infer = [](const std::vector<TensorSpec>& in, const Attrs&) {
    if (!(in[0] == in[1])) throw Error("gradient and input differ: " + specs_str(in));
    return std::vector<TensorSpec>{in[0]};
  };
  rg.cpu = binary_kernel<ReluGrad, Types::numeric, false>;
  rg.elementwise = true;
  rg.vjp = [](C c) { return std::vector<Value>{c.graph.apply1("relu_grad", {c.grads[0], c.inputs[1]}), Value{}}; };
  r.add(std::move(rg));

  OpDef w;
  w.name = "where";
  w.num_inputs = 3;
  w.infer = [](const std::vector<TensorSpec>& in, const Attrs&) {
    if (in[0].dtype != DType::bool_) throw Error("condition must be bool, got " + std::string(dtype_name(in[0].dtype)));
    if (in[1].dtype != in[2].dtype)
      throw Error("branches have dtypes " + std::string(dtype_name(in[1].dtype)) + " and " + dtype_name(in[2].dtype));
    Shape s = broadcast_shapes(broadcast_shapes(in[0].shape, in[1].shape, "where"), in[2].shape, "where");
    return std::vector<TensorSpec>{{in[1].dtype, s}};
  };
  w.cpu = where_kernel;
  w.vjp = [](C c) {
    Value z = zeros_like(c.grads[0]);
    return std::vector<Value>{Value{}, sum_to_like(where(c.inputs[0], c.grads[0], z), c.inputs[1]),
                              sum_to_like(where(c.inputs[0], z, c.grads[0]), c.inputs[2])};
  };
  r.add(std::move(w));

  OpDef cl;
  cl.name = "clip";
  cl.attrs = {{"min"}, {"max"}};
  cl.infer = same_as_input;
  cl.cpu = clip_kernel;
  cl.elementwise = true;
  cl.vjp = [](C c) {
    Value x = c.inputs[0];
    Value inside = binary("ge", x, x);  // true unless NaN
    if (c.attrs().has("min"))
      inside = binary("logical_and", inside, binary("ge", x, constant_like(c.attrs().f("min"), x)));
    if (c.attrs().has("max"))
      inside = binary("logical_and", inside, binary("le", x, constant_like(c.attrs().f("max"), x)));
    return std::vector<Value>{where(inside, c.grads[0], zeros_like(c.grads[0]))};
  };
  r.add(std::move(cl));

  OpDef ct;
  ct.name = "cast";
  ct.attrs = {{"dtype", true}};
  ct.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
    return std::vector<TensorSpec>{{dtype_from_name(a.s("dtype")), in[0].shape}};
  };
  ct.cpu = cast_kernel;
  ct.vjp = [](C c) {
    DType from = c.inputs[0].dtype();
    if (!is_floating(from)) return std::vector<Value>{Value{}};
    return std::vector<Value>{cast(c.grads[0], from)};
  };
  r.add(std::move(ct));

  OpDef sg;
  sg.name = "stop_gradient";
  sg.infer = same_as_input;
  sg.cpu = alias_kernel;
  sg.kind = OpKind::alias;
  sg.vjp = [](C) { return std::vector<Value>{Value{}}; };  // differentiable, with zero gradient
  r.add(std::move(sg));
}

}  // namespace kiln
