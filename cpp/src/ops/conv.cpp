// Convolution in 1, 2 or 3 spatial dimensions (one code path: lower ranks are 3-D with size-1
// dims), as torch.nn.functional: NC[D][H]W input, (K, C/groups, kernel...) weights, stride,
// padding (begin and end per dim), dilation, groups. Forward, input gradient (also the forward of
// the transposed convolution) and weight gradient are im2col + BLAS GEMM over cache-sized tiles.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "ops/common.h"
#include "ops/conv_geom.h"
#include "ops/conv_inputs.h"
#include "ops/conv_rows.h"

namespace kiln {
using namespace ops;
using namespace conv;

namespace {

using Specs = std::vector<TensorSpec>;
using C = const VjpContext&;

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

// The work is cut into tiles of whole output rows (a row: the OW outputs of one (sample, od, oh)),
// small enough that a tile's im2col columns stay in the L2 cache while its GEMM reads them.
// Tiles are spread over `parts` threads, each with its own slice of the workspace and
// single-threaded GEMMs; with one part the inner loops and GEMMs use the whole pool instead.

// Calls fn(n, p, j, len) for each sample n that rows [r0, r1) touch: that sample's output
// positions [p, p + len) are the tile's columns [j, j + len).
template <class F>
void for_each_sample(const Geom& g, int64_t r0, int64_t r1, F&& fn) {
  const int64_t R = g.rows_per_sample(), OW = g.out[2];
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / R, e = std::min(r1, (n + 1) * R);
    fn(n, (r - n * R) * OW, (r - r0) * OW, (e - r) * OW);
    r = e;
  }
}

// An output row (sample, od, oh), stepped without divisions.
struct RowPos {
  int64_t n, od, oh;
  RowPos(const Geom& g, int64_t r) : n(r / g.rows_per_sample()), od(r / g.out[1] % g.out[0]), oh(r % g.out[1]) {}
  void next(const Geom& g) {
    if (++oh < g.out[1]) return;
    oh = 0;
    if (++od < g.out[0]) return;
    od = 0;
    ++n;
  }
};

// The input row that kernel offset (offd, offh) reads for output row r, or null when it falls in
// the padding.
template <class T>
T* input_row(T* x, const Geom& g, int64_t c, const RowPos& r, int64_t offd, int64_t offh) {
  const int64_t id = r.od * g.stride[0] + offd, ih = r.oh * g.stride[1] + offh;
  if (id < 0 || id >= g.in[0] || ih < 0 || ih >= g.in[1]) return nullptr;
  return x + (r.n * g.c + c) * g.I() + (id * g.in[1] + ih) * g.in[2];
}

// Kernel offsets of im2col row q = (c, a, b, e) of group grp, and the output columns [lo, hi) of a
// row whose input column lands inside the image.
struct Tap {
  int64_t c, offd, offh, offw, lo, hi;
};
inline Tap tap_of(const Geom& g, int64_t grp, int64_t q) {
  const int64_t kk = g.kk(), rem = q % kk;
  const int64_t a = rem / (g.ker[1] * g.ker[2]), b = (rem / g.ker[2]) % g.ker[1], e = rem % g.ker[2];
  Tap t{grp * g.cg() + q / kk, a * g.dil[0] - g.pad[0], b * g.dil[1] - g.pad[1], e * g.dil[2] - g.pad[2], 0, 0};
  valid_range(t.offw, g.stride[2], g.in[2], g.out[2], &t.lo, &t.hi);
  return t;
}

// col[q, j] = x at tap q of the tile's output position j, for output rows [r0, r1).
template <class T>
void im2col(const T* x, const Geom& g, int64_t grp, int64_t r0, int64_t r1, T* col) {
  const int64_t OW = g.out[2], sw = g.stride[2], tw = (r1 - r0) * OW;
  cpu::parallel_for(g.ckk(), 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const Tap t = tap_of(g, grp, q);
      RowPos pos(g, r0);
      for (int64_t r = r0; r < r1; ++r, pos.next(g)) {
        T* dst = col + q * tw + (r - r0) * OW;
        const T* src = input_row(x, g, t.c, pos, t.offd, t.offh);
        if (!src) {
          std::fill(dst, dst + OW, T(0));
          continue;
        }
        src += t.offw;
        std::fill(dst, dst + t.lo, T(0));
        if (sw == 1)
          for (int64_t ow = t.lo; ow < t.hi; ++ow) dst[ow] = src[ow];
        else
          for (int64_t ow = t.lo; ow < t.hi; ++ow) dst[ow] = src[ow * sw];
        std::fill(dst + t.hi, dst + OW, T(0));
      }
    }
  });
}

// The adjoint of im2col: x += col scattered back. Threads own whole channels, so no two write alike.
template <class T>
void col2im(const T* col, const Geom& g, int64_t grp, int64_t r0, int64_t r1, T* x) {
  const int64_t kk = g.kk(), OW = g.out[2], sw = g.stride[2], tw = (r1 - r0) * OW;
  cpu::parallel_for(g.cg(), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t q = c0 * kk; q < c1 * kk; ++q) {
      const Tap t = tap_of(g, grp, q);
      RowPos pos(g, r0);
      for (int64_t r = r0; r < r1; ++r, pos.next(g)) {
        T* dst = input_row(x, g, t.c, pos, t.offd, t.offh);
        if (!dst) continue;
        dst += t.offw;
        const T* src = col + q * tw + (r - r0) * OW;
        if (sw == 1)
          for (int64_t ow = t.lo; ow < t.hi; ++ow) dst[ow] += src[ow];
        else
          for (int64_t ow = t.lo; ow < t.hi; ++ow) dst[ow * sw] += src[ow];
      }
    }
  });
}

// The workspace slice of each part, and how many parts the planned workspace holds.
int64_t parts_in(const Geom& g, Pass pass, size_t workspace_bytes, size_t elem) {
  return std::max<int64_t>(1, static_cast<int64_t>(workspace_bytes / (g.slot_elems(pass) * elem)));
}

// out[n, k, p] = conv(x, w)[n, k, p] + bias[k]
template <class T>
void conv_forward(const Geom& g, const T* x, const T* w, const T* bias, T* out, T* ws, size_t ws_bytes) {
  if (shifted_applies(g)) return shifted_forward(g, x, w, bias, out, ws, ws_bytes);
  const int64_t slots = parts_in(g, Pass::forward, ws_bytes, sizeof(T));
  const int64_t P = g.P(), kg = g.kg(), ckk = g.ckk(), OW = g.out[2], rows = g.tile_rows();
  const int64_t total = g.n * g.rows_per_sample(), parts = std::min(slots, (total + rows - 1) / rows);
  run_parts(parts, [&](int64_t part) {
    T* col = ws + part * g.slot_elems(Pass::forward);
    T* buf = col + ckk * g.tile();  // the GEMM's result when a tile spans samples
    for (int64_t r0 = total * part / parts, end = total * (part + 1) / parts; r0 < end; r0 += rows) {
      const int64_t r1 = std::min(end, r0 + rows), tw = (r1 - r0) * OW;
      const bool one_sample = r0 / g.rows_per_sample() == (r1 - 1) / g.rows_per_sample();
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        im2col(x, g, grp, r0, r1, col);
        const T* wg = w + grp * kg * ckk;
        T* dst = buf;  // a tile within one sample: the GEMM writes its output in place
        int64_t ld = tw;
        if (one_sample) {
          const int64_t n = r0 / g.rows_per_sample();
          dst = out + (n * g.k + grp * kg) * P + (r0 - n * g.rows_per_sample()) * OW;
          ld = P;
        }
        cpu::gemm(false, false, kg, tw, ckk, T(1), wg, ckk, col, tw, T(0), dst, ld);
        for_each_sample(g, r0, r1, [&](int64_t n, int64_t p, int64_t j, int64_t len) {
          for (int64_t k = 0; k < kg; ++k) {  // to (N, K, P) with the bias, while the tile is in cache
            const T b = bias ? bias[grp * kg + k] : T(0);
            T* o = out + (n * g.k + grp * kg + k) * P + p;
            const T* y = one_sample ? o : buf + k * tw + j;
            if (bias || !one_sample)
              for (int64_t i = 0; i < len; ++i) o[i] = y[i] + b;
          }
        });
      }
    }
  });
}

// dx = conv^T(gy, w): also the transposed convolution's forward. Parts own whole samples (their
// col2im writes overlap within a sample).
template <class T>
void conv_input_grad(const Geom& g, const T* gy, const T* w, T* dx, T* ws, size_t ws_bytes) {
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_input_grad_applies(g)) return winograd_input_grad(g, gy, w, dx, ws, ws_bytes);
    if (direct_applies(g, Pass::input_grad)) return direct_input_grad(g, gy, w, dx, ws, ws_bytes);
  }
  if (shifted_applies(g)) return shifted_input_grad(g, gy, w, dx, ws, ws_bytes);
  const int64_t slots = parts_in(g, Pass::input_grad, ws_bytes, sizeof(T));
  const int64_t P = g.P(), kg = g.kg(), ckk = g.ckk(), OW = g.out[2], rows = g.tile_rows(), R = g.rows_per_sample();
  const int64_t parts = std::min(slots, g.n);
  run_parts(parts, [&](int64_t part) {
    T* col = ws + part * g.slot_elems(Pass::input_grad);
    const int64_t n0 = g.n * part / parts, n1 = g.n * (part + 1) / parts;
    std::memset(dx + n0 * g.c * g.I(), 0, static_cast<size_t>((n1 - n0) * g.c * g.I()) * sizeof(T));
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t r0 = n * R; r0 < (n + 1) * R; r0 += rows) {
        const int64_t r1 = std::min((n + 1) * R, r0 + rows), tw = (r1 - r0) * OW;
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          const T* gk = gy + (n * g.k + grp * kg) * P + (r0 - n * R) * OW;
          cpu::gemm(true, false, ckk, tw, kg, T(1), w + grp * kg * ckk, ckk, gk, P, T(0), col, tw);
          col2im(col, g, grp, r0, r1, dx);
        }
      }
  });
}

// dw = sum over the batch of gy (K, P) @ im2col(x)^T: each part sums its tiles, then the parts add.
template <class T>
void conv_weight_grad(const Geom& g, const T* gy, const T* x, T* dw, T* ws, size_t ws_bytes) {
  if constexpr (std::is_same_v<T, float>)
    if (direct_applies(g, Pass::weight_grad)) return direct_weight_grad(g, gy, x, dw, ws, ws_bytes);
  if (shifted_applies(g)) return shifted_weight_grad(g, gy, x, dw, ws, ws_bytes);
  const int64_t slots = parts_in(g, Pass::weight_grad, ws_bytes, sizeof(T));
  const int64_t P = g.P(), kg = g.kg(), ckk = g.ckk(), OW = g.out[2], rows = g.tile_rows();
  const int64_t total = g.n * g.rows_per_sample(), parts = std::min(slots, (total + rows - 1) / rows);
  const int64_t slot = g.slot_elems(Pass::weight_grad), wsize = g.k * ckk;
  auto acc_of = [&](int64_t part) { return ws + part * slot + (ckk + kg) * g.tile(); };
  run_parts(parts, [&](int64_t part) {
    T* col = ws + part * slot;
    T* buf = col + ckk * g.tile();  // the tile's gy when it spans samples
    T* acc = acc_of(part);
    const int64_t first = total * part / parts, end = total * (part + 1) / parts;
    for (int64_t r0 = first; r0 < end; r0 += rows) {
      const int64_t r1 = std::min(end, r0 + rows), tw = (r1 - r0) * OW;
      const bool one_sample = r0 / g.rows_per_sample() == (r1 - 1) / g.rows_per_sample();
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        im2col(x, g, grp, r0, r1, col);
        const T* gk = buf;
        int64_t ld = tw;
        for_each_sample(g, r0, r1, [&](int64_t n, int64_t p, int64_t j, int64_t len) {
          const T* src = gy + (n * g.k + grp * kg) * P + p;
          if (one_sample) {
            gk = src;
            ld = P;
          } else {
            for (int64_t k = 0; k < kg; ++k) std::memcpy(buf + k * tw + j, src + k * P, len * sizeof(T));
          }
        });
        cpu::gemm(false, true, kg, ckk, tw, T(1), gk, ld, col, tw, r0 == first ? T(0) : T(1), acc + grp * kg * ckk,
                  ckk);
      }
    }
  });
  if (parts == 0) {
    std::memset(dw, 0, static_cast<size_t>(wsize) * sizeof(T));
    return;
  }
  cpu::parallel_for(wsize, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T s = acc_of(0)[i];
      for (int64_t p = 1; p < parts; ++p) s += acc_of(p)[i];
      dw[i] = s;
    }
  });
}

// ---- the registered ops ----

// The scratch memory of the algorithm the kernels will pick (in the same order).
size_t workspace_of(const Geom& g, Pass pass, DType dtype) {
  if (dtype == DType::float32 && pass == Pass::forward && winograd_applies(g)) return winograd_workspace(g);
  if (dtype == DType::float32 && pass == Pass::input_grad && winograd_input_grad_applies(g))
    return winograd_input_grad_workspace(g);
  if (dtype == DType::float32 && pass == Pass::forward && pointwise_applies(g)) return pointwise_workspace(g);
  if (dtype == DType::float32 && pass == Pass::forward && lanes_applies(g)) return lanes_workspace(g);
  if (dtype == DType::float32 && direct_applies(g, pass)) return direct_workspace(g, pass);
  const size_t elem = dtype_size(dtype);
  return shifted_applies(g) ? shifted_workspace(g, pass, elem) : g.workspace(pass, elem);
}

// Bytes of the workspace that hold a folded batch norm's scale and shift, ahead of the algorithm's.
size_t affine_bytes(const Attrs& a, int64_t k, DType dtype) {
  return a.has("bn_eps") ? static_cast<size_t>((2 * k * dtype_size(dtype) + 63) / 64 * 64) : 0;
}

// y = y * scale[k] + shift[k] + residual (any may be null), then max(0, y) if relu; y is (N, K, P),
// the residual too, or (1, K, P) where `shared` (added to every sample).
template <class T>
void affine_relu(T* y, int64_t nk, int64_t k, int64_t P, const T* scale, const T* shift, const T* residual, bool shared,
                 bool relu) {
  if (!scale && !shift && !residual && !relu) return;
  cpu::parallel_for(nk, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(P, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = y + r * P;
      const T* res = residual ? residual + (shared ? r % k : r) * P : nullptr;
      const T s = scale ? scale[r % k] : T(1), t = shift ? shift[r % k] : T(0);
      for (int64_t i = 0; i < P; ++i) {
        const T v = (scale ? row[i] * s + t : row[i] + t) + (res ? res[i] : T(0));
        row[i] = relu && !(v > 0) ? T(0) : v;
      }
    }
  });
}

// A batch norm after the convolution (+ bias) as y * scale + shift: bn points at gamma, beta, mean, var.
template <class T>
void fold_batch_norm(const Tensor* const* bn, const T* bias, double eps, int64_t channels, T* scale, T* shift) {
  const T *gamma = bn[0]->data<T>(), *beta = bn[1]->data<T>(), *mean = bn[2]->data<T>(), *var = bn[3]->data<T>();
  for (int64_t k = 0; k < channels; ++k) {
    const double a = gamma[k] / std::sqrt(double(var[k]) + eps);
    scale[k] = T(a);
    shift[k] = T(beta[k] - mean[k] * a + (bias ? bias[k] * a : 0.0));
  }
}

// The float32 direct kernels, which apply the epilogue as they store; false where neither applies.
bool direct_kernels(const KernelContext& c, const Geom& g, const float* bias, const float* scale, const float* residual,
                    bool shared, bool relu, float* y, void* ws, size_t ws_bytes) {
  const bool winograd = winograd_applies(g), pointwise = pointwise_applies(g);
  const bool lanes = !winograd && !pointwise && lanes_applies(g);
  if (!winograd && !pointwise && !lanes && !direct_applies(g, Pass::forward)) return false;
  // inference functions keep variables' packed weights; a training step changes them every call
  const Tensor& w = c.input(1);
  const uint64_t stamp = !c.training && w.storage()->tracked() ? w.storage()->stamp() : 0;
  (winograd    ? winograd_forward
   : pointwise ? pointwise_forward
   : lanes     ? lanes_forward
               : direct_forward)(g, c.input(0).data<float>(), w.data<float>(), stamp,
                             Epilogue{bias, scale, residual, relu, shared ? g.k * g.P() : 0}, y,
                             static_cast<float*>(ws), ws_bytes);
  return true;
}
bool direct_kernels(const KernelContext&, const Geom&, const double*, const double*, const double*, bool, bool, double*,
                    void*, size_t) {
  return false;
}

// conv(x, w[, b]) -> y. The compiler's fusion passes may add (ConvInputs): a folded inference batch
// norm, y = (conv + b - mean) * gamma / sqrt(var + eps) + beta as batch_norm computes it, a residual
// added to that, and the attribute relu, max(0, y) last.
void conv_kernel(const KernelContext& c) {
  const Tensor &x = c.input(0), &w = c.input(1);
  Geom g = make_geom(x.shape(), w.shape(), c.attrs, "conv");
  const ConvInputs at(c.n_in, c.attrs);
  const bool relu = c.attrs.i("relu", 0) != 0;
  const size_t reserved = affine_bytes(c.attrs, g.k, x.dtype());
  void* ws = static_cast<char*>(c.workspace) + reserved;
  const size_t ws_bytes = c.workspace_bytes - reserved;
  KILN_DISPATCH_FLOAT(x.dtype(), "conv", {
    using T = scalar_t;
    const T* bias = at.bias >= 0 ? c.input(at.bias).data<T>() : nullptr;
    const T* residual = at.residual >= 0 ? c.input(at.residual).data<T>() : nullptr;
    // a batch of 1 added to a larger one (the residual's batch was unknown when the add was fused)
    const bool shared = residual && c.input(at.residual).shape()[0] == 1 && g.n > 1;
    T *scale = nullptr, *shift = nullptr;
    if (at.bn >= 0) {
      scale = static_cast<T*>(c.workspace), shift = scale + g.k;
      fold_batch_norm(c.in + at.bn, bias, c.attrs.f("bn_eps"), g.k, scale, shift);
    }
    T* y = c.output(0).data<T>();
    if (direct_kernels(c, g, scale ? shift : bias, scale, residual, shared, relu, y, ws, ws_bytes)) return;
    conv_forward<T>(g, x.data<T>(), w.data<T>(), scale ? nullptr : bias, y, static_cast<T*>(ws), ws_bytes);
    affine_relu<T>(y, g.n * g.k, g.k, g.P(), scale, shift, residual, shared, relu);
  });
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
                                                static_cast<scalar_t*>(c.workspace), c.workspace_bytes));
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
                                                 static_cast<scalar_t*>(c.workspace), c.workspace_bytes));
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

Specs infer_conv(const Specs& all, const Attrs& a) {
  const size_t fused = (a.has("bn_eps") ? 4 : 0) + (a.i("residual", 0) ? 1 : 0);
  if (all.size() < 2 + fused || all.size() > 3 + fused)
    throw Error(fused ? "conv: expects input, weight, an optional bias and the inputs its fusions add"
                      : "conv: expects input, weight and an optional bias");
  const ConvInputs at(all.size(), a);
  const Specs in(all.begin(), all.begin() + at.plain());
  check_dtypes(in, "conv");
  Geom g = make_geom(in[0].shape, in[1].shape, a, "conv");
  check_bias(in, g.k, "conv");
  const Shape out = out_shape_of(g, in[0].shape[0], g.k);
  for (int i = at.bn; at.bn >= 0 && i < at.bn + 4; ++i)
    if (all[i].dtype != in[0].dtype || all[i].shape.rank() != 1 || !dims_compatible(all[i].shape[0], g.k))
      throw Error("conv: the folded batch norm's statistics must be " + std::string(dtype_name(in[0].dtype)) +
                  " vectors of the " + std::to_string(g.k) + " filters, got " + specs_str(all));
  if (at.residual >= 0) {  // shaped like the output, or a batch of 1 (added to every sample)
    const TensorSpec& r = all[at.residual];
    bool same = r.dtype == in[0].dtype && r.shape.rank() == out.rank();
    for (int i = 0; same && i < out.rank(); ++i)
      same = dims_compatible(r.shape[i], out[i]) || (i == 0 && r.shape[0] == 1);
    if (!same)
      throw Error("conv: the residual must be shaped like the output " + out.str() + ", got " + specs_str(all));
  }
  return {TensorSpec{in[0].dtype, out}};
}

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
    // as torch: output_padding below the stride or the dilation (the extra rows get the bias only)
    if (op[i] < 0 || op[i] >= std::max(st[i], dl[i]))
      throw Error("conv_transpose: output_padding must be smaller than the stride " + std::to_string(st[i]) +
                  " or the dilation " + std::to_string(dl[i]) + ", got " + std::to_string(op[i]));
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

// ---- by output rows (ops/conv_rows.h) ----

namespace {
int64_t one_row(const Geom&) { return 1; }
}  // namespace

// The kernels that run by rows, each by its packed weights, rows a call computes together, buffer and rows.
const conv::RowConv::RowKernel conv::RowConv::kDirectRows{direct_packed, direct_row_unit, direct_rows_buffer,
                                                          direct_rows};
const conv::RowConv::RowKernel conv::RowConv::kLanesRows{lanes_packed, one_row, lanes_rows_buffer, lanes_rows};
const conv::RowConv::RowKernel conv::RowConv::kPointwiseRows{pointwise_packed, one_row, pointwise_rows_buffer,
                                                             pointwise_rows};
const conv::RowConv::RowKernel conv::RowConv::kWinogradRows{winograd_packed, winograd_row_unit, winograd_rows_buffer,
                                                            winograd_rows};

std::unique_ptr<RowConv> conv::RowConv::make(const std::vector<TensorSpec>& in, const Attrs& attrs) {
  for (const TensorSpec& s : in)
    if (s.dtype != DType::float32) return nullptr;
  if (in[0].shape.rank() != 4 || in[0].shape[0] < 1) return nullptr;
  Shape sample = in[0].shape;  // a call computes rows of one sample
  sample[0] = 1;
  const Geom g = make_geom(sample, in[1].shape, attrs, "conv");
  if (!pointwise_applies(g) && !lanes_applies(g) && !direct_applies(g, Pass::forward)) return nullptr;
  // Each thread reads all the weights: layers of more weights than pixels stay split by filters,
  // unless their weights sit in a quarter of L2 (ResNet-8's 64-filter layer, 147 KB: 8 us a call
  // faster in a group where the two virtual CPUs were far apart).
  const int64_t padded = g.c * (g.in[1] + 2 * g.pad[1]) * (g.in[2] + 2 * g.pad[2]), weights = g.k * g.cg() * g.kk();
  if (!rows_in_bands(padded, weights) && weights * int64_t(sizeof(float)) > (256 << 10)) return nullptr;
  const ConvInputs at(in.size(), attrs);
  if (at.residual >= 0 && in[at.residual].shape != Shape{in[0].shape[0], g.k, g.out[1], g.out[2]}) return nullptr;
  const RowKernel& kernel = winograd_applies(g)    ? kWinogradRows
                            : pointwise_applies(g) ? kPointwiseRows
                            : lanes_applies(g)     ? kLanesRows
                                                   : kDirectRows;
  return std::unique_ptr<RowConv>(new RowConv(g, attrs, in.size(), kernel));
}

conv::RowConv::RowConv(const Geom& g, const Attrs& attrs, size_t n_in, const RowKernel& kernel)
    : g_(g), at_(n_in, attrs), kernel_(kernel), relu_(attrs.i("relu", 0) != 0) {
  unit_ = kernel.unit(g);
  buffer_ = kernel.buffer(g);
  if (at_.bn >= 0) {
    affine_.resize(2 * g.k);
    eps_ = attrs.f("bn_eps");
  }
}

std::pair<int64_t, int64_t> conv::RowConv::rows_read(int64_t r0, int64_t r1) const {
  const int64_t lo = r0 * g_.stride[1] - g_.pad[1],
                hi = (r1 - 1) * g_.stride[1] - g_.pad[1] + (g_.ker[1] - 1) * g_.dil[1] + 1;
  return {std::max<int64_t>(0, lo), std::min(g_.in[1], hi)};
}

void conv::RowConv::prepare(const std::vector<const Tensor*>& in) {
  const Tensor& w = *in[1];
  if (!w.storage()->tracked()) throw Error("internal: a row-tiled conv's weights are not a variable's");
  // The group's threads read the members written here: while the weights, bias and batch norm are the
  // same unchanged variables as last call, write nothing. Each write moved those lines to this core, and
  // where the host placed the two virtual CPUs far apart, every thread's first read of them in a call
  // cost a trip there (ResNet-8 at batch 1: 9 convolutions, each reading its packed weights' holder,
  // bias and folded batch norm).
  Sources now{};
  bool variables = true;
  size_t n = 0;
  auto note = [&](const Tensor* t) {
    const bool tracked = t->storage()->tracked();
    variables = variables && tracked;
    now[n++] = {t->data<float>(), tracked ? t->storage()->stamp() : 0};
  };
  note(&w);
  if (at_.bias >= 0) note(in[at_.bias]);
  if (at_.bn >= 0)
    for (int i = 0; i < 4; ++i) note(in[at_.bn + i]);
  if (variables && now == sources_) return;
  packed_ = kernel_.packed(g_, w.data<float>(), w.storage()->stamp());
  bias_ = at_.bias >= 0 ? in[at_.bias]->data<float>() : nullptr;
  if (at_.bn >= 0) fold_batch_norm(in.data() + at_.bn, bias_, eps_, g_.k, affine_.data(), affine_.data() + g_.k);
  sources_ = variables ? now : Sources{};
}

void conv::RowConv::run(const float* x, const float* residual, float* y, int64_t r0, int64_t r1, float* buf) const {
  const bool bn = at_.bn >= 0;
  const Epilogue e{bn ? affine_.data() + g_.k : bias_, bn ? affine_.data() : nullptr, residual, relu_, 0};
  kernel_.rows(g_, x, packed_->data(), e, y, r0, r1, buf);
}

void register_conv_ops(OpRegistry& r) {
  OpDef cv;
  cv.name = "conv";
  cv.attrs = conv_attrs();
  cv.attrs.push_back({"relu"});  // fused by the compiler (graph/passes.cpp), never by users
  cv.num_inputs = -1;
  cv.infer = infer_conv;
  cv.cpu = conv_kernel;
  cv.attrs.push_back({"bn_eps"});    // likewise: an inference batch norm folded into the convolution
  cv.attrs.push_back({"residual"});  // likewise: a tensor added to the output (before the ReLU)
  cv.workspace = [](const Specs& in, const Specs&, const Attrs& a) {
    const Geom g = make_geom(in[0].shape, in[1].shape, a, "conv");
    return affine_bytes(a, g.k, in[0].dtype) + workspace_of(g, Pass::forward, in[0].dtype);
  };
  cv.vjp = [](C c) {
    if (c.attrs().i("relu", 0) || c.attrs().has("bn_eps") || c.attrs().i("residual", 0))
      throw Error("conv: a convolution with a fused ReLU, batch norm or residual has no gradient rule");
    Value gy = c.grads[0], x = c.inputs[0], w = c.inputs[1];
    std::vector<Value> out(c.inputs.size());
    if (c.needs_grad[0]) out[0] = c.graph.apply1("conv_input_grad", {gy, w, x}, c.attrs());
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_weight_grad", {gy, x, w}, c.attrs());
    if (c.inputs.size() > 2 && c.needs_grad[2]) out[2] = sum(gy, bias_axes(gy.rank()));
    return out;
  };
  r.add(std::move(cv));

  // The two gradients: (gy, other operand, reference of the result's shape) -> result.
  auto grad_op = [](const char* name, KernelFn kernel, Pass pass) {
    OpDef d;
    d.name = name;
    d.attrs = conv_attrs();
    d.num_inputs = 3;
    d.shape_only_from = 2;
    d.infer = [pass](const Specs& in, const Attrs& a) {
      // gy: what the convolution gives, or, as the adjoint of a transposed convolution whose
      // output_padding reaches past the stride, up to that many rows and columns fewer: the
      // kernels compute only gy's positions, every one of which reads inside the input.
      const Specs fwd = pass == Pass::input_grad ? infer_conv({in[2], in[1]}, a) : infer_conv({in[1], in[2]}, a);
      const Shape &g = in[0].shape, &y = fwd[0].shape;
      bool ok = in[0].dtype == fwd[0].dtype && g.rank() == y.rank();
      for (int i = 0; ok && i < g.rank(); ++i)
        ok = i < 2 ? dims_compatible(g[i], y[i]) : (g[i] < 0 || y[i] < 0 || g[i] <= y[i]);
      if (!ok) throw Error("the output gradient must be " + fwd[0].str() + ", got " + in[0].str());
      return Specs{{in[0].dtype, in[2].shape}};
    };
    d.cpu = kernel;
    d.workspace = [name, pass](const Specs& in, const Specs& out, const Attrs& a) {
      const bool input_side = pass == Pass::input_grad;
      const Shape& x = input_side ? out[0].shape : in[1].shape;  // the conv's input
      const Shape& w = input_side ? in[1].shape : out[0].shape;  // its weight
      return workspace_of(make_geom(x, w, a, name, &in[0].shape), pass, in[0].dtype);
    };
    return d;
  };
  OpDef ig = grad_op("conv_input_grad", conv_input_grad_kernel, Pass::input_grad);
  ig.vjp = [](C c) {  // linear in gy and in w
    Value gg = c.grads[0], gy = c.inputs[0], w = c.inputs[1];
    std::vector<Value> out(3);
    if (c.needs_grad[0]) out[0] = c.graph.apply1("conv", {gg, w}, c.attrs());
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_weight_grad", {gy, gg, w}, c.attrs());
    return out;
  };
  r.add(std::move(ig));

  OpDef wg = grad_op("conv_weight_grad", conv_weight_grad_kernel, Pass::weight_grad);
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
    return workspace_of(make_geom(out[0].shape, in[1].shape, a, "conv_transpose", &in[0].shape), Pass::input_grad,
                        in[0].dtype);
  };
  ct.vjp = [](C c) {  // y = conv_input_grad(x, w): its adjoints are a conv and a weight gradient
    Value gy = c.grads[0], x = c.inputs[0], w = c.inputs[1];
    Attrs a = conv_side(c.attrs());
    std::vector<Value> out(c.inputs.size());
    if (c.needs_grad[0]) {
      out[0] = c.graph.apply1("conv", {gy, w}, a);
      // output_padding at or past the stride: the convolution of the output has rows (or columns)
      // the input lacks, which read only the padding; crop them
      bool larger = false;
      for (int i = 2; i < x.rank(); ++i) larger |= out[0].shape()[i] != x.shape()[i];
      if (larger) {
        std::vector<int64_t> starts(x.rank(), 0), stops(x.rank(), kSliceNone), steps(x.rank(), 1);
        for (int i = 2; i < x.rank(); ++i) stops[i] = x.shape()[i];
        out[0] = slice(out[0], starts, stops, steps);
      }
    }
    if (c.needs_grad[1]) out[1] = c.graph.apply1("conv_weight_grad", {x, gy, w}, a);
    if (c.inputs.size() > 2 && c.needs_grad[2]) out[2] = sum(gy, bias_axes(gy.rank()));
    return out;
  };
  r.add(std::move(ct));
}

}  // namespace kiln
