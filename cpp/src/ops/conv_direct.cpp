// Direct stride-1 convolution of float32 images (1-D and 2-D), the forward and, on the flipped
// and transposed weights, the input gradient. No im2col: each sample is copied once into a
// zero-padded buffer whose rows are padded to whole vectors, and a register-blocked kernel keeps
// 8 filters x 3 vectors of 16 output pixels in 24 accumulators, reading each input vector once
// per kernel tap and each weight once per block. This is the loop oneDNN's direct convolution
// runs; written with the compiler's vector extension it needs no intrinsics, and -march=native
// (KILN_NATIVE) turns each vector operation into one AVX-512 instruction.
#include <cstring>

#include "ops/conv_geom.h"

namespace kiln::conv {
namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;    // output pixels per vector
constexpr int64_t kFilters = 8;   // filters per register block
constexpr int64_t kVectors = 3;   // vectors per register block
constexpr int64_t kMaxTaps = 64;  // kernels up to 8x8 (larger ones take the GEMM paths)

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// All lanes s (`v16{} + s` would add a zero: the compiler may not drop it, for -0's sake).
inline v16 splat(float s) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// One direct convolution, stride 1: y (N, K, OH, OW) = conv(x (N, C, H, W) padded by (pt, pl)
// on the top and left, weights w[k][c][kh][kw] of `groups` groups) + bias.
struct Direct {
  int64_t n, c, h, w, k, oh, ow, kh, kw, dh, dw, pt, pl, groups;
  int64_t cg() const { return c / groups; }
  int64_t kg() const { return k / groups; }
  int64_t taps() const { return kh * kw; }
  int64_t blocks() const { return (kg() + kFilters - 1) / kFilters; }  // filter blocks per group
  int64_t hp() const { return oh + dh * (kh - 1); }
  int64_t wq() const { return round_up(ow, kLanes) + dw * (kw - 1); }  // a padded row: whole vectors
  int64_t padded() const { return c * hp() * wq(); }
  int64_t packed() const { return groups * blocks() * cg() * taps() * kFilters; }
};

// packed[grp][block][c][tap][8]: a block's 8 weights of one input channel and tap side by side
// (zero for filters past the group's last). flip_transpose: the input gradient's weights,
// w'[c][k][tap] = w[k][c][taps - 1 - tap], read from the forward's (K, C/groups, ...) array.
void pack(const Direct& d, const float* w, bool flip_transpose, float* packed) {
  const int64_t cg = d.cg(), kg = d.kg(), T = d.taps();
  std::fill(packed, packed + d.packed(), 0.f);
  for (int64_t grp = 0; grp < d.groups; ++grp)
    for (int64_t k = 0; k < kg; ++k)
      for (int64_t c = 0; c < cg; ++c)
        for (int64_t t = 0; t < T; ++t) {
          // forward: w[(grp kg + k)][c][t]; flipped: the forward weight of filter c (of the
          // forward's kg) and channel k (of its cg), whose shapes are this conv's swapped
          const float v =
              flip_transpose ? w[((grp * cg + c) * kg + k) * T + (T - 1 - t)] : w[((grp * kg + k) * cg + c) * T + t];
          packed[(((grp * d.blocks() + k / kFilters) * cg + c) * T + t) * kFilters + k % kFilters] = v;
        }
}

// The sample's input, zero-padded: buf[c][hp][wq] with x at (pt, pl).
void pad_sample(const Direct& d, const float* x, float* buf) {
  const int64_t hp = d.hp(), wq = d.wq();
  std::fill(buf, buf + d.padded(), 0.f);
  for (int64_t c = 0; c < d.c; ++c)
    for (int64_t i = 0; i < d.h; ++i)
      std::memcpy(buf + (c * hp + i + d.pt) * wq + d.pl, x + (c * d.h + i) * d.w, d.w * sizeof(float));
}

// Filters [k0, k0 + 8) of group grp for one padded sample: y[k][oh][ow].
void conv_block(const Direct& d, const float* xp, const float* wblock, int64_t grp, int64_t k0, const float* bias,
                float* y) {
  const int64_t cg = d.cg(), T = d.taps(), wq = d.wq(), plane = d.hp() * wq;
  const int64_t per_row = (d.ow + kLanes - 1) / kLanes, V = d.oh * per_row;
  const int64_t nk = std::min(kFilters, d.kg() - k0);
  int64_t off[kMaxTaps];
  for (int64_t t = 0; t < T; ++t) off[t] = (t / d.kw) * d.dh * wq + (t % d.kw) * d.dw;
  const float* xg = xp + grp * cg * plane;
  for (int64_t v0 = 0; v0 < V; v0 += kVectors) {
    const int64_t nv = std::min(kVectors, V - v0);
    const float* xv[kVectors];
    for (int64_t j = 0; j < kVectors; ++j) {
      const int64_t v = v0 + std::min(j, nv - 1);  // a short block recomputes its last vector
      xv[j] = xg + (v / per_row) * wq + (v % per_row) * kLanes;
    }
    v16 acc[kFilters][kVectors];
#pragma GCC unroll 8
    for (int64_t i = 0; i < kFilters; ++i) {
      const float b = bias && i < nk ? bias[grp * d.kg() + k0 + i] : 0.f;
#pragma GCC unroll 3
      for (int64_t j = 0; j < kVectors; ++j) acc[i][j] = splat(b);
    }
    for (int64_t c = 0; c < cg; ++c) {
      const float* wc = wblock + c * T * kFilters;
      const int64_t xo = c * plane;
      for (int64_t t = 0; t < T; ++t) {
        const v16 x0 = load(xv[0] + xo + off[t]), x1 = load(xv[1] + xo + off[t]), x2 = load(xv[2] + xo + off[t]);
        const float* wt = wc + t * kFilters;
#pragma GCC unroll 8
        for (int64_t i = 0; i < kFilters; ++i) {
          const v16 wi = splat(wt[i]);
          acc[i][0] += wi * x0;
          acc[i][1] += wi * x1;
          acc[i][2] += wi * x2;
        }
      }
    }
    for (int64_t i = 0; i < nk; ++i)
      for (int64_t j = 0; j < nv; ++j) {
        const int64_t v = v0 + j, row = v / per_row, col = (v % per_row) * kLanes;
        float* dst = y + ((grp * d.kg() + k0 + i) * d.oh + row) * d.ow + col;
        std::memcpy(dst, &acc[i][j], std::min(kLanes, d.ow - col) * sizeof(float));
      }
  }
}

void run_direct(const Direct& d, const float* x, const float* w, bool flip_transpose, const float* bias, float* y,
                float* ws, size_t ws_bytes) {
  float* packed = ws;
  pack(d, w, flip_transpose, packed);
  const int64_t slice = round_up(d.padded(), 16);
  const int64_t slots = std::max<int64_t>(1, (static_cast<int64_t>(ws_bytes / sizeof(float)) - d.packed()) / slice);
  const int64_t parts = std::min(slots, d.n), jobs = d.groups * d.blocks();
  const int64_t block_elems = d.cg() * d.taps() * kFilters;
  run_parts(parts, [&](int64_t part) {
    float* buf = packed + d.packed() + part * slice;
    for (int64_t s = d.n * part / parts; s < d.n * (part + 1) / parts; ++s) {
      pad_sample(d, x + s * d.c * d.h * d.w, buf);
      float* ys = y + s * d.k * d.oh * d.ow;
      // one part: the filter blocks spread over the pool (a batch of one); else run here
      cpu::parallel_for(jobs, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t grp = j / d.blocks(), b = j % d.blocks();
          conv_block(d, buf, packed + j * block_elems, grp, b * kFilters, bias, ys);
        }
      });
    }
  });
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

size_t workspace_of(const Direct& d) {
  return static_cast<size_t>(d.packed() + round_up(d.padded(), 16) * cpu::num_threads()) * sizeof(float);
}

}  // namespace

bool direct_applies(const Geom& g, Pass pass) {
  if (pass == Pass::weight_grad) return false;
  // 2-D (or 1-D) and stride 1; rows of at least 12 pixels keep the vectors mostly full
  if (g.ker[0] != 1 || g.in[0] != 1 || g.stride[1] != 1 || g.stride[2] != 1 || g.out[2] < 12 || g.kk() > kMaxTaps)
    return false;
  // the input gradient's padding (kernel extent less the forward's) must not be negative
  if (pass == Pass::input_grad)
    return g.pad[1] <= g.dil[1] * (g.ker[1] - 1) && g.pad[2] <= g.dil[2] * (g.ker[2] - 1) && g.in[2] >= 12;
  return true;
}

size_t direct_workspace(const Geom& g, Pass pass) {
  return workspace_of(pass == Pass::forward ? forward_of(g) : input_grad_of(g));
}

void direct_forward(const Geom& g, const float* x, const float* w, const float* bias, float* out, float* ws,
                    size_t ws_bytes) {
  run_direct(forward_of(g), x, w, false, bias, out, ws, ws_bytes);
}

void direct_input_grad(const Geom& g, const float* gy, const float* w, float* dx, float* ws, size_t ws_bytes) {
  run_direct(input_grad_of(g), gy, w, true, nullptr, dx, ws, ws_bytes);
}

}  // namespace kiln::conv
