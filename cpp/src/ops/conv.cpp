// Convolution in 1, 2 or 3 spatial dimensions (one code path: lower ranks are 3-D with size-1
// dims), as torch.nn.functional: NC[D][H]W input, (K, C/groups, kernel...) weights, stride,
// padding (begin and end per dim), dilation, groups. Forward, input gradient (also the forward of
// the transposed convolution) and weight gradient are packed im2col + one BLAS GEMM per group over
// a chunk of the batch, the chunk sized to a bounded workspace.
#include <cstring>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "ops/common.h"

namespace kiln {
using namespace ops;

namespace {

using Specs = std::vector<TensorSpec>;
using C = const VjpContext&;

constexpr int64_t kWorkspaceElems = int64_t(1) << 23;  // 8M elements: 32 MiB of float32

// The geometry of a convolution seen from its "conv" side: `in` is the conv's input (the
// output of a transposed convolution), `out` its output.
struct Geom {
  int sp = 0;
  int64_t n = 0, c = 0, k = 0, groups = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, ker[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0}, dil[3] = {1, 1, 1};
  int64_t I() const { return in[0] * in[1] * in[2]; }
  int64_t P() const { return out[0] * out[1] * out[2]; }
  int64_t kk() const { return ker[0] * ker[1] * ker[2]; }
  int64_t cg() const { return c / groups; }
  int64_t kg() const { return k / groups; }
  int64_t ckk() const { return cg() * kk(); }
  // Samples per chunk, so that the column buffer and a (kg, chunk) GEMM buffer fit the budget.
  // Samples per chunk: as many as the workspace budget allows (bigger GEMMs run faster).
  int64_t chunk() const {
    return std::max<int64_t>(1, std::min<int64_t>(n, kWorkspaceElems / std::max<int64_t>(1, (ckk() + kg()) * P())));
  }
  size_t workspace(size_t elem) const { return static_cast<size_t>((ckk() + kg()) * P() * chunk()) * elem; }
};

const std::vector<int64_t>& ints_of(const Attrs& a, const char* name, int sp, const char* op) {
  const auto& v = a.ints(name);
  if (static_cast<int>(v.size()) != sp)
    throw Error(std::string(op) + ": " + name + " needs " + std::to_string(sp) + " values, got " +
                std::to_string(v.size()));
  return v;
}

int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t pb, int64_t pe, int64_t d) {
  return (in + pb + pe - d * (k - 1) - 1) / s + 1;
}

// Reads the attributes and the conv-side shapes: x_shape is the conv input, w_shape (K, C/g, ...).
Geom make_geom(const Shape& x, const Shape& w, const Attrs& a, const char* op, const Shape* out_shape = nullptr) {
  Geom g;
  g.sp = x.rank() - 2;
  if (g.sp < 1 || g.sp > 3)
    throw Error(std::string(op) + ": expects a 3-, 4- or 5-d input (N, C, ...), got " + x.str());
  if (w.rank() != x.rank())
    throw Error(std::string(op) + ": weight " + w.str() + " must have the input's rank " + std::to_string(x.rank()));
  g.n = x[0];
  g.c = x[1];
  g.k = w[0];
  g.groups = a.i("groups", 1);
  const auto &st = ints_of(a, "stride", g.sp, op), &pb = ints_of(a, "pad_begin", g.sp, op),
             &pe = ints_of(a, "pad_end", g.sp, op), &dl = ints_of(a, "dilation", g.sp, op);
  if (g.groups < 1 || (g.c >= 0 && g.c % g.groups) || g.k % g.groups)
    throw Error(std::string(op) + ": " + std::to_string(g.c) + " input and " + std::to_string(g.k) +
                " output channels must both be divisible by groups=" + std::to_string(g.groups));
  if (g.c >= 0 && w[1] * g.groups != g.c)
    throw Error(std::string(op) + ": weight " + w.str() + " expects " + std::to_string(w[1] * g.groups) +
                " input channels (groups=" + std::to_string(g.groups) + "), the input " + x.str() + " has " +
                std::to_string(g.c));
  for (int i = 0; i < g.sp; ++i) {
    int j = 3 - g.sp + i;
    g.in[j] = x[2 + i];
    g.ker[j] = w[2 + i];
    g.stride[j] = st[i];
    g.pad[j] = pb[i];
    g.dil[j] = dl[i];
    if (st[i] < 1 || dl[i] < 1 || pb[i] < 0 || pe[i] < 0)
      throw Error(std::string(op) + ": stride and dilation must be >= 1 and padding >= 0");
    if (out_shape) {
      g.out[j] = (*out_shape)[2 + i];
    } else if (g.in[j] >= 0) {
      int64_t span = dl[i] * (w[2 + i] - 1) + 1;
      if (g.in[j] + pb[i] + pe[i] < span)
        throw Error(std::string(op) + ": kernel " + w.str() + " (dilated extent " + std::to_string(span) +
                    ") is larger than the padded input " + x.str() + " along spatial dim " + std::to_string(i));
      g.out[j] = conv_out_size(g.in[j], w[2 + i], st[i], pb[i], pe[i], dl[i]);
    } else {
      g.out[j] = kUnknownDim;
    }
  }
  return g;
}

Shape out_shape_of(const Geom& g, int64_t n, int64_t channels) {
  Shape s{n, channels};
  for (int i = 0; i < g.sp; ++i) s.push_back(g.out[3 - g.sp + i]);
  return s;
}

// The output indices o in [lo, hi) for which o * stride + off lands inside [0, size).
inline void valid_range(int64_t off, int64_t stride, int64_t size, int64_t n_out, int64_t* lo, int64_t* hi) {
  int64_t l = off >= 0 ? 0 : (-off + stride - 1) / stride;
  int64_t h = size - off > 0 ? (size - off + stride - 1) / stride : 0;
  *lo = std::min(l, n_out);
  *hi = std::max(*lo, std::min(h, n_out));
}

// col[r, j] for r = (c, a, b, e) of group `grp` and j = (sample, od, oh, ow) of a chunk. The
// valid output ranges depend only on the kernel offset, so each row computes them once.
template <class T>
void im2col(const T* x, const Geom& g, int64_t grp, int64_t nb, T* col) {
  const int64_t kk = g.kk(), P = g.P(), I = g.I(), W = g.in[2], OW = g.out[2], OH = g.out[1];
  cpu::parallel_for(g.ckk(), 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = grp * g.cg() + r / kk, rem = r % kk;
      const int64_t a = rem / (g.ker[1] * g.ker[2]), b = (rem / g.ker[2]) % g.ker[1], e = rem % g.ker[2];
      const int64_t offd = a * g.dil[0] - g.pad[0], offh = b * g.dil[1] - g.pad[1], offw = e * g.dil[2] - g.pad[2];
      int64_t d_lo, d_hi, h_lo, h_hi, w_lo, w_hi;
      valid_range(offd, g.stride[0], g.in[0], g.out[0], &d_lo, &d_hi);
      valid_range(offh, g.stride[1], g.in[1], OH, &h_lo, &h_hi);
      valid_range(offw, g.stride[2], W, OW, &w_lo, &w_hi);
      const int64_t sw = g.stride[2], span = w_hi - w_lo;
      T* row = col + r * nb * P;
      std::memset(row, 0, static_cast<size_t>(nb * P) * sizeof(T));  // the padding; the rest is overwritten
      for (int64_t n = 0; n < nb; ++n) {
        const T* plane = x + (n * g.c + c) * I;
        for (int64_t od = d_lo; od < d_hi; ++od) {
          const int64_t id = od * g.stride[0] + offd;
          for (int64_t oh = h_lo; oh < h_hi; ++oh) {
            const T* src = plane + (id * g.in[1] + oh * g.stride[1] + offh) * W + offw;
            T* dst = row + ((n * g.out[0] + od) * OH + oh) * OW;
            if (sw == 1)
              for (int64_t ow = w_lo; ow < w_hi; ++ow) dst[ow] = src[ow];
            else
              for (int64_t ow = w_lo; ow < w_lo + span; ++ow) dst[ow] = src[ow * sw];
          }
        }
      }
    }
  });
}

// The adjoint of im2col: x[...] += col[r, j]. Threads own whole channels, so no two write alike.
template <class T>
void col2im(const T* col, const Geom& g, int64_t grp, int64_t nb, T* x) {
  const int64_t kk = g.kk(), P = g.P(), I = g.I(), W = g.in[2], OW = g.out[2], OH = g.out[1];
  cpu::parallel_for(g.cg(), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t cl = c0; cl < c1; ++cl)
      for (int64_t rem = 0; rem < kk; ++rem) {
        const int64_t r = cl * kk + rem, c = grp * g.cg() + cl;
        const int64_t a = rem / (g.ker[1] * g.ker[2]), b = (rem / g.ker[2]) % g.ker[1], e = rem % g.ker[2];
        const int64_t offd = a * g.dil[0] - g.pad[0], offh = b * g.dil[1] - g.pad[1], offw = e * g.dil[2] - g.pad[2];
        int64_t d_lo, d_hi, h_lo, h_hi, w_lo, w_hi;
        valid_range(offd, g.stride[0], g.in[0], g.out[0], &d_lo, &d_hi);
        valid_range(offh, g.stride[1], g.in[1], OH, &h_lo, &h_hi);
        valid_range(offw, g.stride[2], W, OW, &w_lo, &w_hi);
        const int64_t sw = g.stride[2];
        const T* row = col + r * nb * P;
        for (int64_t n = 0; n < nb; ++n) {
          T* plane = x + (n * g.c + c) * I;
          for (int64_t od = d_lo; od < d_hi; ++od) {
            const int64_t id = od * g.stride[0] + offd;
            for (int64_t oh = h_lo; oh < h_hi; ++oh) {
              const T* src = row + ((n * g.out[0] + od) * OH + oh) * OW;
              T* dst = plane + (id * g.in[1] + oh * g.stride[1] + offh) * W + offw;
              if (sw == 1)
                for (int64_t ow = w_lo; ow < w_hi; ++ow) dst[ow] += src[ow];
              else
                for (int64_t ow = w_lo; ow < w_hi; ++ow) dst[ow * sw] += src[ow];
            }
          }
        }
      }
  });
}

// buf[k, n * P + p] <-> t[n0 + n, grp * kg + k, p]: between a (N, K, P) tensor and the GEMM layout.
template <class T>
void gather_channels(const T* t, const Geom& g, int64_t grp, int64_t nb, T* buf) {
  const int64_t P = g.P(), kg = g.kg();
  cpu::parallel_for(kg, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t n = 0; n < nb; ++n)
        std::memcpy(buf + (k * nb + n) * P, t + (n * g.k + grp * kg + k) * P, P * sizeof(T));
  });
}

// out[n, k, p] = conv(x, w)[n, k, p] + bias[k]
template <class T>
void conv_forward(const Geom& g, const T* x, const T* w, const T* bias, T* out, T* ws) {
  const int64_t P = g.P(), kg = g.kg(), ckk = g.ckk(), chunk = g.chunk();
  T* col = ws;
  T* ybuf = ws + ckk * P * chunk;
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.n - n0);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x + n0 * g.c * g.I(), g, grp, nb, col);
      const T* wg = w + grp * kg * ckk;
      if (nb == 1) {  // the GEMM writes the sample's channels in place; the bias follows while hot
        T* o = out + (n0 * g.k + grp * kg) * P;
        cpu::gemm(false, false, kg, P, ckk, T(1), wg, ckk, col, P, T(0), o, P);
        if (bias)
          for (int64_t k = 0; k < kg; ++k)
            for (int64_t p = 0; p < P; ++p) o[k * P + p] += bias[grp * kg + k];
        continue;
      }
      cpu::gemm(false, false, kg, nb * P, ckk, T(1), wg, ckk, col, nb * P, T(0), ybuf, nb * P);
      cpu::parallel_for(kg, 1, [&](int64_t k0, int64_t k1) {  // to (N, K, P), adding the bias on the way
        for (int64_t k = k0; k < k1; ++k) {
          const T b = bias ? bias[grp * kg + k] : T(0);
          for (int64_t n = 0; n < nb; ++n) {
            T* o = out + ((n0 + n) * g.k + grp * kg + k) * P;
            const T* y = ybuf + (k * nb + n) * P;
            for (int64_t p = 0; p < P; ++p) o[p] = y[p] + b;
          }
        }
      });
    }
  }
}

// dx = conv^T(gy, w): also the transposed convolution's forward.
template <class T>
void conv_input_grad(const Geom& g, const T* gy, const T* w, T* dx, T* ws) {
  const int64_t P = g.P(), kg = g.kg(), ckk = g.ckk(), chunk = g.chunk();
  T* col = ws;
  T* gbuf = ws + ckk * P * chunk;
  std::memset(dx, 0, static_cast<size_t>(g.n * g.c * g.I()) * sizeof(T));
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.n - n0);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* gk = gy + (n0 * g.k + grp * kg) * P;
      if (nb > 1) {
        gather_channels(gy + n0 * g.k * P, g, grp, nb, gbuf);
        gk = gbuf;
      }
      cpu::gemm(true, false, ckk, nb * P, kg, T(1), w + grp * kg * ckk, ckk, gk, nb * P, T(0), col, nb * P);
      col2im(col, g, grp, nb, dx + n0 * g.c * g.I());
    }
  }
}

// dw = sum over the batch of gy (K, P) @ im2col(x)^T
template <class T>
void conv_weight_grad(const Geom& g, const T* gy, const T* x, T* dw, T* ws) {
  const int64_t P = g.P(), kg = g.kg(), ckk = g.ckk(), chunk = g.chunk();
  T* col = ws;
  T* gbuf = ws + ckk * P * chunk;
  for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.n - n0);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x + n0 * g.c * g.I(), g, grp, nb, col);
      const T* gk = gy + (n0 * g.k + grp * kg) * P;
      if (nb > 1) {
        gather_channels(gy + n0 * g.k * P, g, grp, nb, gbuf);
        gk = gbuf;
      }
      cpu::gemm(false, true, kg, ckk, nb * P, T(1), gk, nb * P, col, nb * P, n0 == 0 ? T(0) : T(1), dw + grp * kg * ckk,
                ckk);
    }
  }
  if (g.n == 0) std::memset(dw, 0, static_cast<size_t>(g.k * g.ckk()) * sizeof(T));
}

// ---- the registered ops ----

// conv(x, w[, b]) -> y
void conv_kernel(const KernelContext& c) {
  const Tensor &x = c.input(0), &w = c.input(1);
  Geom g = make_geom(x.shape(), w.shape(), c.attrs, "conv");
  KILN_DISPATCH_FLOAT(x.dtype(), "conv",
                      conv_forward<scalar_t>(g, x.data<scalar_t>(), w.data<scalar_t>(),
                                             c.n_in > 2 ? c.input(2).data<scalar_t>() : nullptr,
                                             c.output(0).data<scalar_t>(), static_cast<scalar_t*>(c.workspace)));
}

// conv_input_grad(gy, w, x_ref) -> dx ; conv_transpose(x, w[, b]) -> y uses the same kernel with
// the conv side read from the output's shape.
void conv_input_grad_kernel(const KernelContext& c) {
  const Tensor &gy = c.input(0), &w = c.input(1);
  Tensor& dx = c.output(0);
  Shape out = gy.shape();
  Geom g = make_geom(dx.shape(), w.shape(), c.attrs, "conv_input_grad", &out);
  KILN_DISPATCH_FLOAT(gy.dtype(), "conv_input_grad",
                      conv_input_grad<scalar_t>(g, gy.data<scalar_t>(), w.data<scalar_t>(), dx.data<scalar_t>(),
                                                static_cast<scalar_t*>(c.workspace)));
}

void conv_transpose_kernel(const KernelContext& c) {
  conv_input_grad_kernel(c);
  if (c.n_in > 2) {
    Tensor& y = c.output(0);
    const int64_t k = y.shape()[1], P = y.numel() / std::max<int64_t>(1, y.shape()[0] * k);
    KILN_DISPATCH_FLOAT(y.dtype(), "conv_transpose", {
      scalar_t* o = y.data<scalar_t>();
      const scalar_t* b = c.input(2).data<scalar_t>();
      for (int64_t r = 0; r < y.shape()[0] * k; ++r)
        for (int64_t p = 0; p < P; ++p) o[r * P + p] += b[r % k];
    });
  }
}

// conv_weight_grad(gy, x, w_ref) -> dw
void conv_weight_grad_kernel(const KernelContext& c) {
  const Tensor &gy = c.input(0), &x = c.input(1);
  Tensor& dw = c.output(0);
  Shape out = gy.shape();
  Geom g = make_geom(x.shape(), dw.shape(), c.attrs, "conv_weight_grad", &out);
  KILN_DISPATCH_FLOAT(gy.dtype(), "conv_weight_grad",
                      conv_weight_grad<scalar_t>(g, gy.data<scalar_t>(), x.data<scalar_t>(), dw.data<scalar_t>(),
                                                 static_cast<scalar_t*>(c.workspace)));
}

void check_dtypes(const Specs& in, const char* op) {
  if (!is_floating(in[0].dtype)) throw Error(std::string(op) + ": expects float tensors, got " + specs_str(in));
  for (const TensorSpec& s : in)
    if (s.dtype != in[0].dtype) throw Error(std::string(op) + ": dtypes differ: " + specs_str(in));
}

void check_bias(const Specs& in, int64_t channels, const char* op) {
  if (in.size() > 2 && (in[2].shape.rank() != 1 || !dims_compatible(in[2].shape[0], channels)))
    throw Error(std::string(op) + ": bias must be (" + std::to_string(channels) + ",), got " + in[2].shape.str());
}

Specs infer_conv(const Specs& in, const Attrs& a) {
  if (in.size() < 2 || in.size() > 3) throw Error("conv: expects input, weight and an optional bias");
  check_dtypes(in, "conv");
  Geom g = make_geom(in[0].shape, in[1].shape, a, "conv");
  check_bias(in, g.k, "conv");
  return {TensorSpec{in[0].dtype, out_shape_of(g, in[0].shape[0], g.k)}};
}

// The transposed convolution's output size: the conv input whose conv output is x.
Shape transpose_out_shape(const Shape& x, const Shape& w, const Attrs& a) {
  int sp = x.rank() - 2;
  if (sp < 1 || sp > 3 || w.rank() != x.rank())
    throw Error("conv_transpose: expects (N, C, ...) input and (C, K/groups, ...) weight of one rank, got " + x.str() +
                " and " + w.str());
  const int64_t groups = a.i("groups", 1);
  if (x[1] >= 0 && x[1] != w[0])
    throw Error("conv_transpose: weight " + w.str() + " expects " + std::to_string(w[0]) +
                " input channels, the input " + x.str() + " has " + std::to_string(x[1]));
  const auto &st = ints_of(a, "stride", sp, "conv_transpose"), &pb = ints_of(a, "pad_begin", sp, "conv_transpose"),
             &pe = ints_of(a, "pad_end", sp, "conv_transpose"), &dl = ints_of(a, "dilation", sp, "conv_transpose"),
             &op = ints_of(a, "output_padding", sp, "conv_transpose");
  Shape out{x[0], w[1] * groups};
  for (int i = 0; i < sp; ++i) {
    // torch also accepts output_padding < dilation; kiln asks for < stride, where the adjoint
    // (a plain convolution) lands exactly on the input's size
    if (op[i] < 0 || op[i] >= st[i])
      throw Error("conv_transpose: output_padding must be smaller than the stride " + std::to_string(st[i]) + ", got " +
                  std::to_string(op[i]));
    int64_t in = x[2 + i];
    int64_t o = in < 0 ? kUnknownDim : (in - 1) * st[i] - pb[i] - pe[i] + dl[i] * (w[2 + i] - 1) + op[i] + 1;
    if (in >= 0 && o <= 0)
      throw Error("conv_transpose: the output of " + x.str() + " with weight " + w.str() + " would be empty");
    out.push_back(o);
  }
  return out;
}

Specs infer_conv_transpose(const Specs& in, const Attrs& a) {
  if (in.size() < 2 || in.size() > 3) throw Error("conv_transpose: expects input, weight and an optional bias");
  check_dtypes(in, "conv_transpose");
  Shape out = transpose_out_shape(in[0].shape, in[1].shape, a);
  check_bias(in, out[1], "conv_transpose");
  if (out[1] % a.i("groups", 1) || in[0].shape[1] % a.i("groups", 1))
    throw Error("conv_transpose: channels must be divisible by groups");
  return {TensorSpec{in[0].dtype, out}};
}

std::vector<AttrSpec> conv_attrs() {
  return {{"stride", true}, {"pad_begin", true}, {"pad_end", true}, {"dilation", true}, {"groups"}};
}

Attrs conv_side(const Attrs& a) {  // a transposed convolution's attributes, without output_padding
  Attrs c;
  for (const char* k : {"stride", "pad_begin", "pad_end", "dilation"}) c.set(k, a.ints(k));
  c.set("groups", a.i("groups", 1));
  return c;
}

std::vector<int64_t> bias_axes(int rank) {
  std::vector<int64_t> axes{0};
  for (int i = 2; i < rank; ++i) axes.push_back(i);
  return axes;
}

}  // namespace

void register_conv_ops(OpRegistry& r) {
  OpDef cv;
  cv.name = "conv";
  cv.attrs = conv_attrs();
  cv.num_inputs = -1;
  cv.infer = infer_conv;
  cv.cpu = conv_kernel;
  cv.workspace = [](const Specs& in, const Specs&, const Attrs& a) {
    return make_geom(in[0].shape, in[1].shape, a, "conv").workspace(dtype_size(in[0].dtype));
  };
  cv.vjp = [](C c) {
    Value gy = c.grads[0], x = c.inputs[0], w = c.inputs[1];
    std::vector<Value> out(c.inputs.size());
    if (c.needs_grad[0]) out[0] = c.graph.apply1("conv_input_grad", {gy, w, x}, c.attrs());
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_weight_grad", {gy, x, w}, c.attrs());
    if (c.inputs.size() > 2 && c.needs_grad[2]) out[2] = sum(gy, bias_axes(gy.rank()));
    return out;
  };
  r.add(std::move(cv));

  // The two gradients: (gy, other operand, reference of the result's shape) -> result.
  auto grad_op = [](const char* name, KernelFn kernel, bool input_side) {
    OpDef d;
    d.name = name;
    d.attrs = conv_attrs();
    d.num_inputs = 3;
    d.shape_only_from = 2;
    d.infer = [](const Specs& in, const Attrs&) { return Specs{{in[0].dtype, in[2].shape}}; };
    d.cpu = kernel;
    d.workspace = [name, input_side](const Specs& in, const Specs& out, const Attrs& a) {
      const Shape& x = input_side ? out[0].shape : in[1].shape;  // the conv's input
      const Shape& w = input_side ? in[1].shape : out[0].shape;  // its weight
      return make_geom(x, w, a, name, &in[0].shape).workspace(dtype_size(in[0].dtype));
    };
    return d;
  };
  OpDef ig = grad_op("conv_input_grad", conv_input_grad_kernel, true);
  ig.vjp = [](C c) {  // linear in gy and in w
    Value gg = c.grads[0], gy = c.inputs[0], w = c.inputs[1];
    std::vector<Value> out(3);
    if (c.needs_grad[0]) out[0] = c.graph.apply1("conv", {gg, w}, c.attrs());
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_weight_grad", {gy, gg, w}, c.attrs());
    return out;
  };
  r.add(std::move(ig));

  OpDef wg = grad_op("conv_weight_grad", conv_weight_grad_kernel, false);
  wg.vjp = [](C c) {  // linear in gy and in x
    Value gw = c.grads[0], gy = c.inputs[0], x = c.inputs[1];
    std::vector<Value> out(3);
    if (c.needs_grad[0]) out[0] = c.graph.apply1("conv", {x, gw}, c.attrs());
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_input_grad", {gy, gw, x}, c.attrs());
    return out;
  };
  r.add(std::move(wg));

  OpDef ct;
  ct.name = "conv_transpose";
  ct.attrs = conv_attrs();
  ct.attrs.push_back({"output_padding", true});
  ct.num_inputs = -1;
  ct.infer = infer_conv_transpose;
  ct.cpu = conv_transpose_kernel;
  ct.workspace = [](const Specs& in, const Specs& out, const Attrs& a) {
    return make_geom(out[0].shape, in[1].shape, a, "conv_transpose", &in[0].shape).workspace(dtype_size(in[0].dtype));
  };
  ct.vjp = [](C c) {  // y = conv_input_grad(x, w): its adjoints are a conv and a weight gradient
    Value gy = c.grads[0], x = c.inputs[0], w = c.inputs[1];
    Attrs a = conv_side(c.attrs());
    std::vector<Value> out(c.inputs.size());
    if (c.needs_grad[0]) out[0] = c.graph.apply1("conv", {gy, w}, a);
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_weight_grad", {x, gy, w}, a);
    if (c.inputs.size() > 2 && c.needs_grad[2]) out[2] = sum(gy, bias_axes(gy.rank()));
    return out;
  };
  r.add(std::move(ct));
}

}  // namespace kiln
