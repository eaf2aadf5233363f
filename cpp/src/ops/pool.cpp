// Pooling in 1-3 spatial dims (as 3-D with size-1 leading dims), as torch.nn.functional:
// max and average pooling (kernel, stride, padding, ceil_mode, count_include_pad), adaptive
// average and max pooling, and nearest / bilinear upsampling, each with its gradient op.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/parallel.h"
#include "ops/common.h"

namespace kiln {
using namespace ops;

namespace {

using Specs = std::vector<TensorSpec>;
using C = const VjpContext&;

enum class Mode { max, avg, adaptive_max, adaptive_avg };

struct PoolGeom {
  int sp = 0;
  int64_t planes = 0;  // N * C
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, ker[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
  bool include_pad = true;
  int64_t I() const { return in[0] * in[1] * in[2]; }
  int64_t P() const { return out[0] * out[1] * out[2]; }
  // Planes a task: at least 16k elements read, or the threads' hand-off outweighs the work (ResNet-8's
  // global average pooling at batch 1, 64 planes of 8x8: 2.8 us on two threads).
  int64_t grain() const { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, std::max(I(), P()))); }
};

int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t num = in + 2 * p - k;
  int64_t o = (ceil_mode ? (num + s - 1) / s : num / s) + 1;
  if (ceil_mode && (o - 1) * s >= in + p) --o;  // the last window must start inside the input or left padding
  return o;
}

bool is_adaptive(Mode m) { return m == Mode::adaptive_max || m == Mode::adaptive_avg; }

// x: (N, C, spatial...) input shape; out_override: the output shape when known (gradients).
PoolGeom make_pool(const Shape& x, const Attrs& a, Mode mode, const char* op) {
  PoolGeom g;
  g.sp = x.rank() - 2;
  if (g.sp < 1 || g.sp > 3)
    throw Error(std::string(op) + ": expects a 3-, 4- or 5-d input (N, C, ...), got " + x.str());
  g.planes = x[0] < 0 || x[1] < 0 ? kUnknownDim : x[0] * x[1];
  auto vec = [&](const char* name) {
    const auto& v = a.ints(name);
    if (static_cast<int>(v.size()) != g.sp)
      throw Error(std::string(op) + ": " + name + " needs " + std::to_string(g.sp) + " values for input " + x.str());
    return v;
  };
  g.include_pad = a.i("count_include_pad", 1) != 0;
  for (int i = 0; i < g.sp; ++i) {
    int j = 3 - g.sp + i;
    g.in[j] = x[2 + i];
    if (is_adaptive(mode)) {
      g.out[j] = vec("output_size")[i];
      if (g.out[j] < 1) throw Error(std::string(op) + ": output_size must be positive");
      continue;
    }
    g.ker[j] = vec("kernel")[i];
    g.stride[j] = vec("stride")[i];
    g.pad[j] = vec("padding")[i];
    if (g.ker[j] < 1 || g.stride[j] < 1 || g.pad[j] < 0)
      throw Error(std::string(op) + ": kernel and stride must be >= 1, padding >= 0");
    if (2 * g.pad[j] > g.ker[j])
      throw Error(std::string(op) + ": padding " + std::to_string(g.pad[j]) + " must be at most half the kernel " +
                  std::to_string(g.ker[j]));
    if (g.in[j] < 0) {
      g.out[j] = kUnknownDim;
      continue;
    }
    if (g.in[j] + 2 * g.pad[j] < g.ker[j])
      throw Error(std::string(op) + ": kernel " + std::to_string(g.ker[j]) + " is larger than the padded input " +
                  x.str());
    g.out[j] = pool_out_size(g.in[j], g.ker[j], g.stride[j], g.pad[j], a.i("ceil_mode", 0) != 0);
  }
  return g;
}

// The window of output index o along dim d: [lo, hi) clipped to the input, and its divisor.
struct Window {
  int64_t lo, hi, count;
};
Window window(const PoolGeom& g, Mode mode, int d, int64_t o) {
  if (is_adaptive(mode)) {
    int64_t lo = (o * g.in[d]) / g.out[d], hi = ((o + 1) * g.in[d] + g.out[d] - 1) / g.out[d];
    return {lo, hi, hi - lo};
  }
  int64_t lo = o * g.stride[d] - g.pad[d], hi = std::min(lo + g.ker[d], g.in[d] + g.pad[d]);
  int64_t padded = hi - lo;  // torch's pool size with count_include_pad: clipped to the padded input
  lo = std::max<int64_t>(lo, 0);
  hi = std::min(hi, g.in[d]);
  return {lo, hi, g.include_pad ? padded : hi - lo};
}

Shape pool_out_shape(const Shape& x, const PoolGeom& g) {
  Shape s{x[0], x[1]};
  for (int i = 0; i < g.sp; ++i) s.push_back(g.out[3 - g.sp + i]);
  return s;
}

// The sum of n values in double, over 8 partial sums: one running sum would wait on each addition's
// latency (global average pooling of 8x8 planes ran at a tenth of memory speed).
template <class T>
double row_sum(const T* p, int64_t n) {
  double part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += p[i + j];
  double s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < n; ++i) s += p[i];
  return s;
}

// Calls fn(plane, out_index, windows[3]) for every output element, parallel over planes; the
// windows of each dim are computed once.
template <class F>
void for_each_window(const PoolGeom& g, Mode mode, F fn) {
  std::vector<Window> win[3];
  for (int d = 0; d < 3; ++d)
    for (int64_t o = 0; o < g.out[d]; ++o) win[d].push_back(window(g, mode, d, o));
  cpu::parallel_for(g.planes, g.grain(), [&](int64_t p0, int64_t p1) {
    Window w3[3];
    for (int64_t pl = p0; pl < p1; ++pl)
      for (int64_t od = 0; od < g.out[0]; ++od) {
        w3[0] = win[0][od];
        for (int64_t oh = 0; oh < g.out[1]; ++oh) {
          w3[1] = win[1][oh];
          const int64_t base = (od * g.out[1] + oh) * g.out[2];
          for (int64_t ow = 0; ow < g.out[2]; ++ow) {
            w3[2] = win[2][ow];
            fn(pl, base + ow, w3);
          }
        }
      }
  });
}

// Folds x[j] = val into a window's running maximum (best, at arg), keeping the first maximum and
// noting NaNs. Branch-free: the maximum's place in a window is random in real data, and a branch
// on it mispredicts half the time (it made pooling 20x slower).
template <class T>
inline void fold_max(T val, int64_t j, T& best, int64_t& arg, bool& nan) {
  const int64_t greater = -static_cast<int64_t>(val > best);
  arg = (j & greater) | (arg & ~greater);
  best = std::max(best, val);
  nan |= val != val;
}

// A window holding a NaN: its value is the first NaN, as in torch.
template <class T>
inline int64_t first_nan(const T* plane, int64_t lo, int64_t hi) {
  for (int64_t j = lo; j < hi; ++j)
    if (plane[j] != plane[j]) return j;
  return lo;
}

// 2-D (or 1-D) max pooling, the case of nearly every network: loops over rows and columns, with
// the window unrolled where it lies inside the image and clipped at the borders (padding).
bool plain_max_windows(const PoolGeom& g) { return g.in[0] == 1 && g.ker[0] == 1; }

// One plane's outputs in rows [oh0, oh1) and columns [ow0, ow1) (all of them by default). KH, KW,
// S > 0: the window's size and stride known at compile time (2x2 and 3x3, nearly every network's),
// which lets the compiler unroll the window (3x faster than the general loop). Every window holds
// at least one pixel (padding is at most half the kernel).
template <class T, int KH, int KW, int S>
void max_pool_plane(const T* plane, T* out, int64_t* idx, int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t kh_,
                    int64_t kw_, int64_t sh_, int64_t sw_, int64_t ph, int64_t pw, int64_t oh0 = 0, int64_t oh1 = -1,
                    int64_t ow0 = 0, int64_t ow1 = -1) {
  const int64_t kh = KH > 0 ? KH : kh_, kw = KW > 0 ? KW : kw_, sh = S > 0 ? S : sh_, sw = S > 0 ? S : sw_;
  if (oh1 < 0) oh1 = OH;
  if (ow1 < 0) ow1 = OW;
  for (int64_t oh = oh0; oh < oh1; ++oh)
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
      int64_t ha = h0, hb = h0 + kh, wa = w0, wb = w0 + kw;
      T best;
      int64_t arg;
      bool nan = false;
      if (h0 >= 0 && w0 >= 0 && hb <= H && wb <= W) {  // inside: the unrolled loop
        const int64_t base = h0 * W + w0;
        best = plane[base];
        arg = base;
        for (int64_t a = 0; a < kh; ++a)
          for (int64_t b = 0; b < kw; ++b) fold_max(plane[base + a * W + b], base + a * W + b, best, arg, nan);
      } else {  // a border window, clipped to the image
        ha = std::max<int64_t>(ha, 0), hb = std::min(hb, H), wa = std::max<int64_t>(wa, 0), wb = std::min(wb, W);
        arg = ha * W + wa;
        best = plane[arg];
        for (int64_t h = ha; h < hb; ++h)
          for (int64_t w = wa; w < wb; ++w) fold_max(plane[h * W + w], h * W + w, best, arg, nan);
      }
      for (int64_t h = std::max<int64_t>(ha, 0); nan && h < std::min(hb, H) && !(best != best); ++h) {
        arg = first_nan(plane, h * W + std::max<int64_t>(wa, 0), h * W + std::min(wb, W));
        best = plane[arg];
      }
      out[oh * OW + ow] = best;
      if (idx) idx[oh * OW + ow] = arg;
    }
}

// KxK windows (2x2 or 3x3), stride 2, float32, any padding: 16 outputs at a time for windows
// inside the image, from rows of 32 pixels split into even and odd columns, folded in window order
// with vector selects (as fold_max: the first maximum; a NaN, once seen, wins). Windows the padding
// clips at the top or bottom fold the rows inside; those it clips left or right take the scalar loop.
typedef float f16v __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));

template <int K, bool kIndices>
void max_pool_s2_plane(const float* plane, float* out, int64_t* idx, int64_t OH, int64_t OW, int64_t H, int64_t W,
                       int64_t ph, int64_t pw) {
  constexpr int64_t kLanes = 16;
  // Output columns whose 16-wide vector reads inside the row: windows start at 2 ow - pw >= 0 and
  // the loads (32 pixels from the start, and from start + 2 for a third column) end inside W.
  const int64_t ow_lo = (pw + 1) / 2, reach = K == 3 ? 34 : 32, last = W - reach + pw;  // 2 ow <= last
  const int64_t n_vec = last >= 2 * ow_lo ? (last / 2 - ow_lo) / kLanes + 1 : 0;
  const int64_t vec_end = ow_lo + n_vec * kLanes;
  // A last vector at the last start that reads inside the row, overlapping the one before it: only the
  // columns past it take the scalar loop.
  const int64_t tail = n_vec > 0 && last / 2 + kLanes > vec_end ? last / 2 : -1;
  const int64_t vec_done = tail >= 0 ? tail + kLanes : vec_end;
  for (int64_t oh = 0; oh < OH; ++oh) {
    // The window rows inside the image: all K but in the rows the padding clips (the first, the last).
    const int64_t h0 = 2 * oh - ph;
    const int a_lo = static_cast<int>(std::max<int64_t>(0, -h0)), a_hi = static_cast<int>(std::min<int64_t>(K, H - h0));
    if (n_vec == 0 || a_lo >= a_hi) {
      max_pool_plane<float, K, K, 2>(plane, out, idx, OH, OW, H, W, K, K, 2, 2, ph, pw, oh, oh + 1);
      continue;
    }
    // Values only: the columns the vectors leave (the first, the last few) folded here. Through
    // max_pool_plane, a call a row for a column or two took a third of a 112x112 plane's time.
    auto edge_at = [&](int64_t ow) {
      const int64_t w0 = std::max<int64_t>(0, 2 * ow - pw), w1 = std::min<int64_t>(W, 2 * ow - pw + K);
      float best = plane[(h0 + a_lo) * W + w0];
      bool nan = false;
      for (int a = a_lo; a < a_hi; ++a)
        for (int64_t v = w0; v < w1; ++v) {
          const float x = plane[(h0 + a) * W + v];
          best = std::max(best, x);
          nan |= x != x;
        }
      out[oh * OW + ow] = nan ? __builtin_nanf("") : best;
    };
    auto edges = [&](int64_t ow0, int64_t ow1) {  // columns [ow0, ow1) outside the vectors
      if constexpr (kIndices)
        max_pool_plane<float, K, K, 2>(plane, out, idx, OH, OW, H, W, K, K, 2, 2, ph, pw, oh, oh + 1, ow0, ow1);
      else
        for (int64_t ow = ow0; ow < ow1; ++ow) edge_at(ow);
    };
    if (ow_lo > 0) edges(0, ow_lo);  // (a call with nothing to do cost as much as a vector: 32x32 has one a row)
    auto vector_at = [&](int64_t ow) {
      const int64_t base = h0 * W + 2 * ow - pw;  // negative in a clipped first row: a starts past it
      f16v best{};  // set by the first window row (a_lo < a_hi), which the compiler cannot see
      i16v arg{}, nan{};
      for (int a = a_lo; a < a_hi; ++a) {
        f16v col[3];  // the window row's pixels b = 0, 1 (, 2) of each of the 16 windows
        f16v lo, hi;
        std::memcpy(&lo, plane + base + a * W, sizeof lo);
        std::memcpy(&hi, plane + base + a * W + kLanes, sizeof hi);
        col[0] = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        col[1] = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        if constexpr (K == 3) {
          std::memcpy(&lo, plane + base + a * W + 2, sizeof lo);
          std::memcpy(&hi, plane + base + a * W + 2 + kLanes, sizeof hi);
          col[2] = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        }
        for (int b = 0; b < K; ++b) {
          const i16v offset = i16v{} + static_cast<int32_t>(a * W + b);
          if (a == a_lo && b == 0) {
            best = col[0], arg = offset, nan = col[0] != col[0];
            continue;
          }
          if constexpr (kIndices) {
            const i16v take = (col[b] > best) | ((col[b] != col[b]) & (best == best));
            best = take ? col[b] : best;
            arg = take ? offset : arg;
          } else {  // values only: a plain maximum, and the windows that saw a NaN made NaN at the end
            best = best > col[b] ? best : col[b];
            nan |= col[b] != col[b];
          }
        }
      }
      if constexpr (!kIndices) {
        const f16v quiet = f16v{} + __builtin_nanf("");
        best = nan != 0 ? quiet : best;
      }
      std::memcpy(out + oh * OW + ow, &best, sizeof best);
      if constexpr (kIndices)
        for (int64_t l = 0; l < kLanes; ++l) idx[oh * OW + ow + l] = base + 2 * l + arg[l];
    };
    for (int64_t ow = ow_lo; ow < vec_end; ow += kLanes) vector_at(ow);
    if (tail >= 0) vector_at(tail);
    if (vec_done < OW) edges(vec_done, OW);
  }
}

template <class T>
void max_pool_plain(const PoolGeom& g, const T* in, T* out, int64_t* idx) {
  const int64_t I = g.I(), P = g.P();
  cpu::parallel_for(g.planes, g.grain(), [&](int64_t p0, int64_t p1) {
    auto plane_fn = max_pool_plane<T, 0, 0, 0>;
    const bool stride2 = g.stride[1] == 2 && g.stride[2] == 2;
    if (g.ker[1] == 2 && g.ker[2] == 2) plane_fn = stride2 ? max_pool_plane<T, 2, 2, 2> : max_pool_plane<T, 2, 2, 0>;
    if (g.ker[1] == 3 && g.ker[2] == 3) plane_fn = stride2 ? max_pool_plane<T, 3, 3, 2> : max_pool_plane<T, 3, 3, 0>;
    for (int64_t pl = p0; pl < p1; ++pl) {
      if constexpr (std::is_same_v<T, float>)
        if (stride2 && g.ker[1] == g.ker[2] && (g.ker[1] == 2 || g.ker[1] == 3)) {
          auto s2 = g.ker[1] == 2 ? (idx ? max_pool_s2_plane<2, true> : max_pool_s2_plane<2, false>)
                                  : (idx ? max_pool_s2_plane<3, true> : max_pool_s2_plane<3, false>);
          s2(in + pl * I, out + pl * P, idx ? idx + pl * P : nullptr, g.out[1], g.out[2], g.in[1], g.in[2], g.pad[1],
             g.pad[2]);
          continue;
        }
      plane_fn(in + pl * I, out + pl * P, idx ? idx + pl * P : nullptr, g.out[1], g.out[2], g.in[1], g.in[2], g.ker[1],
               g.ker[2], g.stride[1], g.stride[2], g.pad[1], g.pad[2], 0, -1, 0, -1);
    }
  });
}

template <Mode mode>
void pool_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  PoolGeom g = make_pool(x.shape(), c.attrs, mode, "pool");
  const bool is_max = mode == Mode::max || mode == Mode::adaptive_max;
  int64_t* idx = is_max ? c.output(1).data<int64_t>() : nullptr;
  if (mode == Mode::max && plain_max_windows(g)) {
    // values_only: set by the compiler where nothing reads the indices (inference)
    int64_t* wanted = c.attrs.i("values_only", 0) ? nullptr : idx;
    KILN_DISPATCH_FLOAT(x.dtype(), "pool", max_pool_plain(g, x.data<scalar_t>(), c.output(0).data<scalar_t>(), wanted));
    return;
  }
  KILN_DISPATCH_FLOAT(x.dtype(), "pool", {
    const scalar_t* in = x.data<scalar_t>();
    scalar_t* out = c.output(0).data<scalar_t>();
    const int64_t I = g.I(), P = g.P();
    for_each_window(g, mode, [&](int64_t pl, int64_t o, const Window* w) {
      const scalar_t* plane = in + pl * I;
      if (is_max) {
        const int64_t in1 = g.in[1], in2 = g.in[2];
        int64_t arg = (w[0].lo * in1 + w[1].lo) * in2 + w[2].lo;
        scalar_t best = plane[arg];
        bool nan = false;
        for (int64_t d = w[0].lo; d < w[0].hi; ++d)
          for (int64_t h = w[1].lo; h < w[1].hi; ++h) {
            const int64_t row = (d * in1 + h) * in2;
            for (int64_t v = w[2].lo; v < w[2].hi; ++v) fold_max(plane[row + v], row + v, best, arg, nan);
          }
        for (int64_t d = w[0].lo; nan && d < w[0].hi; ++d)
          for (int64_t h = w[1].lo; h < w[1].hi && !(best != best); ++h) {
            const int64_t row = (d * in1 + h) * in2;
            arg = first_nan(plane, row + w[2].lo, row + w[2].hi);
            best = plane[arg];
          }
        out[pl * P + o] = best;
        idx[pl * P + o] = arg;
      } else {
        double s = 0;
        const bool whole_rows = w[2].lo == 0 && w[2].hi == g.in[2];  // then the window's rows are one run
        for (int64_t d = w[0].lo; d < w[0].hi; ++d)
          if (whole_rows)  // global average pooling: 8x8 planes 2x faster so
            s += row_sum(plane + (d * g.in[1] + w[1].lo) * g.in[2], (w[1].hi - w[1].lo) * g.in[2]);
          else
            for (int64_t h = w[1].lo; h < w[1].hi; ++h)
              s += row_sum(plane + (d * g.in[1] + h) * g.in[2] + w[2].lo, w[2].hi - w[2].lo);
        int64_t count = w[0].count * w[1].count * w[2].count;
        out[pl * P + o] = scalar_t(count ? s / count : 0.0);
      }
    });
  });
}

// max_pool_grad(gy, indices, x_ref): scatters gy to the argmax of each window.
void max_pool_grad_kernel(const KernelContext& c) {
  const Tensor &gy = c.input(0), &idx = c.input(1);
  Tensor& dx = c.output(0);
  const int64_t planes = dx.shape()[0] * dx.shape()[1];
  const int64_t I = planes ? dx.numel() / planes : 0, P = planes ? gy.numel() / planes : 0;
  std::memset(dx.raw(), 0, dx.nbytes());
  KILN_DISPATCH_FLOAT(gy.dtype(), "max_pool_grad", {
    const scalar_t* g = gy.data<scalar_t>();
    const int64_t* ix = idx.data<int64_t>();
    scalar_t* d = dx.data<scalar_t>();
    cpu::parallel_for(planes, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t pl = p0; pl < p1; ++pl)
        for (int64_t o = 0; o < P; ++o) {
          int64_t i = ix[pl * P + o];
          if (i >= 0 && i < I) d[pl * I + i] += g[pl * P + o];
        }
    });
  });
}

// avg_pool_grad(gy, x_ref): spreads each gradient evenly over its window.
template <Mode mode>
void avg_pool_grad_kernel(const KernelContext& c) {
  const Tensor& gy = c.input(0);
  Tensor& dx = c.output(0);
  PoolGeom g = make_pool(dx.shape(), c.attrs, mode, "avg_pool_grad");
  std::memset(dx.raw(), 0, dx.nbytes());
  KILN_DISPATCH_FLOAT(gy.dtype(), "avg_pool_grad", {
    const scalar_t* gp = gy.data<scalar_t>();
    scalar_t* d = dx.data<scalar_t>();
    const int64_t I = g.I(), P = g.P();
    for_each_window(g, mode, [&](int64_t pl, int64_t o, const Window* w) {
      int64_t count = w[0].count * w[1].count * w[2].count;
      if (!count) return;
      scalar_t share = gp[pl * P + o] / scalar_t(count);
      scalar_t* plane = d + pl * I;
      for (int64_t a = w[0].lo; a < w[0].hi; ++a)
        for (int64_t h = w[1].lo; h < w[1].hi; ++h)
          for (int64_t v = w[2].lo; v < w[2].hi; ++v) plane[(a * g.in[1] + h) * g.in[2] + v] += share;
    });
  });
}

// ---- upsampling ----

// The source coordinate of output index o along a dim, as torch: the step is in / out, or
// 1 / scale_factor when the user gave one (scale > 0).
double source_coord(int64_t o, int64_t in, int64_t out, bool align_corners, bool nearest, double scale) {
  const double step = scale > 0 ? 1.0 / scale : static_cast<double>(in) / out;
  if (nearest) return std::min<double>(std::floor(o * step), in - 1);
  if (align_corners) return out > 1 ? o * (static_cast<double>(in - 1) / (out - 1)) : 0.0;
  double s = (o + 0.5) * step - 0.5;
  return s < 0 ? 0.0 : s;
}

struct Lerp {
  int64_t i0, i1;
  double w1;  // weight of i1
};
Lerp lerp(int64_t o, int64_t in, int64_t out, bool align_corners, double scale) {
  double s = source_coord(o, in, out, align_corners, false, scale);
  int64_t i0 = std::min<int64_t>(static_cast<int64_t>(s), in - 1);
  int64_t i1 = std::min<int64_t>(i0 + 1, in - 1);
  return {i0, i1, s - i0};
}

// upsample(x) with attrs size (spatial output dims), mode nearest|linear (linear: 1-3 dims,
// bilinear for 2-d), align_corners; `backward` runs the adjoint (input: gy, x_ref; output dx).
template <bool backward>
void upsample_kernel(const KernelContext& c) {
  const Tensor& src = c.input(0);
  Tensor& dst = c.output(0);
  const Tensor& big = backward ? src : dst;  // the upsampled side
  const Tensor& small = backward ? dst : src;
  const int sp = small.rank() - 2;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  for (int i = 0; i < sp; ++i) {
    in[3 - sp + i] = small.shape()[2 + i];
    out[3 - sp + i] = big.shape()[2 + i];
  }
  const bool nearest = c.attrs.s("mode") == "nearest", align = c.attrs.i("align_corners", 0) != 0;
  const int64_t planes = small.shape()[0] * small.shape()[1];
  const int64_t I = in[0] * in[1] * in[2], P = out[0] * out[1] * out[2];
  std::vector<Lerp> maps[3];  // per dim and output index: two sources and a weight
  for (int d = 0; d < 3; ++d) {
    const int user_dim = d - (3 - sp);
    const double scale = user_dim >= 0 ? c.attrs.f("scale" + std::to_string(user_dim), 0.0) : 0.0;
    for (int64_t o = 0; o < out[d]; ++o) {
      if (nearest) {
        int64_t s = static_cast<int64_t>(source_coord(o, in[d], out[d], false, true, scale));
        maps[d].push_back({s, s, 0.0});
      } else {
        maps[d].push_back(lerp(o, in[d], out[d], align, scale));
      }
    }
  }
  if (backward) std::memset(dst.raw(), 0, dst.nbytes());
  KILN_DISPATCH_FLOAT(src.dtype(), "upsample", {
    const scalar_t* s = src.data<scalar_t>();
    scalar_t* d = dst.data<scalar_t>();
    cpu::parallel_for(planes, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t pl = p0; pl < p1; ++pl)
        for (int64_t od = 0; od < out[0]; ++od)
          for (int64_t oh = 0; oh < out[1]; ++oh)
            for (int64_t ow = 0; ow < out[2]; ++ow) {
              const Lerp &ld = maps[0][od], &lh = maps[1][oh], &lw = maps[2][ow];
              const int64_t o = pl * P + (od * out[1] + oh) * out[2] + ow;
              double acc = 0, gy = backward ? double(s[o]) : 0.0;
              for (int a = 0; a < 2; ++a) {
                double wa = a ? ld.w1 : 1 - ld.w1;
                if (wa == 0) continue;
                for (int b = 0; b < 2; ++b) {
                  double wb = b ? lh.w1 : 1 - lh.w1;
                  if (wb == 0) continue;
                  for (int e = 0; e < 2; ++e) {
                    double we = e ? lw.w1 : 1 - lw.w1;
                    if (we == 0) continue;
                    int64_t i =
                        pl * I + ((a ? ld.i1 : ld.i0) * in[1] + (b ? lh.i1 : lh.i0)) * in[2] + (e ? lw.i1 : lw.i0);
                    if (backward)
                      d[i] += scalar_t(gy * wa * wb * we);
                    else
                      acc += wa * wb * we * s[i];
                  }
                }
              }
              if (!backward) d[o] = scalar_t(acc);
            }
    });
  });
}

std::vector<AttrSpec> pool_attrs() {
  return {{"kernel", true}, {"stride", true}, {"padding", true}, {"ceil_mode"}, {"count_include_pad"}};
}

void add_pool(OpRegistry& r, const std::string& name, Mode mode, KernelFn k) {
  OpDef d;
  d.name = name;
  d.attrs = is_adaptive(mode) ? std::vector<AttrSpec>{{"output_size", true}} : pool_attrs();
  const bool is_max = mode == Mode::max || mode == Mode::adaptive_max;
  if (mode == Mode::max) d.attrs.push_back({"values_only"});  // set by the compiler where no one reads the indices
  d.infer = [mode, is_max, name](const Specs& in, const Attrs& a) {
    if (!is_floating(in[0].dtype)) throw Error(name + ": expects a float tensor, got " + in[0].str());
    Shape out = pool_out_shape(in[0].shape, make_pool(in[0].shape, a, mode, name.c_str()));
    Specs s{{in[0].dtype, out}};
    if (is_max) s.push_back({DType::int64, out});
    return s;
  };
  d.cpu = k;
  d.vjp = [mode, is_max](C c) {
    if (!c.grads[0].valid()) return std::vector<Value>{Value{}};
    if (is_max) return std::vector<Value>{c.graph.apply1("max_pool_grad", {c.grads[0], c.outputs[1], c.inputs[0]})};
    return std::vector<Value>{c.graph.apply1(mode == Mode::avg ? "avg_pool_grad" : "adaptive_avg_pool_grad",
                                             {c.grads[0], c.inputs[0]}, c.attrs())};
  };
  r.add(std::move(d));
}

}  // namespace

void register_pool_ops(OpRegistry& r) {
  add_pool(r, "max_pool", Mode::max, pool_kernel<Mode::max>);
  add_pool(r, "avg_pool", Mode::avg, pool_kernel<Mode::avg>);
  add_pool(r, "adaptive_max_pool", Mode::adaptive_max, pool_kernel<Mode::adaptive_max>);
  add_pool(r, "adaptive_avg_pool", Mode::adaptive_avg, pool_kernel<Mode::adaptive_avg>);

  OpDef mg;
  mg.name = "max_pool_grad";
  mg.num_inputs = 3;
  mg.shape_only_from = 2;
  mg.infer = [](const Specs& in, const Attrs&) {  // (gy, indices, x): the indices shaped like gy
    require_like(in[1], {DType::int64, in[0].shape}, "the indices");
    const Shape &g = in[0].shape, &x = in[2].shape;
    if (!is_floating(in[0].dtype) || in[2].dtype != in[0].dtype || g.rank() != x.rank() || g.rank() < 3 ||
        !dims_compatible(g[0], x[0]) || !dims_compatible(g[1], x[1]))
      throw Error("expects a gradient and an input (N, C, ...) of one float dtype, got " + specs_str(in));
    return Specs{{in[0].dtype, in[2].shape}};
  };
  mg.cpu = max_pool_grad_kernel;
  mg.vjp = [](C c) {  // linear in gy: gather at the same indices
    Value g = c.grads[0];
    Value flat = reshape(g, {g.shape()[0] < 0 ? -1 : g.shape()[0], g.shape()[1], -1});
    Value idx = c.inputs[1];
    Value picked = gather(flat, reshape(idx, {idx.shape()[0] < 0 ? -1 : idx.shape()[0], idx.shape()[1], -1}), 2);
    return std::vector<Value>{reshape_like(picked, c.inputs[0]), Value{}, Value{}};
  };
  r.add(std::move(mg));

  for (bool adaptive : {false, true}) {
    OpDef ag;
    ag.name = adaptive ? "adaptive_avg_pool_grad" : "avg_pool_grad";
    ag.attrs = adaptive ? std::vector<AttrSpec>{{"output_size", true}} : pool_attrs();
    ag.num_inputs = 2;
    ag.shape_only_from = 1;
    ag.infer = [adaptive](const Specs& in, const Attrs& a) {  // (gy, x)
      require_like(in[0], forward_specs(adaptive ? "adaptive_avg_pool" : "avg_pool", {in[1]}, a)[0], "the gradient");
      return Specs{{in[0].dtype, in[1].shape}};
    };
    ag.cpu = adaptive ? avg_pool_grad_kernel<Mode::adaptive_avg> : avg_pool_grad_kernel<Mode::avg>;
    ag.vjp = [adaptive](C c) {  // linear: the pooling itself
      return std::vector<Value>{c.graph.apply(adaptive ? "adaptive_avg_pool" : "avg_pool", {c.grads[0]}, c.attrs())[0],
                                Value{}};
    };
    r.add(std::move(ag));
  }

  OpDef up;
  up.name = "upsample";
  up.attrs = {{"size", true}, {"mode", true}, {"align_corners"}, {"scale0"}, {"scale1"}, {"scale2"}};
  up.infer = [](const Specs& in, const Attrs& a) {
    const Shape& x = in[0].shape;
    const auto& size = a.ints("size");
    const std::string& mode = a.s("mode");
    if (mode != "nearest" && mode != "linear") throw Error("mode must be 'nearest' or 'linear', got '" + mode + "'");
    if (x.rank() < 3 || x.rank() > 5 || static_cast<int>(size.size()) != x.rank() - 2)
      throw Error("expects (N, C, ...) input with 1-3 spatial dims and one size per dim, got " + x.str() + " and " +
                  std::to_string(size.size()) + " sizes");
    if (!is_floating(in[0].dtype)) throw Error("expects a float tensor, got " + in[0].str());
    Shape out{x[0], x[1]};
    for (int64_t s : size) {
      if (s < 1) throw Error("output sizes must be positive");
      out.push_back(s);
    }
    return Specs{{in[0].dtype, out}};
  };
  up.cpu = upsample_kernel<false>;
  up.vjp = [](C c) {
    return std::vector<Value>{c.graph.apply1("upsample_grad", {c.grads[0], c.inputs[0]}, c.attrs())};
  };
  r.add(std::move(up));

  OpDef ug;
  ug.name = "upsample_grad";
  ug.attrs = {{"size", true}, {"mode", true}, {"align_corners"}, {"scale0"}, {"scale1"}, {"scale2"}};
  ug.num_inputs = 2;
  ug.shape_only_from = 1;
  ug.infer = [](const Specs& in, const Attrs& a) {  // (gy, x)
    require_like(in[0], forward_specs("upsample", {in[1]}, a)[0], "the gradient");
    return Specs{{in[0].dtype, in[1].shape}};
  };
  ug.cpu = upsample_kernel<true>;
  ug.vjp = [](C c) { return std::vector<Value>{c.graph.apply1("upsample", {c.grads[0]}, c.attrs()), Value{}}; };
  r.add(std::move(ug));
}

}  // namespace kiln
