// Strided 1x1 convolutions (float32, 2-D, one group, no padding): a ResNet's downsampling shortcuts. The
// output rows' input pixels are gathered into a contiguous [channel][pixel] copy (a stride of 2 as the
// even lanes of two vector loads), and a GEMM with 16 pixels a vector multiplies it by the weights, in
// register blocks of 8 filters x up to 3 vectors: each filter's outputs are stored as they are laid
// out, with no transposition. The filter-lane kernel (conv_lanes.cpp) took these layers at twice
// ORT's time: a block of 16 multiply-adds a channel stored 32 filters x 8 pixels transposed, which
// cost as much as the products.
#include <algorithm>

#include "cpu/vec.h"
#include "cpu/weight_cache.h"
#include "ops/conv_geom.h"

namespace kiln::conv {
namespace {

using cpu::load;
using cpu::splat;
using cpu::store;
using cpu::v16;

constexpr int64_t kLanes = 16;
constexpr int64_t kFilters = 8;     // filters per register block
constexpr int64_t kMaxVectors = 3;  // vectors of pixels per register block: 24 accumulators

struct Pointwise {
  int64_t n, c, h, w, k, oh, ow, sh, sw;
  int64_t k8() const { return (k + kFilters - 1) / kFilters * kFilters; }
  int64_t packed() const { return k8() * c; }
  // The gathered copy of output rows [r0, r1): a channel's pixels rounded up to whole vectors.
  int64_t pitch(int64_t rows) const { return (rows * ow + kLanes - 1) / kLanes * kLanes; }
  int64_t gathered(int64_t rows) const { return c * pitch(rows); }
};

Pointwise pointwise_of(const Geom& g) {
  return Pointwise{g.n, g.c, g.in[1], g.in[2], g.k, g.out[1], g.out[2], g.stride[1], g.stride[2]};
}

// packed[k / 8][c][k % 8] = w[k][c], zero past the last filter.
void pack(const Pointwise& d, const float* w, float* packed) {
  for (int64_t k = 0; k < d.k8(); ++k)
    for (int64_t c = 0; c < d.c; ++c)
      packed[((k / kFilters) * d.c + c) * kFilters + k % kFilters] = k < d.k ? w[k * d.c + c] : 0.f;
}

// xs[c][(r - r0) ow + j] = x[c][r sh][j sw] for output rows [r0, r1), zero to the end of each channel's pitch.
void gather(const Pointwise& d, const float* x, int64_t r0, int64_t r1, float* xs) {
  const int64_t pitch = d.pitch(r1 - r0);
  for (int64_t c = 0; c < d.c; ++c) {
    float* dst = xs + c * pitch;
    for (int64_t r = r0; r < r1; ++r, dst += d.ow) {
      const float* src = x + (c * d.h + r * d.sh) * d.w;
      int64_t j = 0;
      if (d.sw == 2) {  // whole vectors where the loads stay in the row
        for (; (j + kLanes) * 2 <= d.w && j + kLanes <= d.ow; j += kLanes) {
          const v16 a = load(src + 2 * j), b = load(src + 2 * j + kLanes);
          store(dst + j, __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
        }
        for (; (j + 8) * 2 <= d.w && j + 8 <= d.ow; j += 8) {
          const v16 a = load(src + 2 * j);
          store(dst + j, __builtin_shufflevector(a, a, 0, 2, 4, 6, 8, 10, 12, 14));
        }
      }
      for (; j < d.ow; ++j) dst[j] = src[j * d.sw];
    }
    std::fill(xs + c * pitch + (r1 - r0) * d.ow, xs + (c + 1) * pitch, 0.f);
  }
}

// The outputs of 8 filters (k0 on, of which nk exist) at NV vectors of pixels from p (np of them real):
// sums over c of u[c][f] xs[c][p], then the epilogue; y, e's residual: the sample's.
template <int NV>
void block(const Pointwise& d, const float* u, const float* xs, int64_t pitch, int64_t k0, int64_t nk, int64_t p,
           int64_t np, const Epilogue& e, float* y) {
  v16 acc[kFilters][NV];
#pragma GCC unroll 8
  for (int f = 0; f < kFilters; ++f)
    for (int j = 0; j < NV; ++j) acc[f][j] = splat(0.f);
  for (int64_t c = 0; c < d.c; ++c) {
    v16 x[NV];
    for (int j = 0; j < NV; ++j) x[j] = load(xs + c * pitch + j * kLanes);
#pragma GCC unroll 8
    for (int f = 0; f < kFilters; ++f) {
      const v16 s = splat(u[c * kFilters + f]);
      for (int j = 0; j < NV; ++j) acc[f][j] += s * x[j];
    }
  }
  const int64_t P = d.oh * d.ow;
  for (int f = 0; f < nk; ++f) {
    const int64_t k = k0 + f;
    const float scale = e.scale ? e.scale[k] : 1.f, bias = e.bias ? e.bias[k] : 0.f;
    for (int j = 0; j < NV; ++j) {
      const int64_t at = k * P + p + j * kLanes, m = std::min(kLanes, np - j * kLanes);
      if (m <= 0) break;
      store_outputs(y + at, e.residual ? e.residual + at : nullptr, acc[f][j] * scale + bias, m, e.relu);
    }
  }
}

// Output rows [r0, r1) of one sample (x, e and y the sample's), every filter, on this thread; xs takes the
// gathered input.
void rows_of_sample(const Pointwise& d, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0,
                    int64_t r1, float* xs) {
  gather(d, x, r0, r1, xs);
  const int64_t pitch = d.pitch(r1 - r0), pixels = (r1 - r0) * d.ow, vectors = pitch / kLanes;
  const int64_t groups = (vectors + kMaxVectors - 1) / kMaxVectors;  // as even as they come (4: 2 and 2)
  for (int64_t b = 0; b < d.k8() / kFilters; ++b) {
    const float* u = packed + b * d.c * kFilters;  // in L1 across the groups
    const int64_t k0 = b * kFilters, nk = std::min(kFilters, d.k - k0);
    for (int64_t i = 0; i < groups; ++i) {
      const int64_t v0 = vectors * i / groups, nv = vectors * (i + 1) / groups - v0, p = v0 * kLanes;
      const float* xv = xs + p;
      const int64_t np = pixels - p, at = r0 * d.ow + p;
      if (nv == 3)
        block<3>(d, u, xv, pitch, k0, nk, at, np, e, y);
      else if (nv == 2)
        block<2>(d, u, xv, pitch, k0, nk, at, np, e, y);
      else
        block<1>(d, u, xv, pitch, k0, nk, at, np, e, y);
    }
  }
}

cpu::DerivedShape shape_key(const Pointwise& d) { return cpu::DerivedShape{d.k, d.c, 1, -kFilters}; }

}  // namespace

bool pointwise_applies(const Geom& g) {
  return g.sp == 2 && g.groups == 1 && g.ker[1] == 1 && g.ker[2] == 1 && (g.stride[1] > 1 || g.stride[2] > 1) &&
         g.pad[1] == 0 && g.pad[2] == 0 && g.out[1] > 0 && g.out[2] > 0 && g.c > 0 && g.k > 0;
}

// The packed weights (unless cached), then a sample's gathered input per thread.
size_t pointwise_workspace(const Geom& g) {
  const Pointwise d = pointwise_of(g);
  return static_cast<size_t>(d.packed() + d.gathered(d.oh) * cpu::num_threads()) * sizeof(float);
}

void pointwise_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& epilogue,
                       float* y, float* ws, size_t ws_bytes) {
  const Pointwise d = pointwise_of(g);
  cpu::Derived cached;  // a variable's weights in an inference call: packed once
  const float* packed = cpu::packed_weights(w, w_stamp, shape_key(d), static_cast<size_t>(d.packed()), ws, cached,
                                            [&](float* out) { pack(d, w, out); });
  const int64_t slots = static_cast<int64_t>(ws_bytes / sizeof(float) - d.packed()) / d.gathered(d.oh);
  const int64_t x_sample = d.c * d.h * d.w, y_sample = d.k * d.oh * d.ow;
  // Whole samples a thread; one sample in bands of rows.
  const int64_t parts = std::min({slots, int64_t(cpu::num_threads()), d.n == 1 ? d.oh : d.n});
  run_parts(parts, [&](int64_t part) {
    float* xs = ws + d.packed() + part * d.gathered(d.oh);
    if (d.n == 1) return rows_of_sample(d, x, packed, epilogue, y, d.oh * part / parts, d.oh * (part + 1) / parts, xs);
    for (int64_t n = d.n * part / parts; n < d.n * (part + 1) / parts; ++n)
      rows_of_sample(d, x + n * x_sample, packed, at_sample(epilogue, n * y_sample), y + n * y_sample, 0, d.oh, xs);
  });
}

cpu::Derived pointwise_packed(const Geom& g, const float* w, uint64_t w_stamp) {
  const Pointwise d = pointwise_of(g);
  return cpu::derived_weights(w, w_stamp, shape_key(d), static_cast<size_t>(d.packed()),
                              [&](float* out) { pack(d, w, out); });
}

size_t pointwise_rows_buffer(const Geom& g) {
  const Pointwise d = pointwise_of(g);
  return static_cast<size_t>(d.gathered(d.oh));
}

void pointwise_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0,
                    int64_t r1, float* buf) {
  rows_of_sample(pointwise_of(g), x, packed, e, y, r0, r1, buf);
}

}  // namespace kiln::conv
