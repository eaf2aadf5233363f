// Activations beyond the elementwise basics: leaky_relu, elu, selu, gelu (exact and tanh),
// softplus. Parameterised by attributes; gradients written with primitives where they are
// simple, with a kernel (gelu_grad) where they are not.
#include <cmath>

#include "cpu/broadcast.h"
#include "ops/common.h"
#include "ops/math.h"

namespace kiln {
using namespace ops;
using namespace math;

namespace {

template <class F>
void act_kernel(const KernelContext& c) {
  const F f(c.attrs);
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "activation",
                      cpu::map_unary<scalar_t, scalar_t>(c.input(0), c.output(0), [&f](scalar_t v) { return f(v); }));
}

void gelu_grad_kernel(const KernelContext& c) {  // inputs: g, x
  const Gelu f(c.attrs);
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "gelu_grad",
                      cpu::map_binary<scalar_t, scalar_t>(c.input(0), c.input(1), c.output(0),
                                                          [&f](scalar_t g, scalar_t x) { return g * f.grad(x); }));
}

void add_act(OpRegistry& r, const std::string& name, std::vector<AttrSpec> attrs, KernelFn k, VjpFn vjp) {
  OpDef d;
  d.name = name;
  d.attrs = std::move(attrs);
  d.infer = [name](const std::vector<TensorSpec>& in, const Attrs&) {
    if (!is_floating(in[0].dtype)) throw Error("expects a float tensor, got " + std::string(dtype_name(in[0].dtype)));
    return std::vector<TensorSpec>{in[0]};
  };
  d.cpu = k;
  d.elementwise = true;
  d.vjp = std::move(vjp);
  r.add(std::move(d));
}

Value positive(const Value& x) { return binary("gt", x, constant_like(0.0, x)); }

}  // namespace

void register_activation_ops(OpRegistry& r) {
  using C = const VjpContext&;
  using V = std::vector<Value>;
  add_act(r, "leaky_relu", {{"negative_slope"}}, act_kernel<LeakyRelu>, [](C c) {
    Value g = c.grads[0];
    return V{where(positive(c.inputs[0]), g, mul(g, constant_like(c.attrs().f("negative_slope", 0.01), g)))};
  });
  add_act(r, "elu", {{"alpha"}}, act_kernel<Elu>, [](C c) {  // below 0: y + alpha
    Value g = c.grads[0], y = c.outputs[0];
    return V{where(positive(c.inputs[0]), g, mul(g, add(y, constant_like(c.attrs().f("alpha", 1.0), y))))};
  });
  add_act(r, "selu", {}, act_kernel<Selu>, [](C c) {  // below 0: y + scale * alpha
    Value g = c.grads[0], y = c.outputs[0];
    return V{where(positive(c.inputs[0]), mul(g, constant_like(kSeluScale, g)),
                   mul(g, add(y, constant_like(kSeluScale * kSeluAlpha, y))))};
  });
  add_act(r, "softplus", {{"beta"}, {"threshold"}}, act_kernel<Softplus>, [](C c) {
    Value x = c.inputs[0], g = c.grads[0];
    Value bx = mul(x, constant_like(c.attrs().f("beta", 1.0), x));
    Value linear = binary("gt", bx, constant_like(c.attrs().f("threshold", 20.0), bx));  // y = x there
    return V{where(linear, g, mul(g, unary("sigmoid", bx)))};
  });
  add_act(r, "gelu", {{"approximate", true}}, act_kernel<Gelu>, [](C c) {
    return V{c.graph.apply1("gelu_grad", {c.grads[0], c.inputs[0]}, c.attrs())};
  });

  OpDef gg;
  gg.name = "gelu_grad";
  gg.attrs = {{"approximate", true}};
  gg.num_inputs = 2;
  gg.infer = [](const std::vector<TensorSpec>& in, const Attrs&) {  // (gy, x)
    if (!is_floating(in[1].dtype)) throw Error("expects a float input, got " + in[1].str());
    require_like(in[0], in[1], "the gradient");
    return std::vector<TensorSpec>{in[0]};
  };
  gg.cpu = gelu_grad_kernel;
  gg.differentiable = false;  // gelu's second derivative is not provided
  r.add(std::move(gg));
}

}  // namespace kiln
