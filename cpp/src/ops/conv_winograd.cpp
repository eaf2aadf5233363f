// Winograd convolution F(2x2, 3x3) for 3x3 stride-1 layers (float32, 2-D, one group; the forward and
// the input gradient, itself such a convolution):
// each 4x4 tile of the padded input and each 3x3 filter become 16 values (V = B^T d B, U = G g G^T),
// the channels are summed in 16 GEMMs M[xi] = U[xi] V[xi] (K x C times C x tiles), and each tile's 4x4
// M becomes its 2x2 outputs (Y = A^T M A): 16 multiplications for 4 outputs where the direct kernels
// take 36. Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016); NNPACK's and
// XNNPACK's 3x3 convolutions. The transforms only add and subtract (and halve, for the weights), so
// the error stays within a few times the direct sum's.
//
// The threads split the batch's tiles, each taking its share in chunks of up to 48 (24 in pairs) through
// the three phases in turn: the chunk's V (16 x C x 48) and M (16 x K x 48) stay in L2. A chunk may take the end of
// one sample and the start of the next (8x8 outputs: 16 tiles a sample, 3 samples a chunk). Where one
// sample would read a large U once a chunk, or has fewer vectors of tiles than there are threads, they
// split the filters instead: each thread transforms the whole sample and reads its filters' part of U
// once. The transforms take the tiles 16 at a time, in one row of tiles, or where rows have 8 tiles or
// fewer, in 2 or 4 rows (a row's tiles at lanes 8 or 4 apart), its 4 input rows read as even and odd
// columns; the GEMMs take a chunk's tiles as one row of slots, 16 to a vector, in blocks of 8 filters x
// 48 slots. Row-tiled bands of rows 4 tiles wide (8x8 outputs) put 8 tiles in a vector, two of each
// tile's 16 values side by side ("pairs"): a band of 4 output rows then fills the lanes.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/vec.h"
#include "cpu/weight_cache.h"
#include "kiln/error.h"
#include "ops/conv_geom.h"

namespace kiln::conv {
namespace {

using cpu::load;
using cpu::splat;
using cpu::store;
using cpu::v16;
using cpu::v8;

// a0 b0 a1 b1 ... a7 b7
inline v16 interleave(const v8& a, const v8& b) {
  return __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
}
inline v16 interleave_low(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
// Both floats at p in every pair of lanes (one 64-bit broadcast).
inline v16 splat_pair(const float* p) {
  typedef double v8d __attribute__((vector_size(64)));
  double both;
  std::memcpy(&both, p, sizeof both);
  return (v16)(v8d{both, both, both, both, both, both, both, both});
}

constexpr int64_t kLanes = 16;
constexpr int64_t kMaxVectors = 3;  // a GEMM block: 3 vectors of tiles x 8 filters, 24 accumulators
constexpr int64_t kFilters = 8;     // filters per GEMM block
constexpr int64_t kXi = 16;         // values per transformed tile
constexpr int64_t kSlack = 64;      // floats past a buffer that whole-vector loads may read
// U up to 1 MB (128 x 128 channels), 16/9 of the weights. ResNet-18's 256 x 256 layers (4 MB) ran 1.05 -
// 1.3x the direct kernels' time in the network, split by tiles or by filters, though 0.7 - 0.8x alone:
// there the other layers' weights evict U, and reading it from memory takes as long as the GEMMs.
constexpr int64_t kMaxPacked = (int64_t(1) << 20) / sizeof(float);
// One sample on several threads splits the filters from 512 KB of U on (ResNet-18's 28x28 layers ran
// 0.91x their time split by tiles, 3 chunks a thread each reading U; its 56x56 ones, U 256 KB, the same)
// where a thread's padded sample, V and M fit in 4 MB (3 MB at 28x28): larger samples split by tiles,
// whose chunks take 1 MB at 128 channels (at 224x224 the sample's V and M would take 400 MB a thread).
constexpr int64_t kSplitPacked = (int64_t(1) << 19) / sizeof(float);
constexpr int64_t kSplitPartElems = (int64_t(4) << 20) / sizeof(float);

struct Wino {
  int64_t n, c, k, h, w, oh, ow, pt, pl;
  // One sample on several threads with U over kSplitPacked (and small enough): the threads split the
  // filters, each reading its part of U once, over the sample's tiles in one chunk. Else they split
  // the tiles, in chunks of up to 3 vectors.
  bool by_filters;
  int64_t S;  // the floats of a row of V and of M: a chunk's vectors x 16
  // Two of a tile's 16 values a vector, at lanes 2t and 2t + 1 of its 8 tiles (by rows, 4 tiles a row of
  // tiles): a band of 2 rows of tiles fills a vector. With one value a vector its lanes stayed half
  // empty, and a band's GEMMs took as long as the whole sample's.
  bool pairs = false;
  bool flipped = false;  // the weights are a forward convolution's (K, C, 3, 3), for its input gradient
  int64_t th() const { return (oh + 1) / 2; }  // tiles down and across
  int64_t tw() const { return (ow + 1) / 2; }
  int64_t tiles() const { return th() * tw(); }
  // A row of tiles' lanes: rows of up to 8 (or 4) tiles share a vector, 2 (or 4) to it, so that a 16x16
  // (or 8x8) output fills the lanes; wider rows take runs of up to 16. Tile (i, j) is the sample's
  // virtual tile i vw + j; those with j >= tw are computed and dropped.
  int64_t vw() const { return tw() > 8 ? tw() : tw() > 4 ? 8 : 4; }
  int64_t vtiles() const { return th() * vw(); }
  int64_t per_lane() const { return pairs ? 2 : 1; }                  // a tile's values a vector
  int64_t tpv() const { return kLanes / per_lane(); }                 // tiles a vector
  int64_t xrows() const { return kXi / per_lane(); }                  // V's rows a channel, M's a filter
  int64_t lane(int64_t slot) const { return slot * per_lane(); }      // a slot's first float in a row
  int64_t vectors() const { return (vtiles() + tpv() - 1) / tpv(); }  // a sample's, in the GEMMs
  int64_t hp() const { return 2 * th() + 2; }                         // the padded input's rows and pitch
  int64_t wp() const { return 2 * tw() + 2; }
  int64_t plane() const { return hp() * wp(); }
  Padding padding() const { return {h, w, hp(), wp(), pt, pl}; }
  int64_t k8() const { return (k + kFilters - 1) / kFilters * kFilters; }
  int64_t packed() const { return kXi * k8() * c; }
  int64_t pad_elems() const { return c * plane() + kSlack; }
  int64_t v_elems() const { return xrows() * c * S + kSlack; }
  int64_t m_filters = 0;  // the filters of M's rows: all of them, or by filters a thread's share
  int64_t m_elems() const { return xrows() * m_filters * S + kSlack; }
  // The workspace after U: each part's padded sample, V and M.
  int64_t part_elems() const { return pad_elems() + v_elems() + m_elems(); }
};

// threads: those the layer runs on (a sample of a row-tiled group runs on one).
Wino wino_of(const Geom& g, int64_t threads = cpu::num_threads(), bool pairs = false) {
  Wino d{g.n, g.c, g.k, g.in[1], g.in[2], g.out[1], g.out[2], g.pad[1], g.pad[2], false, 0};
  d.pairs = pairs;
  d.S = std::min(kMaxVectors, g.n * d.vectors()) * kLanes;  // no wider than a chunk gets: V and M stay in L2
  d.m_filters = d.k8();
  const int64_t blocks = d.k8() / kFilters;
  if (g.n == 1 && threads > 1 && (d.packed() > kSplitPacked || d.vectors() < threads)) {
    Wino f = d;
    f.by_filters = true;
    f.S = d.vectors() * kLanes;
    f.m_filters = (blocks + std::min(threads, blocks) - 1) / std::min(threads, blocks) * kFilters;
    if (f.part_elems() <= kSplitPartElems) return f;
  }
  return d;
}

// packed[xi][k / 8][c][k % 8] = (G g G^T)[xi] of filter k's channel c, zero past the last filter (in pairs,
// packed[xi / 2][k / 8][c][k % 8][xi % 2]); flipped,
// g is w[c][k] turned by 180 degrees (the input gradient's filters).
// G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]. Eight filters at a time, in the lanes of v8 vectors:
// every packed value is written (one (k, c) at a time, scattered over the 16 xi, a 64-channel layer
// took 120 us, as long as its forward at batch 1).
void pack(const Wino& d, const float* w, float* packed) {
  const int64_t C = d.c, blocks = d.k8() / kFilters;
  cpu::parallel_for(blocks * C, 16, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t b = j / C, c = j % C;
      v8 g[9];
      for (int t = 0; t < 9; ++t)
        for (int r = 0; r < kFilters; ++r) {
          const int64_t k = b * kFilters + r;
          g[t][r] = k >= d.k ? 0.f : d.flipped ? w[(c * d.k + k) * 9 + 8 - t] : w[(k * C + c) * 9 + t];
        }
      v8 gg[4][3];  // G g
      for (int i = 0; i < 3; ++i) {
        gg[0][i] = g[i];
        gg[1][i] = 0.5f * (g[i] + g[3 + i] + g[6 + i]);
        gg[2][i] = 0.5f * (g[i] - g[3 + i] + g[6 + i]);
        gg[3][i] = g[6 + i];
      }
      const int64_t per = d.per_lane(), xi_stride = blocks * C * kFilters * per;
      float* out = packed + (b * C + c) * kFilters * per;
      for (int i = 0; i < 4; ++i) {
        const v8 u[4] = {gg[i][0], 0.5f * (gg[i][0] + gg[i][1] + gg[i][2]), 0.5f * (gg[i][0] - gg[i][1] + gg[i][2]),
                         gg[i][2]};
        if (d.pairs)  // values 4i + q and 4i + q + 1 of each filter side by side, in row 2i + q / 2
          for (int q = 0; q < 4; q += 2) store(out + (2 * i + q / 2) * xi_stride, interleave(u[q], u[q + 1]));
        else
          for (int q = 0; q < 4; ++q) store(out + (i * 4 + q) * xi_stride, u[q]);
      }
    }
  });
}

// Lanes [0, m) of v stored at p; the lanes past them keep what p held (p's buffer is this thread's).
inline void store_lanes(float* p, const v16& v, int64_t m) {
  if (m == kLanes) return store(p, v);
  const v16 lane{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  store(p, lane < float(m) ? v : load(p));
}

inline v16 evens(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
inline v16 odds(const v16& a, const v16& b) {
  return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// A run of up to a vector's tiles at slot s of the chunk: m virtual tiles from (ti, tj), in one row of tiles,
// or where rows share a vector in up to tpv / vw rows from (ti, 0).
struct Run {
  int64_t ti, tj, m, s;
};

// Calls fn(run) for the virtual tiles [t0, t1) of a sample (vector-aligned where rows share vectors), at
// slots from s0 on.
template <class F>
void for_runs(const Wino& d, int64_t t0, int64_t t1, int64_t s0, F&& fn) {
  const int64_t vw = d.vw();
  for (int64_t t = t0; t < t1;) {
    const int64_t ti = t / vw, tj = t % vw;
    const int64_t m = vw <= 8 ? std::min(d.tpv(), t1 - t) : std::min({kLanes, vw - tj, t1 - t});
    fn(Run{ti, tj, m, s0 + t - t0});
    t += m;
  }
}

inline v16 cat(const v8& a, const v8& b) {
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// Columns 2j + off and 2j + off + 1 of input row p of each tile j of a run, as the vectors (a, b) whose
// even and odd lanes they are: G rows of tiles a vector (1, 2 or 4), row g's row at q[g].
template <int G>
inline void columns(const float* const q[4], int64_t off, v16& a, v16& b) {
  if constexpr (G == 1) {
    a = load(q[0] + off), b = load(q[0] + off + kLanes);
  } else if constexpr (G == 2) {
    a = load(q[0] + off), b = load(q[1] + off);
  } else {
    a = cat(load<v8>(q[0] + off), load<v8>(q[1] + off)), b = cat(load<v8>(q[2] + off), load<v8>(q[3] + off));
  }
}

// One run's V for every channel: p is the run's first input row in channel 0 (row g of tiles at p + go[g]),
// v its first slot of V. The loop over the channels holds the run's geometry in registers (over the runs,
// it reloaded it around every store: 9% of ResNet-8 at batch 32). Pairs: m tiles (up to 8) in lanes 0 - 7,
// stored two values a tile.
template <int G, bool Full, bool Pairs = false>
void input_run(const float* p, const int64_t (&go)[4], int64_t wp, int64_t plane, int64_t C, int64_t S, int64_t m,
               float* v) {
  constexpr int64_t rows = Pairs ? kXi / 2 : kXi;
  for (int64_t c = 0; c < C; ++c, p += plane, v += rows * S) {
    v16 R[4][4];  // the 4 rows, each transformed along its columns: d B
    for (int i = 0; i < 4; ++i) {
      const float* q[4] = {p + i * wp + go[0], p + i * wp + go[1], p + i * wp + go[2], p + i * wp + go[3]};
      v16 a, b, a2, b2;
      columns<G>(q, 0, a, b);
      columns<G>(q, 2, a2, b2);
      const v16 x0 = evens(a, b), x1 = odds(a, b), x2 = evens(a2, b2), x3 = odds(a2, b2);
      R[i][0] = x0 - x2, R[i][1] = x1 + x2, R[i][2] = x2 - x1, R[i][3] = x1 - x3;
    }
    auto column = [&](int j, v16(&out)[4]) {
      out[0] = R[0][j] - R[2][j], out[1] = R[1][j] + R[2][j], out[2] = R[2][j] - R[1][j], out[3] = R[1][j] - R[3][j];
    };
    for (int j = 0; j < 4; j += Pairs ? 2 : 1) {
      v16 out[4];  // values 4i + j
      column(j, out);
      if constexpr (Pairs) {  // values 4i + j and 4i + j + 1 in row 2i + j / 2
        v16 next[4];
        column(j + 1, next);
        for (int i = 0; i < 4; ++i) {
          const v16 both = interleave_low(out[i], next[i]);
          if constexpr (Full)
            store(v + (2 * i + j / 2) * S, both);
          else
            store_lanes(v + (2 * i + j / 2) * S, both, 2 * m);
        }
      } else {
        for (int i = 0; i < 4; ++i) {
          if constexpr (Full)
            store(v + (i * 4 + j) * S, out[i]);
          else
            store_lanes(v + (i * 4 + j) * S, out[i], m);
        }
      }
    }
  }
}

// V[c][xi][slot] of a sample's virtual tiles [t0, t1) at slots [s0, s0 + t1 - t0), from the padded sample:
// V = B^T d B, with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. Slots from there to s_end are zeroed.
template <int G, bool Pairs = false>
void transform_input(const Wino& d, const float* pad, int64_t t0, int64_t t1, int64_t s0, int64_t s_end, float* V) {
  const int64_t wp = d.wp(), S = d.S;
  constexpr int64_t kRows = Pairs ? G / 2 : G;  // rows of tiles a vector
  for_runs(d, t0, t1, s0, [&](const Run& r) {
    const int64_t rows = G == 1 ? 1 : std::min<int64_t>(kRows, d.th() - r.ti);  // rows past the last read the first
    int64_t go[4] = {0, 0, 0, 0};
    for (int g = 1; g < rows; ++g) go[g] = 2 * g * wp;
    const float* p = pad + 2 * r.ti * wp + 2 * r.tj;
    (r.m == d.tpv() ? input_run<G, true, Pairs> : input_run<G, false, Pairs>)(p, go, wp, d.plane(), d.c, S, r.m,
                                                                              V + d.lane(r.s));
  });
  const int64_t s1 = s0 + t1 - t0;
  if (s1 < s_end)  // the GEMMs' lanes past the tiles: finite, their products dropped
    for (int64_t row = 0; row < d.xrows() * d.c; ++row)
      std::fill(V + row * S + d.lane(s1), V + row * S + d.lane(s_end), 0.f);
}

// m[r][slot] = sum over c of u[c][r] v[c][slot] for 8 B filters r (B blocks of 8, C x 8 values apart in
// u) and NV vectors of slots; v's and m's rows are `row` floats apart (a tile's values'). P: values a
// tile a vector (pairs: 2, u[c][r] two floats, one for each of a slot's lanes).
template <int B, int NV, int P = 1>
void gemm_block(const float* u, const float* v, int64_t C, int64_t row, float* m) {
  constexpr int F = B * kFilters;
  v16 acc[F][NV];
#pragma GCC unroll 16
  for (int r = 0; r < F; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = splat(0.f);
  for (int64_t c = 0; c < C; ++c) {
    v16 x[NV];
    for (int j = 0; j < NV; ++j) x[j] = load(v + c * row + j * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < F; ++r) {
      const float* at = u + ((r / kFilters) * C * kFilters + c * kFilters + r % kFilters) * P;
      const v16 s = P == 2 ? splat_pair(at) : splat(*at);
      for (int j = 0; j < NV; ++j) acc[r][j] += s * x[j];
    }
  }
  for (int r = 0; r < F; ++r)
    for (int j = 0; j < NV; ++j) store(m + r * row + j * kLanes, acc[r][j]);
}

// M[k][xi][slot] = sum over c of U[xi][k][c] V[c][xi][slot], for filter blocks [b0, b1) and the chunk's
// nv vectors of slots (M's rows from filter 8 b0 on). One vector takes 16 filters at a time: with 8, its
// 8 accumulators left the FMA units idle for their latency (ResNet-8's 8x8 layer ran at 58% of peak).
template <int P>
void multiply(const Wino& d, const float* U, const float* V, int64_t b0, int64_t b1, int64_t nv, float* M) {
  const int64_t C = d.c, S = d.S, blocks = d.k8() / kFilters, rows = kXi / P, row = rows * S;
  for (int64_t xi = 0; xi < rows; ++xi)
    for (int64_t b = b0; b < b1;) {
      const float* u = U + (xi * blocks + b) * C * kFilters * P;  // 8 filters' C values: in L1 across the vectors
      float* m = M + ((b - b0) * kFilters * rows + xi) * S;
      if (nv == 1 && b + 2 <= b1) {
        gemm_block<2, 1, P>(u, V + xi * S, C, row, m);
        b += 2;
        continue;
      }
      const int64_t groups = (nv + kMaxVectors - 1) / kMaxVectors;  // as even as they come (4: 2 and 2)
      for (int64_t i = 0; i < groups; ++i) {
        const int64_t j = nv * i / groups, n = nv * (i + 1) / groups - j, at = j * kLanes;
        (n == 3   ? gemm_block<1, 3, P>
         : n == 2 ? gemm_block<1, 2, P>
                  : gemm_block<1, 1, P>)(u, V + xi * S + at, C, row, m + at);
      }
      ++b;
    }
}

void multiply(const Wino& d, const float* U, const float* V, int64_t b0, int64_t b1, int64_t nv, float* M) {
  (d.pairs ? multiply<2> : multiply<1>)(d, U, V, b0, b1, nv, M);
}

// One run's outputs of filters [k0, k1): mk is the run's first slot in M's rows of filter k0, y (and the
// residual) at the run's first output of filter k0, P apart a filter. G = 1: `cols` outputs of a row;
// else `rows` rows of tiles, of `cols` outputs each. Pairs: value xi of the run's tiles in the even
// (xi even) or odd lanes of M's row xi / 2, taken to lanes 0 - 7.
template <int G, bool Pairs = false>
void output_run(const float* mk, int64_t S, int64_t k0, int64_t k1, int64_t P, int64_t ow, int64_t rows, int64_t cols,
                bool second_row, const Epilogue& e, const float* res, float* y) {
  constexpr int64_t kRows = Pairs ? kXi / 2 : kXi;
  for (int64_t k = k0; k < k1; ++k, mk += kRows * S, y += P, res = res ? res + P : nullptr) {
    const float scale = e.scale ? e.scale[k] : 1.f, bias = e.bias ? e.bias[k] : 0.f;
    auto value = [&](int xi) {  // M's value xi of the run's tiles
      if constexpr (Pairs) {
        const v16 both = load(mk + xi / 2 * S);
        return xi % 2 ? odds(both, both) : evens(both, both);
      } else {
        return load(mk + xi * S);
      }
    };
    v16 s[4], t[4];  // A^T M: the sums and differences of M's rows
    for (int j = 0; j < 4; ++j) {
      const v16 m0 = value(0 * 4 + j), m1 = value(1 * 4 + j), m2 = value(2 * 4 + j), m3 = value(3 * 4 + j);
      s[j] = m0 + m1 + m2, t[j] = m1 - m2 - m3;
    }
    const v16 y0[2] = {(s[0] + s[1] + s[2]) * scale + bias, (t[0] + t[1] + t[2]) * scale + bias};  // columns 2j
    const v16 y1[2] = {(s[1] - s[2] - s[3]) * scale + bias, (t[1] - t[2] - t[3]) * scale + bias};  // 2j + 1
    for (int dr = 0; dr < 2; ++dr) {  // the tiles' two output rows, each tile's two columns side by side
      const v16 lo = __builtin_shufflevector(y0[dr], y1[dr], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
                hi = __builtin_shufflevector(y0[dr], y1[dr], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15,
                                             31);
      if constexpr (G == 1) {
        if (dr == 0 || second_row) {  // `cols` outputs (up to 32): lo's, then hi's
          const int64_t n_lo = std::min(cols, kLanes);
          store_outputs(y + dr * ow, res ? res + dr * ow : nullptr, lo, n_lo, e.relu);
          if (cols > kLanes)
            store_outputs(y + dr * ow + kLanes, res ? res + dr * ow + kLanes : nullptr, hi, cols - kLanes, e.relu);
        }
      } else {
        // row g of tiles: lanes 16 g / G on of (lo, hi), 32 / G of them
        const v16 part[4] = {
            lo, G == 2 ? hi : __builtin_shufflevector(lo, lo, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7), hi,
            __builtin_shufflevector(hi, hi, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)};
        for (int64_t g = 0; g < rows; ++g) {
          if (dr == 1 && g == rows - 1 && !second_row) break;  // the last row of tiles hangs past the output
          const int64_t at = (2 * g + dr) * ow;
          store_outputs(y + at, res ? res + at : nullptr, part[g], cols, e.relu);
        }
      }
    }
  }
}

// The outputs of filters [k0, k1) of a sample's virtual tiles [t0, t1) from M (its rows from k0 on, the
// tiles at slots from s0 on): Y = A^T M A with A^T = [1 1 1 0; 0 1 -1 -1], then the epilogue. y and e are
// the sample's.
template <int G, bool Pairs = false>
void transform_output(const Wino& d, const float* M, int64_t k0, int64_t k1, int64_t t0, int64_t t1, int64_t s0,
                      const Epilogue& e, float* y) {
  const int64_t P = d.oh * d.ow;
  for_runs(d, t0, t1, s0, [&](const Run& r) {
    const int64_t row = 2 * r.ti, col = 2 * r.tj, at = k0 * P + row * d.ow + col;
    const float* res = e.residual ? e.residual + at : nullptr;
    const float* m = M + d.lane(r.s);
    if constexpr (G == 1) {
      output_run<1>(m, d.S, k0, k1, P, d.ow, 1, std::min(2 * r.m, d.ow - col), row + 1 < d.oh, e, res, y + at);
    } else {
      const int64_t rows = std::min<int64_t>(G, (r.m + d.vw() - 1) / d.vw());
      output_run<G, Pairs>(m, d.S, k0, k1, P, d.ow, rows, std::min<int64_t>(32 / G, d.ow), 2 * (r.ti + rows) <= d.oh, e,
                           res, y + at);
    }
  });
}

// The cache's key for U beside the geometry of the weights.
cpu::DerivedShape shape_key(const Wino& d) { return cpu::DerivedShape{d.k, d.c, d.xrows(), -kFilters}; }

// The phases over vectors of virtual tiles, with the transforms for G rows of tiles a vector.
struct Phases {
  void (*input)(const Wino&, const float*, int64_t, int64_t, int64_t, int64_t, float*);
  void (*output)(const Wino&, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const Epilogue&, float*);
};
Phases phases_of(const Wino& d) {
  const int64_t g = kLanes / std::min(kLanes, d.vw());
  if (d.pairs) {
    if (g != 4) throw Error("internal: conv's Winograd pairs need rows of 4 tiles");
    return {transform_input<4, true>, transform_output<4, true>};
  }
  if (g == 4) return {transform_input<4>, transform_output<4>};
  if (g == 2) return {transform_input<2>, transform_output<2>};
  return {transform_input<1>, transform_output<1>};
}

// Slots [T_begin, T_end) of the batch on this thread: sample n's virtual tile t is slot n spt + t, a sample
// taking spt = vectors() x tpv() slots. In chunks of at most 3 vectors, as even as they come (7: 3, 2, 2); a
// chunk may take the end of one sample and the start of the next. `pad` holds one padded sample: a
// sample's rows are padded as its chunks first need them. A range inside one sample (a band of rows of
// a row-tiled group) starts at a row of tiles.
void run_slots(const Wino& d, const float* x, const float* U, const Epilogue& e, float* y, int64_t T_begin,
               int64_t T_end, float* pad) {
  float* V = pad + d.pad_elems();
  float* M = V + d.v_elems();
  const Phases ph = phases_of(d);
  const int64_t tpv = d.tpv(), spt = d.vectors() * tpv, vw = d.vw(), x_sample = d.c * d.h * d.w,
                y_sample = d.k * d.oh * d.ow;
  int64_t padded = -1, padded_to = 0;  // the sample in `pad` and the end of its rows padded so far
  // Calls fn(sample, t0, t1, s0, s_end) for each sample's virtual tiles [t0, t1) of the chunk [A, B), at its
  // slots [s0, s_end) (to a whole vector at the chunk's end).
  auto segments = [&](int64_t A, int64_t B, auto&& fn) {
    for (int64_t at = A; at < B;) {
      const int64_t n = at / spt, end = std::min(B, (n + 1) * spt), t0 = at - n * spt;
      const int64_t s_end = end == B ? (B - A + tpv - 1) / tpv * tpv : end - A;
      fn(n, t0, std::min(d.vtiles(), end - n * spt), at - A, s_end);
      at = end;
    }
  };
  const int64_t vectors = (T_end - T_begin + tpv - 1) / tpv, chunks = (vectors + kMaxVectors - 1) / kMaxVectors;
  for (int64_t i = 0; i < chunks; ++i) {
    const int64_t A = T_begin + vectors * i / chunks * tpv,
                  B = std::min(T_end, T_begin + vectors * (i + 1) / chunks * tpv);
    segments(A, B, [&](int64_t n, int64_t t0, int64_t t1, int64_t s0, int64_t s_end) {
      const int64_t r0 = 2 * (t0 / vw), r1 = 2 * ((t1 - 1) / vw) + 4;
      if (n != padded) padded = n, padded_to = r0;
      if (r1 > padded_to) pad_rows(d.padding(), x + n * x_sample, pad, 0, d.c, std::max(r0, padded_to), r1);
      padded_to = std::max(padded_to, r1);
      ph.input(d, pad, t0, t1, s0, s_end, V);
    });
    multiply(d, U, V, 0, d.k8() / kFilters, (B - A + tpv - 1) / tpv, M);
    segments(A, B, [&](int64_t n, int64_t t0, int64_t t1, int64_t s0, int64_t) {
      ph.output(d, M, 0, d.k, t0, t1, s0, at_sample(e, n * y_sample), y + n * y_sample);
    });
  }
}

}  // namespace

bool winograd_applies(const Geom& g) {
  if (g.sp != 2 || g.groups != 1 || g.ker[1] != 3 || g.ker[2] != 3 || g.stride[1] != 1 || g.stride[2] != 1 ||
      g.dil[1] != 1 || g.dil[2] != 1 || g.out[1] <= 0 || g.out[2] <= 0)
    return false;
  // KILN_WINOGRAD=0: the direct kernels' sums instead (another order of the same products)
  static const bool off = [] {
    const char* v = std::getenv("KILN_WINOGRAD");
    return v && std::string(v) == "0";
  }();
  // Measured against the direct kernels on ResNet-18's and ResNet-8's layers: Winograd takes 0.6 - 0.7x
  // their time from 32 channels and 16 tiles (8x8 outputs, rows of tiles 4 to a vector) on. 16 channels
  // leave the transforms a larger share: 0.92 - 0.95x at 32x32 outputs (ResNet-8's first stage, 256
  // tiles), 1.1x at 16x16.
  const Wino d = wino_of(g);
  const int64_t channels = std::min(g.c, g.k);
  return !off && (channels >= 32 || (channels >= 16 && d.tiles() >= 128)) && d.tiles() >= 16 &&
         d.packed() <= kMaxPacked;
}

size_t winograd_workspace(const Geom& g) {
  const Wino d = wino_of(g);
  return static_cast<size_t>(d.packed() + d.part_elems() * cpu::num_threads()) * sizeof(float);
}

namespace {
// The convolution d of x by the packed weights U into y; ws past U holds the parts' buffers.
void run(const Wino& d, const float* x, const float* U, const Epilogue& epilogue, float* y, float* ws,
         size_t ws_bytes) {
  const int64_t slots = static_cast<int64_t>(ws_bytes / sizeof(float) - d.packed()) / d.part_elems();
  float* parts_ws = ws + d.packed();
  const Phases ph = phases_of(d);
  if (d.by_filters) {
    // Each thread pads and transforms the whole sample into its own V, then takes its filter blocks. V
    // made once and shared, half of it came from the other core's cache: ResNet-18's 28x28 layer took
    // 450 - 490 us so where a line from there cost 4x more than usual, 340 us with a V a thread.
    const int64_t blocks = d.k8() / kFilters, parts = std::min(int64_t(cpu::num_threads()), blocks);
    if (slots < parts) throw Error("internal: conv's Winograd workspace holds fewer parts than threads");
    run_parts(parts, [&](int64_t part) {  // each part's M holds ceil(blocks / parts) blocks' rows
      float* pad = parts_ws + part * d.part_elems();
      float* V = pad + d.pad_elems();
      float* M = V + d.v_elems();
      pad_rows(d.padding(), x, pad, 0, d.c, 0, d.hp());
      ph.input(d, pad, 0, d.vtiles(), 0, d.S, V);
      const int64_t b0 = blocks * part / parts, b1 = blocks * (part + 1) / parts;
      multiply(d, U, V, b0, b1, d.vectors(), M);
      ph.output(d, M, b0 * kFilters, std::min(d.k, b1 * kFilters), 0, d.vtiles(), 0, epilogue, y);
    });
    return;
  }
  // The parts split the batch's vectors of tiles evenly (at batch 1, the rows of tiles of a sample).
  const int64_t total = d.n * d.vectors(), parts = std::min({slots, int64_t(cpu::num_threads()), total});
  run_parts(parts, [&](int64_t part) {
    run_slots(d, x, U, epilogue, y, total * part / parts * kLanes, total * (part + 1) / parts * kLanes,
              parts_ws + part * d.part_elems());
  });
}

}  // namespace

void winograd_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& epilogue,
                      float* y, float* ws, size_t ws_bytes) {
  const Wino d = wino_of(g);
  cpu::Derived cached;
  const float* U = cpu::packed_weights(w, w_stamp, shape_key(d), static_cast<size_t>(d.packed()), ws, cached,
                                       [&](float* out) { pack(d, w, out); });
  run(d, x, U, epilogue, y, ws, ws_bytes);
}

namespace {
// One sample by rows on one thread: rows of 4 tiles (8x8 outputs) in pairs.
Wino rows_wino(const Geom& g) {
  Geom one = g;
  one.n = 1;
  return wino_of(one, 1, wino_of(one, 1).vw() == 4);
}
}  // namespace

cpu::Derived winograd_packed(const Geom& g, const float* w, uint64_t w_stamp) {
  const Wino d = rows_wino(g);
  return cpu::derived_weights(w, w_stamp, shape_key(d), static_cast<size_t>(d.packed()),
                              [&](float* out) { pack(d, w, out); });
}

int64_t winograd_row_unit(const Geom& g) {
  const Wino d = rows_wino(g);
  return 2 * std::max<int64_t>(1, d.tpv() / d.vw());  // rows of tiles that fill a vector
}

size_t winograd_rows_buffer(const Geom& g) { return static_cast<size_t>(rows_wino(g).part_elems()); }

void winograd_rows(const Geom& g, const float* x, const float* U, const Epilogue& e, float* y, int64_t r0, int64_t r1,
                   float* buf) {
  const Wino d = rows_wino(g);
  run_slots(d, x, U, e, y, r0 / 2 * d.vw(), std::min(d.vtiles(), (r1 + 1) / 2 * d.vw()), buf);
}

// The input gradient of a 3x3 stride-1 convolution is one too: of gy, by the filters turned 180 degrees
// with filters and channels swapped, padded by 2 less the forward's padding (before; past gy's end
// the rows and columns dx has read zeros).
namespace {
Geom input_grad_geom(const Geom& g) {
  Geom t = g;
  t.c = g.k, t.k = g.c;
  for (int i = 0; i < 3; ++i) {
    t.in[i] = g.out[i], t.out[i] = g.in[i];
    t.pad[i] = g.ker[i] - 1 - g.pad[i];
  }
  return t;
}
}  // namespace

bool winograd_input_grad_applies(const Geom& g) {
  return g.pad[1] <= 2 && g.pad[2] <= 2 && winograd_applies(input_grad_geom(g));
}

size_t winograd_input_grad_workspace(const Geom& g) { return winograd_workspace(input_grad_geom(g)); }

void winograd_input_grad(const Geom& g, const float* gy, const float* w, float* dx, float* ws, size_t ws_bytes) {
  Wino d = wino_of(input_grad_geom(g));
  d.flipped = true;
  pack(d, w, ws);
  run(d, gy, ws, Epilogue{}, dx, ws, ws_bytes);
}

}  // namespace kiln::conv
