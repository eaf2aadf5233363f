// Optimizer steps, one fused op per parameter: the new parameter and new slots in one pass over
// memory, with PyTorch's update rules. Inputs are (param, grad, slots..., lr, step); `lr` is a
// scalar tensor (so learning-rate schedules are graph computations) and `step` the 1-based step
// number after this update, as a scalar of the parameter's dtype.
#include <algorithm>
#include <cmath>

#include "cpu/parallel.h"
#include "ops/common.h"

// The outputs may be the inputs (updates write the variables in place), but only element i
// ever touches element i: tell the compiler so, or it will not vectorize the loops.
#if defined(__GNUC__) && !defined(__clang__)
#define KILN_NO_ALIAS_ACROSS_ELEMENTS _Pragma("GCC ivdep")
#elif defined(__clang__)
#define KILN_NO_ALIAS_ACROSS_ELEMENTS _Pragma("clang loop vectorize(assume_safety)")
#else
#define KILN_NO_ALIAS_ACROSS_ELEMENTS
#endif

namespace kiln {

namespace {

using Specs = std::vector<TensorSpec>;

template <class T>
T scalar_in(const KernelContext& c, int i) {
  return c.input(i).data<T>()[0];
}

// SGD: inputs param, grad, momentum_buffer, lr, step; outputs param, momentum_buffer.
void sgd_kernel(const KernelContext& c) {
  const double momentum = c.attrs.f("momentum", 0), dampening = c.attrs.f("dampening", 0),
               wd = c.attrs.f("weight_decay", 0);
  const bool nesterov = c.attrs.i("nesterov", 0);
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "sgd_update", {
    using T = scalar_t;
    const T *p = c.input(0).data<T>(), *g = c.input(1).data<T>(), *buf = c.input(2).data<T>();
    const T lr = scalar_in<T>(c, 3);
    const bool first = scalar_in<T>(c, 4) <= T(1);
    T *np = c.output(0).data<T>(), *nb = c.output(1).data<T>();
    cpu::parallel_for(c.input(0).numel(), 1 << 14, [&](int64_t b, int64_t e) {
      KILN_NO_ALIAS_ACROSS_ELEMENTS
      for (int64_t i = b; i < e; ++i) {
        T d = g[i] + T(wd) * p[i];
        if (momentum != 0) {
          T v = first ? d : T(momentum) * buf[i] + T(1 - dampening) * d;  // torch: the first step copies
          nb[i] = v;
          d = nesterov ? d + T(momentum) * v : v;
        } else {
          nb[i] = buf[i];
        }
        np[i] = p[i] - lr * d;
      }
    });
  });
}

// Adam / AdamW: inputs param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, step;
// outputs param, exp_avg, exp_avg_sq, max_exp_avg_sq (untouched without amsgrad).
template <class T, bool amsgrad, bool decoupled>
void adam_loop(const KernelContext& c, double b1, double b2, double eps, double wd) {
  const T *p = c.input(0).data<T>(), *g = c.input(1).data<T>(), *m = c.input(2).data<T>(), *v = c.input(3).data<T>(),
          *vmax = c.input(4).data<T>();
  const T lr = scalar_in<T>(c, 5);
  const double t = scalar_in<T>(c, 6);
  const T step_size = T(lr / (1 - std::pow(b1, t))), inv_bc2_sqrt = T(1 / std::sqrt(1 - std::pow(b2, t)));
  const T decay = T(1 - lr * wd), l2 = T(wd), B1 = T(b1), B2 = T(b2), E = T(eps);
  T *np = c.output(0).data<T>(), *nm = c.output(1).data<T>(), *nv = c.output(2).data<T>(),
    *nvmax = c.output(3).data<T>();
  cpu::parallel_for(c.input(0).numel(), 1 << 14, [&](int64_t b, int64_t e) {
    KILN_NO_ALIAS_ACROSS_ELEMENTS
    for (int64_t i = b; i < e; ++i) {
      T pi = p[i], gi = g[i];
      if constexpr (decoupled)
        pi *= decay;  // AdamW
      else
        gi += l2 * pi;  // Adam's L2 penalty
      T mi = B1 * m[i] + (T(1) - B1) * gi;
      T vi = B2 * v[i] + (T(1) - B2) * gi * gi;
      T vhat = vi;
      if constexpr (amsgrad) vhat = nvmax[i] = vmax[i] > vi ? vmax[i] : vi;
      np[i] = pi - step_size * mi / (std::sqrt(vhat) * inv_bc2_sqrt + E);
      nm[i] = mi;
      nv[i] = vi;
    }
  });
  if constexpr (!amsgrad)
    if (nvmax != vmax) std::copy(vmax, vmax + c.input(4).numel(), nvmax);
}

void adam_kernel(const KernelContext& c) {
  const double b1 = c.attrs.f("beta1"), b2 = c.attrs.f("beta2"), eps = c.attrs.f("eps"),
               wd = c.attrs.f("weight_decay", 0);
  const bool amsgrad = c.attrs.i("amsgrad", 0), decoupled = c.attrs.i("decoupled", 0);
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "adam_update", {
    if (amsgrad && decoupled)
      adam_loop<scalar_t, true, true>(c, b1, b2, eps, wd);
    else if (amsgrad)
      adam_loop<scalar_t, true, false>(c, b1, b2, eps, wd);
    else if (decoupled)
      adam_loop<scalar_t, false, true>(c, b1, b2, eps, wd);
    else
      adam_loop<scalar_t, false, false>(c, b1, b2, eps, wd);
  });
}

// Adagrad: inputs param, grad, sum, lr, step; outputs param, sum.
void adagrad_kernel(const KernelContext& c) {
  const double lr_decay = c.attrs.f("lr_decay", 0), wd = c.attrs.f("weight_decay", 0), eps = c.attrs.f("eps");
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "adagrad_update", {
    using T = scalar_t;
    const T *p = c.input(0).data<T>(), *g = c.input(1).data<T>(), *s = c.input(2).data<T>();
    const double t = scalar_in<T>(c, 4);
    const T clr = T(scalar_in<T>(c, 3) / (1 + (t - 1) * lr_decay));
    T *np = c.output(0).data<T>(), *ns = c.output(1).data<T>();
    cpu::parallel_for(c.input(0).numel(), 1 << 14, [&](int64_t b, int64_t e) {
      KILN_NO_ALIAS_ACROSS_ELEMENTS
      for (int64_t i = b; i < e; ++i) {
        T gi = g[i] + T(wd) * p[i];
        T si = s[i] + gi * gi;
        ns[i] = si;
        np[i] = p[i] - clr * gi / (std::sqrt(si) + T(eps));
      }
    });
  });
}

// RMSprop: inputs param, grad, square_avg, momentum_buffer, grad_avg, lr, step;
// outputs param, square_avg, momentum_buffer, grad_avg.
void rmsprop_kernel(const KernelContext& c) {
  const double alpha = c.attrs.f("alpha"), eps = c.attrs.f("eps"), wd = c.attrs.f("weight_decay", 0),
               momentum = c.attrs.f("momentum", 0);
  const bool centered = c.attrs.i("centered", 0);
  KILN_DISPATCH_FLOAT(c.input(0).dtype(), "rmsprop_update", {
    using T = scalar_t;
    const T *p = c.input(0).data<T>(), *g = c.input(1).data<T>(), *sq = c.input(2).data<T>(),
            *buf = c.input(3).data<T>(), *ga = c.input(4).data<T>();
    const T lr = scalar_in<T>(c, 5);
    T *np = c.output(0).data<T>(), *nsq = c.output(1).data<T>(), *nbuf = c.output(2).data<T>(),
      *nga = c.output(3).data<T>();
    cpu::parallel_for(c.input(0).numel(), 1 << 14, [&](int64_t b, int64_t e) {
      KILN_NO_ALIAS_ACROSS_ELEMENTS
      for (int64_t i = b; i < e; ++i) {
        T gi = g[i] + T(wd) * p[i];
        T s = T(alpha) * sq[i] + T(1 - alpha) * gi * gi;
        nsq[i] = s;
        T avg = s;
        if (centered) {
          T a = T(alpha) * ga[i] + T(1 - alpha) * gi;
          nga[i] = a;
          avg = s - a * a;
        } else {
          nga[i] = ga[i];
        }
        T denom = std::sqrt(avg) + T(eps);
        if (momentum > 0) {
          T bi = T(momentum) * buf[i] + gi / denom;
          nbuf[i] = bi;
          np[i] = p[i] - lr * bi;
        } else {
          nbuf[i] = buf[i];
          np[i] = p[i] - lr * gi / denom;
        }
      }
    });
  });
}

void add_update(OpRegistry& r, const std::string& name, std::vector<AttrSpec> attrs, int slots, KernelFn k) {
  OpDef d;
  d.name = name;
  d.attrs = std::move(attrs);
  d.num_inputs = 2 + slots + 2;
  d.infer = [name, slots](const Specs& in, const Attrs&) {
    const TensorSpec& p = in[0];
    if (!is_floating(p.dtype)) throw Error("parameters must be float, got " + p.str());
    for (int i = 1; i < 2 + slots; ++i)
      if (!(in[i] == p))
        throw Error("gradient and slots must match the parameter " + p.str() + ", got " + specs_str(in));
    for (int i = 2 + slots; i < 4 + slots; ++i)
      if (in[i].dtype != p.dtype || in[i].shape.numel() != 1)
        throw Error("lr and step must be one-element " + std::string(dtype_name(p.dtype)) + " tensors, got " +
                    in[i].str());
    return Specs(1 + slots, p);
  };
  d.cpu = k;
  d.elementwise = true;  // element i of every output depends on element i of the inputs only
  d.differentiable = false;
  r.add(std::move(d));
}

}  // namespace

void register_optim_ops(OpRegistry& r) {
  add_update(r, "sgd_update", {{"momentum"}, {"dampening"}, {"nesterov"}, {"weight_decay"}}, 1, sgd_kernel);
  add_update(r, "adam_update",
             {{"beta1", true}, {"beta2", true}, {"eps", true}, {"weight_decay"}, {"amsgrad"}, {"decoupled"}}, 3,
             adam_kernel);
  add_update(r, "adagrad_update", {{"lr_decay"}, {"weight_decay"}, {"eps", true}}, 1, adagrad_kernel);
  add_update(r, "rmsprop_update", {{"alpha", true}, {"eps", true}, {"weight_decay"}, {"momentum"}, {"centered"}}, 3,
             rmsprop_kernel);
}

}  // namespace kiln
