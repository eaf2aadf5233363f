// Direct stride-1 convolution of float32 images (1-D and 2-D): the forward, the input gradient (a
// direct convolution of the output gradient with the flipped, transposed weights) and the weight
// gradient. No im2col: each sample is copied once into a zero-padded buffer, and register-blocked
// kernels keep 8 filters x 3 vectors of 16 output pixels in 24 accumulators, so each input vector
// is loaded once per tap and block and each weight once per block: the loop of oneDNN's direct
// convolution. A vector is 16 pixels of one output row, or, for images 8 or 4 pixels wide, 2 or 4
// whole rows. Written with the compiler's vector extension it needs no intrinsics; -march=native
// (KILN_NATIVE) makes each vector operation one AVX-512 instruction.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/vec.h"
#include "cpu/weight_cache.h"
#include "ops/conv_geom.h"

namespace kiln::conv {
namespace {

using cpu::load;
using cpu::splat;
using cpu::v16;
using cpu::v4;
using cpu::v8;
constexpr int64_t kLanes = 16;    // output pixels per vector
constexpr int64_t kFilters = 8;   // filters per register block
constexpr int64_t kMaxTaps = 64;  // kernels up to 8x8 (larger ones take the GEMM paths)

// 16 pixels: R rows of 16 / R pixels, `pitch` apart.
template <int R>
inline v16 load_rows(const float* p, int64_t pitch) {
  if constexpr (R == 1) {
    return load<v16>(p);
  } else if constexpr (R == 2) {
    return __builtin_shufflevector(load<v8>(p), load<v8>(p + pitch), 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                   15);
  } else {
    static_assert(R == 4);
    const v8 a = __builtin_shufflevector(load<v4>(p), load<v4>(p + pitch), 0, 1, 2, 3, 4, 5, 6, 7);
    const v8 b = __builtin_shufflevector(load<v4>(p + 2 * pitch), load<v4>(p + 3 * pitch), 0, 1, 2, 3, 4, 5, 6, 7);
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Output rows per vector: 1 for rows of 12 or more pixels (the last vector of a row partly
// empty), 2 for rows of 5 to 8 and 4 for rows of 2 to 4 (each row in 8 or 4 lanes, the lanes past
// a narrower row computed and dropped: 7x7 images use 14 of 16); 0 where the direct kernels do
// not apply.
int rows_per_vector(int64_t ow) { return ow >= 12 ? 1 : ow >= 5 && ow <= 8 ? 2 : ow >= 2 && ow <= 4 ? 4 : 0; }

// One direct convolution, stride 1: y (N, K, OH, OW) = conv(x (N, C, H, W) padded by (pt, pl)
// on the top and left, weights w[k][c][kh][kw] of `groups` groups) + bias.
struct Direct {
  int64_t n, c, h, w, k, oh, ow, kh, kw, dh, dw, pt, pl, groups;
  int64_t R() const { return rows_per_vector(ow); }
  int64_t cg() const { return c / groups; }
  int64_t kg() const { return k / groups; }
  int64_t taps() const { return kh * kw; }
  int64_t blocks() const { return (kg() + kFilters - 1) / kFilters; }  // filter blocks per group
  // The padded input: hp rows of wq, whole vectors of output pixels reading inside it.
  int64_t hp() const { return round_up(oh, R()) + dh * (kh - 1); }
  int64_t lanes_per_row() const { return kLanes / R(); }
  bool narrow() const { return R() > 1 && ow < lanes_per_row(); }  // rows that leave lanes over
  int64_t wq() const { return (R() == 1 ? round_up(ow, kLanes) : lanes_per_row()) + dw * (kw - 1); }
  int64_t plane() const { return hp() * wq(); }
  Padding padding() const { return {h, w, hp(), wq(), pt, pl}; }
  int64_t padded() const { return c * plane(); }
  // Output vectors per channel, and where vector v's pixels sit in the padded input and the output.
  int64_t per_row() const { return (ow + kLanes - 1) / kLanes; }
  int64_t vectors() const { return R() == 1 ? oh * per_row() : (oh + R() - 1) / R(); }
  int64_t x_at(int64_t v) const {
    return R() == 1 ? (v / per_row()) * wq() + (v % per_row()) * kLanes : v * R() * wq();
  }
  int64_t y_at(int64_t v) const { return R() == 1 ? (v / per_row()) * ow + (v % per_row()) * kLanes : v * R() * ow; }
  int64_t y_count(int64_t v) const {
    return R() == 1 ? std::min(kLanes, ow - (v % per_row()) * kLanes) : std::min(kLanes, (oh - v * R()) * ow);
  }
  int64_t kg16() const { return round_up(kg(), kLanes); }  // a group's filters in whole vectors
  int64_t packed() const { return groups * blocks() * cg() * taps() * kFilters; }
  void tap_offsets(int64_t* off) const {
    for (int64_t t = 0; t < taps(); ++t) off[t] = (t / kw) * dh * wq() + (t % kw) * dw;
  }
};

// packed[grp][block][c][tap][8]: a block's 8 weights of one input channel and tap side by side
// (zero for filters past the group's last). flip_transpose: the input gradient's weights,
// w'[c][k][tap] = w[k][c][taps - 1 - tap], read from the forward's (K, C/groups, ...) array, whose
// filters are this convolution's channels and the other way round.
// Packs block j = (group, filter block) only: the jobs pack their own blocks, in parallel.
void pack_block(const Direct& d, const float* w, bool flip_transpose, int64_t j, float* packed) {
  const int64_t cg = d.cg(), kg = d.kg(), T = d.taps(), grp = j / d.blocks(), k0 = j % d.blocks() * kFilters;
  float* out = packed + j * cg * T * kFilters;
  std::fill(out, out + cg * T * kFilters, 0.f);
  for (int64_t k = k0; k < std::min(kg, k0 + kFilters); ++k)
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t t = 0; t < T; ++t)
        out[(c * T + t) * kFilters + k - k0] =
            flip_transpose ? w[((grp * cg + c) * kg + k) * T + (T - 1 - t)] : w[((grp * kg + k) * cg + c) * T + t];
}

// The sample's input, zero-padded: buf[c][hp][wq] with x at (pt, pl).
void pad_sample(const Direct& d, const float* x, float* buf) { pad_rows(d.padding(), x, buf, 0, d.c, 0, d.hp()); }

// The sample's output gradient transposed, pixels by filters: buf[p][grp][kg16], zero for the
// lanes past a group's filters.
void transpose_grad(const Direct& d, const float* gy, float* buf) {
  const int64_t P = d.oh * d.ow, kg = d.kg(), kg16 = d.kg16(), row = d.groups * kg16;
  if (kg16 != kg) std::fill(buf, buf + P * row, 0.f);
  constexpr int64_t kTile = 16;  // 16 x 16 tiles: the 16 rows written stay in L1
  for (int64_t p0 = 0; p0 < P; p0 += kTile)
    for (int64_t k0 = 0; k0 < d.k; k0 += kTile) {
      const int64_t p1 = std::min(P, p0 + kTile), k1 = std::min(d.k, k0 + kTile);
      for (int64_t k = k0; k < k1; ++k) {
        float* dst = buf + (k / kg) * kg16 + k % kg;
        const float* src = gy + k * P;
        for (int64_t p = p0; p < p1; ++p) dst[p * row] = src[p];
      }
    }
}

// Stores `count` lanes of a vector to dst: part of a vector (the end of a row, or one row of a vector
// holding several), out of the hot loop. A residual is added to what was just stored
// (still in L1), and the ReLU after it: a vector of it would read past the last row of the array.
__attribute__((noinline)) void store_lanes(float* dst, const float* lanes, int64_t count, const float* residual,
                                           bool relu) {
  std::memcpy(dst, lanes, count * sizeof(float));
  if (!residual) return;
  for (int64_t q = 0; q < count; ++q) {
    const float v = dst[q] + residual[q];
    dst[q] = relu && !(v > 0) ? 0.f : v;
  }
}

// y[k][...] for filters [k0, k0 + 8) of group grp and vectors [vb, ve) of the padded samples (vector
// v is vector v % V of sample v / V): blocks of KV vectors (3, or 2 where that wastes fewer: the 4
// vectors of one 7x7 image) run across the samples, so small images fill every block.
template <int R, int KV>
void forward_block(const Direct& d, const float* xp, int64_t vb, int64_t ve, const float* wblock, int64_t grp,
                   int64_t k0, const Epilogue& e, float* y) {
  const float *bias = e.bias, *scale = e.scale;
  constexpr int64_t kVectors = KV;
  const int64_t cg = d.cg(), T = d.taps(), wq = d.wq(), plane = d.plane(), V = d.vectors(), P = d.oh * d.ow;
  const int64_t nk = std::min(kFilters, d.kg() - k0);
  int64_t off[kMaxTaps];
  d.tap_offsets(off);
  for (int64_t v0 = vb; v0 < ve; v0 += kVectors) {
    const int64_t nv = std::min(kVectors, ve - v0);
    const float* xv[kVectors];
    for (int64_t j = 0; j < kVectors; ++j) {
      const int64_t v = v0 + std::min(j, nv - 1);  // a short block repeats its last vector
      xv[j] = xp + (v / V) * d.padded() + grp * cg * plane + d.x_at(v % V);
    }
    v16 acc[kFilters][kVectors];
#pragma GCC unroll 8
    for (int64_t i = 0; i < kFilters; ++i) {  // with a scale, the bias (the shift) comes after it
      const v16 b = splat(bias && !scale && i < nk ? bias[grp * d.kg() + k0 + i] : 0.f);
#pragma GCC unroll 3
      for (int64_t j = 0; j < kVectors; ++j) acc[i][j] = b;
    }
    for (int64_t c = 0; c < cg; ++c) {
      const float* wc = wblock + c * T * kFilters;
      const int64_t xo = c * plane;
      for (int64_t t = 0; t < T; ++t) {
        const v16 x0 = load_rows<R>(xv[0] + xo + off[t], wq), x1 = load_rows<R>(xv[1] + xo + off[t], wq);
        v16 x2;
        if constexpr (KV == 3) x2 = load_rows<R>(xv[2] + xo + off[t], wq);
        const float* wt = wc + t * kFilters;
#pragma GCC unroll 8
        for (int64_t i = 0; i < kFilters; ++i) {
          const v16 wi = splat(wt[i]);
          acc[i][0] += wi * x0;
          acc[i][1] += wi * x1;
          if constexpr (KV == 3) acc[i][2] += wi * x2;
        }
      }
    }
    // Loops over the block run to its constant size, the filters and vectors past the last skipped:
    // indexed by a bound known only at run time, the accumulators went to the stack.
    if (scale)  // a folded batch norm: y * scale + shift while the block is in registers
#pragma GCC unroll 8
      for (int64_t i = 0; i < kFilters; ++i) {
        if (i >= nk) break;
        const v16 a = splat(scale[grp * d.kg() + k0 + i]), b = splat(bias ? bias[grp * d.kg() + k0 + i] : 0.f);
#pragma GCC unroll 3
        for (int64_t j = 0; j < kVectors; ++j) acc[i][j] = acc[i][j] * a + b;
      }
    if (e.relu && !e.residual)  // fused: max(0, y) while the block is in registers
      for (int64_t i = 0; i < kFilters; ++i)
        for (int64_t j = 0; j < kVectors; ++j) acc[i][j] = acc[i][j] > 0 ? acc[i][j] : 0;
    auto residual_at = [&](const float* dst) {
      const int64_t at = dst - y;
      return e.residual + (e.residual_sample ? at % e.residual_sample : at);
    };
    auto store_part = [&](float* dst, v16 value, int64_t from, int64_t count) {
      float lanes[kLanes];  // a copy: a pointer into acc would keep it out of registers
      std::memcpy(lanes, &value, sizeof lanes);
      store_lanes(dst, lanes + from, count, e.residual ? residual_at(dst) : nullptr, e.relu);
    };
#pragma GCC unroll 3
    for (int64_t j = 0; j < kVectors; ++j) {
      if (j >= nv) break;
      const int64_t v = v0 + j;
      float* yv = y + (v / V) * d.k * P + (grp * d.kg() + k0) * P + d.y_at(v % V);
      if (R == 1 || !d.narrow()) {
        const int64_t count = d.y_count(v % V);
#pragma GCC unroll 8
        for (int64_t i = 0; i < kFilters; ++i) {
          if (i >= nk) break;
          if (count < kLanes) {
            store_part(yv + i * P, acc[i][j], 0, count);
            continue;
          }
          v16 out = acc[i][j];  // a whole vector: the residual and ReLU in registers
          if (e.residual) {
            out += load<v16>(residual_at(yv + i * P));
            if (e.relu) out = out > 0 ? out : 0;
          }
          std::memcpy(yv + i * P, &out, sizeof out);
        }
        continue;
      }
      const int64_t rows = std::min<int64_t>(R, d.oh - (v % V) * R), lanes = d.lanes_per_row();
      for (int64_t i = 0; i < nk; ++i)
        for (int64_t r = 0; r < rows; ++r) store_part(yv + i * P + r * d.ow, acc[i][j], r * lanes, d.ow);
    }
  }
}

// (channel, tap) pairs a weight-gradient block sums for KV vectors of filters: 22 or 24
// accumulators (with 2 x 12, GCC spills one of the two filter vectors).
constexpr int64_t grad_pairs(int KV) { return KV == 2 ? 11 : 24; }

// acc[q][k] += sum over ns samples and their pixels p of gy[k][p] * x[c][p + offset of tap t], for
// the KV * 16 filters from k0 of group grp (the lanes) and the 24 / KV (channel, tap) pairs q = c T + t
// from q0: gy transposed is loaded as vectors and x broadcast, as the forward loads x and broadcasts
// the weights, and the lanes are filters, so nothing is summed across lanes.
template <int KV>
void weight_grad_block(const Direct& d, const float* xp, const float* gt, int64_t ns, int64_t grp, int64_t k0,
                       int64_t q0, const int64_t* off, float* acc) {
  constexpr int64_t Q = grad_pairs(KV);
  const int64_t cg = d.cg(), T = d.taps(), wq = d.wq(), row = d.groups * d.kg16(), nq = std::min(Q, cg * T - q0);
  int64_t xq[Q];
  for (int64_t j = 0; j < Q; ++j) {
    const int64_t q = q0 + std::min(j, nq - 1);
    xq[j] = (grp * cg + q / T) * d.plane() + off[q % T];
  }
  v16 a[KV][Q] = {};
  const float* g = gt + grp * d.kg16() + k0;
  for (int64_t s = 0; s < ns; ++s) {
    const float* xs = xp + s * d.padded();
    for (int64_t oh = 0; oh < d.oh; ++oh) {
      const float* xrow = xs + oh * wq;
      for (int64_t ow = 0; ow < d.ow; ++ow, g += row) {
        const v16 g0 = load<v16>(g), g1 = KV > 1 ? load<v16>(g + kLanes) : g0;
#pragma GCC unroll 24
        for (int64_t j = 0; j < Q; ++j) {
          const v16 xj = splat(xrow[xq[j] + ow]);
          a[0][j] += g0 * xj;
          if constexpr (KV > 1) a[KV - 1][j] += g1 * xj;
        }
      }
    }
  }
  for (int64_t j = 0; j < nq; ++j)
    for (int64_t u = 0; u < KV; ++u) {
      float* dst = acc + ((grp * cg * T + q0 + j) * d.kg16()) + k0 + u * kLanes;
      const v16 sum = load<v16>(dst) + a[u][j];
      std::memcpy(dst, &sum, sizeof sum);
    }
}

Direct forward_of(const Geom& g) {
  return Direct{g.n,      g.c,      g.in[1],  g.in[2],  g.k,      g.out[1], g.out[2],
                g.ker[1], g.ker[2], g.dil[1], g.dil[2], g.pad[1], g.pad[2], g.groups};
}

// The input gradient as a direct convolution: gy (N, K, OH, OW) padded by the kernel's extent less
// the forward's padding, with the flipped and transposed weights, gives dx (N, C, H, W).
Direct input_grad_of(const Geom& g) {
  const int64_t eh = g.dil[1] * (g.ker[1] - 1), ew = g.dil[2] * (g.ker[2] - 1);
  return Direct{g.n,      g.k,      g.out[1], g.out[2], g.c,           g.in[1],       g.in[2],
                g.ker[1], g.ker[2], g.dil[1], g.dil[2], eh - g.pad[1], ew - g.pad[2], g.groups};
}

// Samples a weight-gradient part prepares at a time: about 1024 pixels, so their padded input and
// transposed gradient stay in L2 while every block sweeps them.
int64_t grad_chunk(const Direct& d) { return std::min(d.n, std::max<int64_t>(1, 1024 / (d.oh * d.ow))); }

// Samples a forward part pads at a time: about 96 vectors of output, but at least 4 chunks a batch
// (the parts take whole chunks). From the shapes alone: the workspace is planned from it.
int64_t forward_chunk(const Direct& d) {
  return std::max<int64_t>(1, std::min({d.n, 96 / d.vectors(), (d.n + 3) / 4}));
}

int64_t slice_of(const Direct& d, Pass pass) {
  if (pass != Pass::weight_grad) return round_up(forward_chunk(d) * d.padded(), 16);
  const int64_t gt = d.oh * d.ow * d.groups * d.kg16(), acc = d.groups * d.cg() * d.taps() * d.kg16();
  return round_up(grad_chunk(d) * (d.padded() + gt) + acc, 16);
}

size_t workspace_of(const Direct& d, Pass pass) {
  const int64_t shared = pass == Pass::weight_grad ? 0 : d.packed();
  return static_cast<size_t>(shared + slice_of(d, pass) * cpu::num_threads()) * sizeof(float);
}

int64_t parts_of(const Direct& d, Pass pass, int64_t shared, size_t ws_bytes, int64_t work) {
  const int64_t slots = (static_cast<int64_t>(ws_bytes / sizeof(float)) - shared) / slice_of(d, pass);
  return std::min(std::max<int64_t>(1, slots), work);
}

// Padded rows [r0, r1) that vectors [v0, v1) of one sample read.
std::pair<int64_t, int64_t> rows_read(const Direct& d, int64_t v0, int64_t v1) {
  const int64_t halo = d.dh * (d.kh - 1);
  if (d.R() == 1) return {v0 / d.per_row(), (v1 - 1) / d.per_row() + 1 + halo};
  return {v0 * d.R(), v1 * d.R() + halo};
}

// Filter block j over vectors [vb, ve) of the samples padded in buf.
template <int R>
void forward_job(const Direct& d, const float* packed, const float* buf, int64_t j, int64_t vb, int64_t ve,
                 const Epilogue& e, float* y) {
  // 3 vectors a block, or 2 where that computes fewer dropped ones (they run 10% slower)
  const int64_t total = ve - vb, by3 = (total + 2) / 3 * 3, by2 = (total + 1) / 2 * 2;
  const float* wb = packed + j * d.cg() * d.taps() * kFilters;
  const int64_t grp = j / d.blocks(), k0 = j % d.blocks() * kFilters;
  if (by2 * 11 < by3 * 10)
    forward_block<R, 2>(d, buf, vb, ve, wb, grp, k0, e, y);
  else
    forward_block<R, 3>(d, buf, vb, ve, wb, grp, k0, e, y);
}

// A variable's weights packed for the forward, made once and cached while the variable is unchanged.
cpu::Derived cached_packed(const Direct& d, const float* w, uint64_t w_stamp) {
  const int64_t jobs = d.groups * d.blocks();
  return cpu::derived_weights(w, w_stamp, cpu::DerivedShape{d.k, d.cg(), d.taps(), d.groups},
                              static_cast<size_t>(d.packed()), [&](float* out) {
                                cpu::parallel_for(jobs, 1, [&](int64_t j0, int64_t j1) {
                                  for (int64_t j = j0; j < j1; ++j) pack_block(d, w, false, j, out);
                                });
                              });
}

// Vectors [v0, v1) of one sample, every filter, on this thread: pads the rows they read into buf (a
// padded sample's worth), then runs each filter block over them.
template <int R>
void forward_vectors(const Direct& d, const float* x, const float* packed, const Epilogue& e, float* y, int64_t v0,
                     int64_t v1, float* buf) {
  const auto [r0, r1] = rows_read(d, v0, v1);
  pad_rows(d.padding(), x, buf, 0, d.c, r0, r1);
  for (int64_t j = 0; j < d.groups * d.blocks(); ++j) forward_job<R>(d, packed, buf, j, v0, v1, e, y);
}

template <int R>
void run_forward(const Direct& d, const float* x, const float* w, uint64_t w_stamp, bool flip_transpose,
                 const Epilogue& e, float* y, float* ws, size_t ws_bytes) {
  float* packed = ws;
  const int64_t chunk = forward_chunk(d), chunks = (d.n + chunk - 1) / chunk, P = d.oh * d.ow, V = d.vectors();
  const int64_t jobs = d.groups * d.blocks();
  // One sample: in bands of rows (rows_in_bands), each thread computing every filter of its rows and
  // padding just the rows it reads into its own buffer.
  const int64_t band_parts =
      chunks == 1 && rows_in_bands(d.padded(), d.packed())
          ? parts_of(d, Pass::forward, d.packed(), ws_bytes, std::min<int64_t>(cpu::num_threads(), V / 4))
          : 1;
  const bool bands = band_parts > 1;  // (a workspace of one slice, planned for one thread: split by filters)
  cpu::Derived cached;
  if (w_stamp && !flip_transpose) {  // a variable's weights in an inference call: packed once
    cached = cached_packed(d, w, w_stamp);
    packed = const_cast<float*>(cached->data());  // only read from here on
  }
  // One chunk split by filters: each job packs its block just before using it, so the block is still
  // in cache and the weights are read once. Else: pack once, all threads at a time.
  const bool pack_in_job = chunks == 1 && !bands && !cached;
  if (!pack_in_job && !cached)
    cpu::parallel_for(jobs, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) pack_block(d, w, flip_transpose, j, packed);
    });
  if (bands) {
    run_parts(band_parts, [&](int64_t part) {
      float* buf = ws + d.packed() + part * slice_of(d, Pass::forward);
      forward_vectors<R>(d, x, packed, e, y, V * part / band_parts, V * (part + 1) / band_parts, buf);
    });
    return;
  }
  const int64_t parts = parts_of(d, Pass::forward, d.packed(), ws_bytes, chunks);
  run_parts(parts, [&](int64_t part) {
    float* buf = ws + d.packed() + part * slice_of(d, Pass::forward);
    for (int64_t ch = chunks * part / parts; ch < chunks * (part + 1) / parts; ++ch) {
      const int64_t n0 = ch * chunk, ns = std::min(chunk, d.n - n0);
      for (int64_t s = 0; s < ns; ++s) pad_sample(d, x + (n0 + s) * d.c * d.h * d.w, buf + s * d.padded());
      // with one part (a batch of one not in bands) the filter blocks spread over the pool; else run here
      cpu::parallel_for(jobs, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          if (pack_in_job) pack_block(d, w, flip_transpose, j, packed);
          forward_job<R>(d, packed, buf, j, 0, ns * V, at_sample(e, n0 * d.k * P), y + n0 * d.k * P);
        }
      });
    }
  });
}

void run_weight_grad(const Direct& d, const float* x, const float* gy, float* dw, float* ws, size_t ws_bytes) {
  const int64_t chunk = grad_chunk(d), chunks = (d.n + chunk - 1) / chunk, P = d.oh * d.ow;
  const int64_t parts = parts_of(d, Pass::weight_grad, 0, ws_bytes, chunks), slice = slice_of(d, Pass::weight_grad);
  const int64_t kg16 = d.kg16(), pairs = d.cg() * d.taps(), gt_elems = P * d.groups * kg16;
  const int64_t acc_elems = d.groups * pairs * kg16;
  auto acc_of = [&](int64_t part) { return ws + part * slice + chunk * (d.padded() + gt_elems); };
  int64_t off[kMaxTaps];
  d.tap_offsets(off);
  const bool two = kg16 % (2 * kLanes) == 0;  // two filter vectors a block where the group has them
  const int64_t kstep = two ? 2 * kLanes : kLanes, qstep = two ? grad_pairs(2) : grad_pairs(1);
  const int64_t kblocks = kg16 / kstep, qblocks = (pairs + qstep - 1) / qstep;
  run_parts(parts, [&](int64_t part) {
    float* xp = ws + part * slice;
    float* gt = xp + chunk * d.padded();
    float* acc = acc_of(part);
    std::fill(acc, acc + acc_elems, 0.f);
    for (int64_t ch = chunks * part / parts; ch < chunks * (part + 1) / parts; ++ch) {
      const int64_t n0 = ch * chunk, ns = std::min(chunk, d.n - n0);
      for (int64_t s = 0; s < ns; ++s) {
        pad_sample(d, x + (n0 + s) * d.c * d.h * d.w, xp + s * d.padded());
        transpose_grad(d, gy + (n0 + s) * d.k * P, gt + s * gt_elems);
      }
      // with one part the blocks spread over the pool: each owns its slice of acc
      cpu::parallel_for(d.groups * kblocks * qblocks, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t grp = j / (kblocks * qblocks), k0 = j / qblocks % kblocks * kstep, q0 = j % qblocks * qstep;
          if (two)
            weight_grad_block<2>(d, xp, gt, ns, grp, k0, q0, off, acc);
          else
            weight_grad_block<1>(d, xp, gt, ns, grp, k0, q0, off, acc);
        }
      });
    }
  });
  // dw[k][c][t] = sum over the parts of acc[grp][c T + t][k in group]
  const int64_t kg = d.kg();
  cpu::parallel_for(d.k, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t q = 0; q < pairs; ++q) {
        const int64_t i = ((k / kg) * pairs + q) * kg16 + k % kg;
        float s = 0.f;
        for (int64_t p = 0; p < parts; ++p) s += acc_of(p)[i];
        dw[k * pairs + q] = s;
      }
  });
}

// Calls fn.template operator()<R>() with the direct convolution's rows per vector.
template <class F>
void with_rows(const Direct& d, F&& fn) {
  switch (d.R()) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      return fn(std::integral_constant<int, 2>{});
    default:
      return fn(std::integral_constant<int, 4>{});
  }
}

}  // namespace

bool direct_applies(const Geom& g, Pass pass) {
  // 2-D (or 1-D), stride 1, kernels up to 8x8, rows of 4, 8 or at least 12 pixels
  if (g.ker[0] != 1 || g.in[0] != 1 || g.stride[1] != 1 || g.stride[2] != 1 || g.kk() > kMaxTaps ||
      !rows_per_vector(g.out[2]) || g.c <= 0 || g.k <= 0)  // (no channels: the GEMM path's zeros)
    return false;
  // the input gradient, a convolution producing the input: its padding (the kernel's extent less
  // the forward's) must not be negative, and its rows must suit the vectors too
  if (pass == Pass::input_grad)
    return g.pad[1] <= g.dil[1] * (g.ker[1] - 1) && g.pad[2] <= g.dil[2] * (g.ker[2] - 1) && rows_per_vector(g.in[2]);
  return true;
}

size_t direct_workspace(const Geom& g, Pass pass) {
  return workspace_of(pass == Pass::input_grad ? input_grad_of(g) : forward_of(g), pass);
}

void direct_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& e, float* out,
                    float* ws, size_t ws_bytes) {
  const Direct d = forward_of(g);
  with_rows(d, [&](auto r) { run_forward<decltype(r)::value>(d, x, w, w_stamp, false, e, out, ws, ws_bytes); });
}

cpu::Derived direct_packed(const Geom& g, const float* w, uint64_t w_stamp) {
  return cached_packed(forward_of(g), w, w_stamp);
}

int64_t direct_row_unit(const Geom& g) { return forward_of(g).R(); }

size_t direct_rows_buffer(const Geom& g) { return static_cast<size_t>(forward_of(g).padded()); }

void direct_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0,
                 int64_t r1, float* buf) {
  const Direct d = forward_of(g);
  const int64_t R = d.R(), v0 = R == 1 ? r0 * d.per_row() : r0 / R, v1 = R == 1 ? r1 * d.per_row() : (r1 + R - 1) / R;
  with_rows(d, [&](auto r) { forward_vectors<decltype(r)::value>(d, x, packed, e, y, v0, v1, buf); });
}

void direct_input_grad(const Geom& g, const float* gy, const float* w, float* dx, float* ws, size_t ws_bytes) {
  const Direct d = input_grad_of(g);
  with_rows(d, [&](auto r) { run_forward<decltype(r)::value>(d, gy, w, 0, true, Epilogue{}, dx, ws, ws_bytes); });
}

void direct_weight_grad(const Geom& g, const float* gy, const float* x, float* dw, float* ws, size_t ws_bytes) {
  const Direct d = forward_of(g);
  run_weight_grad(d, x, gy, dw, ws, ws_bytes);
}

}  // namespace kiln::conv
