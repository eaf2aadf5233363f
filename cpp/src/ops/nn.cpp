// Neural-network ops with fused kernels: dropout (mode-dependent), batch norm (mode-dependent,
// with running statistics as state), softmax cross-entropy (stable, with label smoothing, class
// weights and ignore_index).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/random.h"
#include "ops/common.h"

namespace kiln {
using namespace ops;

namespace {

using Specs = std::vector<TensorSpec>;
using C = const VjpContext&;

void require_float(const TensorSpec& s, const char* what) {
  if (!is_floating(s.dtype)) throw Error(std::string(what) + " must be float32 or float64, got " + dtype_name(s.dtype));
}

// ---- dropout: inverted dropout in training mode, the identity in inference mode ----

void dropout_kernel(const KernelContext& c) {  // also the gradient: the same mask, regenerated
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const double p = c.attrs.f("p");
  if (!c.training || p == 0.0) {
    y.copy_from(x);
    return;
  }
  const uint64_t key = cpu::stream_key(c.attrs.i("seed"), c.call_counter);
  KILN_DISPATCH_FLOAT(x.dtype(), "dropout", {
    const scalar_t* in = x.data<scalar_t>();
    scalar_t* out = y.data<scalar_t>();
    const scalar_t scale = p >= 1.0 ? scalar_t(0) : scalar_t(1.0 / (1.0 - p));
    cpu::parallel_for(x.numel(), 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        out[i] = cpu::unit_double(cpu::random_bits(key, i)) < p ? scalar_t(0) : in[i] * scale;
    });
  });
}

// ---- batch norm over axis 1 of (N, C, ...) ----

// sum of f(x[i], y[i]) (or of f(x[i])) over a row, in 8 independent lanes so that the loop vectorizes; the row's
// partial sum is returned in double (rows are short enough for float lanes to stay accurate).
template <class T, class F>
double lanes2(const T* x, const T* y, int64_t n, F f) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += f(x[i + j], y[i + j]);
  double s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  for (; i < n; ++i) s += f(x[i], y[i]);
  return s;
}
template <class T, class F>
double lanes(const T* x, int64_t n, F f) {
  return lanes2(x, x, n, [&f](T v, T) { return f(v); });
}

struct ChannelLayout {
  int64_t n, c, s;  // batch, channels, spatial size
};
ChannelLayout channels(const Shape& x) {
  ChannelLayout l{x[0], x.rank() > 1 ? x[1] : 1, 1};
  for (int i = 2; i < x.rank(); ++i) l.s *= x[i];
  return l;
}

// inputs: x, gamma, beta, running_mean, running_var
// outputs: y, new running_mean, new running_var, mean used, 1/sqrt(var used + eps)
void batch_norm_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const ChannelLayout l = channels(x.shape());
  const double eps = c.attrs.f("eps"), momentum = c.attrs.f("momentum");
  const int64_t m = l.n * l.s;
  if (c.training && m <= 1)
    throw Error("batch_norm: training needs more than one value per channel, got input of shape " + x.shape().str());
  KILN_DISPATCH_FLOAT(x.dtype(), "batch_norm", {
    using T = scalar_t;
    const T *in = x.data<T>(), *gamma = c.input(1).data<T>(), *beta = c.input(2).data<T>();
    const T *rm = c.input(3).data<T>(), *rv = c.input(4).data<T>();
    T *y = c.output(0).data<T>(), *nrm = c.output(1).data<T>(), *nrv = c.output(2).data<T>();
    T *mean_out = c.output(3).data<T>(), *invstd_out = c.output(4).data<T>();
    cpu::parallel_for(l.c, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        double mean, var;
        if (c.training) {
          double sum = 0, sq = 0;
          for (int64_t n = 0; n < l.n; ++n) sum += lanes(in + (n * l.c + ch) * l.s, l.s, [](T v) { return v; });
          mean = sum / m;
          const T tm = T(mean);
          for (int64_t n = 0; n < l.n; ++n)
            sq += lanes(in + (n * l.c + ch) * l.s, l.s, [tm](T v) { return (v - tm) * (v - tm); });
          var = sq / m;
          nrm[ch] = T((1 - momentum) * rm[ch] + momentum * mean);
          nrv[ch] = T((1 - momentum) * rv[ch] + momentum * var * m / (m - 1));  // unbiased, as torch
        } else {
          mean = rm[ch];
          var = rv[ch];
          nrm[ch] = rm[ch];
          nrv[ch] = rv[ch];
        }
        const double invstd = 1.0 / std::sqrt(var + eps);
        mean_out[ch] = T(mean);
        invstd_out[ch] = T(invstd);
        const T a = T(gamma[ch] * invstd), b = T(beta[ch] - mean * gamma[ch] * invstd);
        for (int64_t n = 0; n < l.n; ++n) {
          const T* row = in + (n * l.c + ch) * l.s;
          T* out = y + (n * l.c + ch) * l.s;
          for (int64_t k = 0; k < l.s; ++k) out[k] = row[k] * a + b;
        }
      }
    });
  });
}

// inputs: g, x, gamma, mean, invstd; outputs: dx, dgamma, dbeta
void batch_norm_grad_kernel(const KernelContext& c) {
  const Tensor& x = c.input(1);
  const ChannelLayout l = channels(x.shape());
  const int64_t m = l.n * l.s;
  KILN_DISPATCH_FLOAT(x.dtype(), "batch_norm_grad", {
    using T = scalar_t;
    const T *g = c.input(0).data<T>(), *in = x.data<T>(), *gamma = c.input(2).data<T>();
    const T *mean = c.input(3).data<T>(), *invstd = c.input(4).data<T>();
    T *dx = c.output(0).data<T>(), *dgamma = c.output(1).data<T>(), *dbeta = c.output(2).data<T>();
    cpu::parallel_for(l.c, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        double sg = 0, sgx = 0;  // sum(g), sum(g * xhat)
        const T mu = mean[ch];
        for (int64_t n = 0; n < l.n; ++n) {
          const T* gr = g + (n * l.c + ch) * l.s;
          const T* xr = in + (n * l.c + ch) * l.s;
          sg += lanes(gr, l.s, [](T v) { return v; });
          sgx += lanes2(gr, xr, l.s, [mu](T a, T b) { return a * (b - mu); }) * invstd[ch];
        }
        dgamma[ch] = T(sgx);
        dbeta[ch] = T(sg);
        const double scale = gamma[ch] * invstd[ch];
        for (int64_t n = 0; n < l.n; ++n) {
          const T* gr = g + (n * l.c + ch) * l.s;
          const T* xr = in + (n * l.c + ch) * l.s;
          T* d = dx + (n * l.c + ch) * l.s;
          if (c.training) {  // the batch statistics depend on x too
            const T sc = T(scale), mg = T(sg / m), mgx = T(sgx / m), is = invstd[ch];
            for (int64_t k = 0; k < l.s; ++k) d[k] = sc * (gr[k] - mg - (xr[k] - mu) * is * mgx);
          } else {
            const T sc = T(scale);
            for (int64_t k = 0; k < l.s; ++k) d[k] = sc * gr[k];
          }
        }
      }
    });
  });
}

// ---- softmax cross-entropy over the last axis of (N, C) logits ----

struct CeArgs {
  int64_t n, c, ignore;
  double smoothing;
};
CeArgs ce_args(const KernelContext& ctx, const Tensor& logits) {
  return {logits.shape()[0], logits.shape()[1], ctx.attrs.i("ignore_index", -100), ctx.attrs.f("label_smoothing", 0.0)};
}

int64_t label_at(const Tensor& labels, int64_t i) {
  return labels.dtype() == DType::int32 ? labels.data<int32_t>()[i] : labels.data<int64_t>()[i];
}

// inputs: logits, labels[, weight]; outputs: per-sample loss, per-sample weight (0 if ignored)
void ce_kernel(const KernelContext& ctx) {
  const Tensor& z = ctx.input(0);
  const Tensor& labels = ctx.input(1);
  const CeArgs a = ce_args(ctx, z);
  KILN_DISPATCH_FLOAT(z.dtype(), "softmax_cross_entropy", {
    using T = scalar_t;
    const T* w = ctx.n_in > 2 ? ctx.input(2).data<T>() : nullptr;
    T *loss = ctx.output(0).data<T>(), *wout = ctx.output(1).data<T>();
    for (int64_t i = 0; i < a.n; ++i) {  // labels are checked first, outside the parallel loop
      int64_t y = label_at(labels, i);
      if (y != a.ignore && (y < 0 || y >= a.c))
        throw Error("softmax_cross_entropy: label " + std::to_string(y) + " of sample " + std::to_string(i) +
                    " is outside [0, " + std::to_string(a.c) + ")");
    }
    cpu::parallel_for(a.n, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, a.c)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* row = z.data<T>() + i * a.c;
        int64_t y = label_at(labels, i);
        if (y == a.ignore) {
          loss[i] = wout[i] = T(0);
          continue;
        }
        double mx = row[0];
        for (int64_t j = 1; j < a.c; ++j) mx = std::max<double>(mx, row[j]);
        double s = 0;
        for (int64_t j = 0; j < a.c; ++j) s += std::exp(row[j] - mx);
        const double lse = mx + std::log(s);
        const double wy = w ? w[y] : 1.0;
        double l = wy * (lse - row[y]);
        if (a.smoothing > 0) {
          double smooth = 0;
          for (int64_t j = 0; j < a.c; ++j) smooth += (w ? w[j] : 1.0) * (lse - row[j]);
          l = (1 - a.smoothing) * l + a.smoothing / a.c * smooth;
        }
        loss[i] = T(l);
        wout[i] = T(wy);
      }
    });
  });
}

// inputs: g (N,), logits, labels[, weight]; output: d logits
void ce_grad_kernel(const KernelContext& ctx) {
  const Tensor& z = ctx.input(1);
  const Tensor& labels = ctx.input(2);
  const CeArgs a = ce_args(ctx, z);
  KILN_DISPATCH_FLOAT(z.dtype(), "softmax_cross_entropy_grad", {
    using T = scalar_t;
    const T* w = ctx.n_in > 3 ? ctx.input(3).data<T>() : nullptr;
    const T* g = ctx.input(0).data<T>();
    double wsum = a.c;
    if (w) {
      wsum = 0;
      for (int64_t j = 0; j < a.c; ++j) wsum += w[j];
    }
    T* dz = ctx.output(0).data<T>();
    cpu::parallel_for(a.n, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, a.c)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* row = z.data<T>() + i * a.c;
        T* d = dz + i * a.c;
        int64_t y = label_at(labels, i);
        if (y == a.ignore) {
          for (int64_t j = 0; j < a.c; ++j) d[j] = T(0);
          continue;
        }
        double mx = row[0];
        for (int64_t j = 1; j < a.c; ++j) mx = std::max<double>(mx, row[j]);
        double s = 0;
        for (int64_t j = 0; j < a.c; ++j) s += std::exp(row[j] - mx);
        const double wy = w ? w[y] : 1.0, gi = g[i], hard = wy * (1 - a.smoothing), soft = a.smoothing / a.c;
        for (int64_t j = 0; j < a.c; ++j) {
          double p = std::exp(row[j] - mx) / s;
          double dj = hard * (p - (j == y)) + soft * (p * wsum - (w ? w[j] : 1.0));
          d[j] = T(gi * dj);
        }
      }
    });
  });
}

}  // namespace

void register_nn_ops(OpRegistry& r) {
  for (const char* name : {"dropout", "dropout_grad"}) {
    OpDef d;
    d.name = name;
    d.attrs = {{"p", true}, {"seed", true}};
    d.infer = [](const Specs& in, const Attrs& a) {
      require_float(in[0], "dropout input");
      double p = a.f("p");
      if (!(p >= 0 && p <= 1)) throw Error("dropout probability must be in [0, 1], got " + std::to_string(p));
      return Specs{in[0]};
    };
    d.cpu = dropout_kernel;
    d.random = true;  // two dropouts with equal inputs are still different draws
    d.vjp = [](C c) { return std::vector<Value>{c.graph.apply1("dropout_grad", {c.grads[0]}, c.attrs())}; };
    r.add(std::move(d));
  }

  OpDef bn;
  bn.name = "batch_norm";
  bn.attrs = {{"eps", true}, {"momentum", true}};
  bn.num_inputs = 5;
  bn.state_updates = {{3, 1}, {4, 2}};
  bn.infer = [](const Specs& in, const Attrs&) {
    const Shape& x = in[0].shape;
    require_float(in[0], "batch_norm input");
    if (x.rank() < 2) throw Error("batch_norm expects (N, C, ...) input, got " + x.str());
    for (int i = 1; i < 5; ++i) {
      if (in[i].dtype != in[0].dtype || in[i].shape.rank() != 1 || !dims_compatible(in[i].shape[0], x[1]))
        throw Error("batch_norm: parameters and running statistics must be " + std::string(dtype_name(in[0].dtype)) +
                    " vectors of the " + std::to_string(x[1]) + " channels of " + x.str() + ", got " + specs_str(in));
    }
    TensorSpec v{in[0].dtype, Shape{x[1]}};
    return Specs{in[0], v, v, v, v};
  };
  bn.cpu = batch_norm_kernel;
  bn.vjp = [](C c) {
    if (!c.grads[0].valid()) return std::vector<Value>(5);  // only the statistics were used
    auto g = c.graph.apply("batch_norm_grad", {c.grads[0], c.inputs[0], c.inputs[1], c.outputs[3], c.outputs[4]});
    return std::vector<Value>{g[0], g[1], g[2], Value{}, Value{}};
  };
  r.add(std::move(bn));

  OpDef bg;
  bg.name = "batch_norm_grad";
  bg.num_inputs = 5;
  bg.infer = [](const Specs& in, const Attrs&) {  // (gy, x, gamma, saved mean, saved inverse std)
    require_float(in[1], "input");
    if (in[1].shape.rank() < 2) throw Error("expects an (N, C, ...) input, got " + in[1].str());
    require_like(in[0], in[1], "the output gradient");
    const TensorSpec vec{in[1].dtype, Shape{in[1].shape[1]}};
    for (int i = 2; i < 5; ++i) require_like(in[i], vec, "the scale and the saved statistics");
    return Specs{in[1], in[2], in[2]};
  };
  bg.cpu = batch_norm_grad_kernel;
  bg.differentiable = false;  // no second derivative through batch norm
  r.add(std::move(bg));

  OpDef ce;
  ce.name = "softmax_cross_entropy";
  ce.attrs = {{"ignore_index"}, {"label_smoothing"}};
  ce.num_inputs = -1;  // logits, labels[, class weights]
  ce.infer = [](const Specs& in, const Attrs& a) {
    if (in.size() < 2 || in.size() > 3) throw Error("expects logits, labels and optional class weights");
    const Shape &z = in[0].shape, &y = in[1].shape;
    require_float(in[0], "logits");
    if (in[1].dtype != DType::int64 && in[1].dtype != DType::int32)
      throw Error("labels must be int64 or int32 class indices, got " + std::string(dtype_name(in[1].dtype)));
    if (z.rank() != 2 || y.rank() != 1 || !dims_compatible(z[0], y[0]))
      throw Error("expects logits (N, C) and labels (N,), got " + z.str() + " and " + y.str());
    if (in.size() == 3 &&
        (in[2].shape.rank() != 1 || !dims_compatible(in[2].shape[0], z[1]) || in[2].dtype != in[0].dtype))
      throw Error("class weights must be a " + std::string(dtype_name(in[0].dtype)) + " vector of the " +
                  std::to_string(z[1]) + " classes, got " + in[2].str());
    double s = a.f("label_smoothing", 0.0);
    if (!(s >= 0 && s <= 1)) throw Error("label_smoothing must be in [0, 1], got " + std::to_string(s));
    TensorSpec per{in[0].dtype, Shape{z[0]}};
    return Specs{per, per};
  };
  ce.cpu = ce_kernel;
  ce.vjp = [](C c) {
    if (c.inputs.size() > 2 && c.needs_grad[2])  // as torch: not silently zero
      throw Error("softmax_cross_entropy: the gradient with respect to the class weights is not implemented" +
                  (c.node.site.empty() ? std::string() : "\n  at " + c.node.site));
    if (!c.grads[0].valid()) return std::vector<Value>(c.inputs.size());
    std::vector<Value> in{c.grads[0], c.inputs[0], c.inputs[1]};
    if (c.inputs.size() > 2) in.push_back(c.inputs[2]);
    std::vector<Value> out{c.graph.apply1("softmax_cross_entropy_grad", in, c.attrs()), Value{}};
    out.resize(c.inputs.size());
    return out;
  };
  r.add(std::move(ce));

  OpDef cg;
  cg.name = "softmax_cross_entropy_grad";
  cg.attrs = {{"ignore_index"}, {"label_smoothing"}};
  cg.num_inputs = -1;
  cg.infer = [](const Specs& in, const Attrs& a) {  // (gy, logits, labels[, class weights])
    if (in.size() < 3 || in.size() > 4) throw Error("expects the gradient, logits, labels and optional weights");
    const Specs fwd = forward_specs("softmax_cross_entropy", Specs(in.begin() + 1, in.end()), a);
    require_like(in[0], fwd[0], "the gradient of the per-sample losses");
    return Specs{in[1]};
  };
  cg.cpu = ce_grad_kernel;
  cg.differentiable = false;  // no second derivative through the fused loss
  r.add(std::move(cg));
}

}  // namespace kiln
