// Direct convolution with the filters in the lanes (float32, 1-D and 2-D, one group): a vector holds
// one output pixel of 16 filters, and a register block of 7 (or 8) pixels x 32 filters (14 or 16
// accumulators) multiplies each input value, broadcast, by two weight vectors: MLAS's NCHWc loop,
// with NCHW tensors. The pixel-lane kernels of conv_direct.cpp need unit stride (their vectors are 16
// neighbouring outputs, which a stride would turn into a gather); this takes every strided layer (a
// ResNet's 7x7 stem, its 3x3 and 1x1 downsampling layers, which im2col + GEMM ran at half the
// machine's rate), and the stride-1 layers whose rows of 7, 14, 28 or 56 pixels would leave lanes of
// those vectors empty. The output is stored transposed from the block, 8 filters x 8 pixels at a time
// transposed in registers (one float at a time, the store took 3/4 of a 1x1 layer of 16 channels).
// Forward only.
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
using cpu::v8;
constexpr int64_t kLanes = 16;
constexpr int64_t kFilters = 2 * kLanes;  // filters per register block
// Output pixels per register block: 8 where rows split evenly into 8 (8, 16, 32, 56, 112), else 7
// (rows of 7, 14 and 28). Eight make 16 FMAs of each tap's two weight vectors rather than 14:
// ResNet-18's 56-wide layers ran 6% faster so, its 112-wide stem 14%.
constexpr int kMaxPixels = 8;
int pixels_per_block(int64_t ow) { return ow % 8 == 0 ? 8 : 7; }

// r[j] (8 pixels j of 8 filters each) transposed in registers: r[f] then holds filter f's 8 pixels.
inline void transpose8(v8 (&r)[8]) {
  v8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int k = 0; k < 2; ++k) {
      u[i + 2 * k] = __builtin_shufflevector(t[i + k], t[i + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * k + 1] = __builtin_shufflevector(t[i + k], t[i + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int k = 0; k < 4; ++k) {
    r[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

struct Lanes {
  int64_t n, c, h, w, k, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl;
  // The padded input holds what the outputs read: hp rows of wp, x at (pt, pl).
  int64_t rows_read(int64_t oh1) const { return (oh1 - 1) * sh + (kh - 1) * dh + 1; }  // by output rows [0, oh1)
  int64_t hp() const { return rows_read(oh); }
  int64_t wp() const { return (ow - 1) * sw + (kw - 1) * dw + 1; }
  int64_t plane() const { return hp() * wp(); }
  Padding padding() const { return {h, w, hp(), wp(), pt, pl}; }
  int64_t padded() const { return c * plane(); }
  int64_t taps() const { return kh * kw; }
  int64_t blocks() const { return (k + kFilters - 1) / kFilters; }
  int64_t block_elems() const { return c * taps() * kFilters; }
  int64_t packed() const { return blocks() * block_elems(); }
};

Lanes lanes_of(const Geom& g) {
  return Lanes{g.n,      g.c,         g.in[1],     g.in[2],  g.k,      g.out[1], g.out[2], g.ker[1],
               g.ker[2], g.stride[1], g.stride[2], g.dil[1], g.dil[2], g.pad[1], g.pad[2]};
}

// packed[block][c][tap][32]: a block's 32 filters side by side, zero past the last filter.
void pack(const Lanes& d, const float* w, float* packed) {
  const int64_t T = d.taps(), C = d.c;
  cpu::parallel_for(d.blocks(), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      float* out = packed + b * d.block_elems();
      std::fill(out, out + d.block_elems(), 0.f);
      for (int64_t f = 0; f < std::min(kFilters, d.k - b * kFilters); ++f)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t t = 0; t < T; ++t) out[(c * T + t) * kFilters + f] = w[((b * kFilters + f) * C + c) * T + t];
    }
  });
}

// A sample's input as the blocks read it: the padded copy, or x itself where no padding is read.
struct Src {
  const float* x;
  int64_t pitch, plane;  // floats between rows, and between channels
};

// out[j][f] = sum over (c, tap) of the padded input under output pixel (oh, ow0 + j) times filter f of
// the block, for NP pixels; S, the column stride, and KW, the kernel's width, are constants where
// they are not 0 (then d.sw and d.kw).
template <int NP, int S, int KW>
void block(const Lanes& d, const Src& xs, const float* wb, int64_t oh, int64_t ow0, float (*out)[kFilters]) {
  const int64_t sw = S ? S : d.sw, wp = xs.pitch, plane = xs.plane, T = d.taps(), kw = KW ? KW : d.kw;
  v16 acc[NP][2];
#pragma GCC unroll 8
  for (int j = 0; j < NP; ++j) acc[j][0] = acc[j][1] = splat(0.f);
  const float* x0 = xs.x + oh * d.sh * wp + ow0 * sw;
  for (int64_t c = 0; c < d.c; ++c) {
    for (int64_t a = 0; a < d.kh; ++a) {
      const float* xr = x0 + c * plane + a * d.dh * wp;
      const float* wr = wb + (c * T + a * kw) * kFilters;
#pragma GCC unroll 3
      for (int64_t b = 0; b < kw; ++b) {
        const v16 w0 = load(wr + b * kFilters), w1 = load(wr + b * kFilters + kLanes);
        const float* xb = xr + b * d.dw;
#pragma GCC unroll 8
        for (int j = 0; j < NP; ++j) {
          const v16 s = splat(xb[j * sw]);
          acc[j][0] += s * w0;
          acc[j][1] += s * w1;
        }
      }
    }
  }
  for (int j = 0; j < NP; ++j) {
    std::memcpy(out[j], &acc[j][0], sizeof(v16));
    std::memcpy(out[j] + kLanes, &acc[j][1], sizeof(v16));
  }
}

// Output row oh of filter blocks [b0, b1): each block of pixels runs against every filter block while its
// input is in L1; the weights stream from L2.
template <int S, int KW>
void row_blocks(const Lanes& d, const Src& xs, const float* packed, int64_t oh, int64_t b0, int64_t b1,
                const Epilogue& e, float* y) {
  const int64_t P = d.oh * d.ow;
  float out[kMaxPixels][kFilters] = {};  // rows past a short block's pixels stay defined
  const int tile = pixels_per_block(d.ow);
  for (int64_t ow0 = 0; ow0 < d.ow; ow0 += tile) {
    const int np = static_cast<int>(std::min<int64_t>(tile, d.ow - ow0));
    for (int64_t b = b0; b < b1; ++b) {
      const float* wb = packed + b * d.block_elems();
      switch (np) {  // a switch, not a table of pointers: GCC inlines each case (through pointers 30% slower)
        case 8:
          block<8, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        case 7:
          block<7, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        case 6:
          block<6, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        case 5:
          block<5, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        case 4:
          block<4, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        case 3:
          block<3, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        case 2:
          block<2, S, KW>(d, xs, wb, oh, ow0, out);
          break;
        default:
          block<1, S, KW>(d, xs, wb, oh, ow0, out);
          break;
      }
      // Stored transposed, 8 filters x 8 pixels at a time in registers: y's rows are a filter's pixels.
      const int64_t k0 = b * kFilters, nk = std::min(kFilters, d.k - k0);
      for (int64_t f0 = 0; f0 < nk; f0 += 8) {
        v8 r[8];
        for (int j = 0; j < 8; ++j) std::memcpy(&r[j], out[j] + f0, sizeof(v8));  // rows past np: unused
        transpose8(r);
        for (int64_t f = f0; f < std::min(nk, f0 + 8); ++f) {
          const int64_t at = (k0 + f) * P + oh * d.ow + ow0;
          v8 v = r[f - f0] * (e.scale ? e.scale[k0 + f] : 1.f) + (e.bias ? e.bias[k0 + f] : 0.f);
          if (np == 8) {
            if (e.residual) v += load<v8>(e.residual + at);
            if (e.relu) v = v > 0 ? v : 0;
            std::memcpy(y + at, &v, sizeof v);
            continue;
          }
          float lanes[8];  // a short block (the end of a row): its pixels one by one
          std::memcpy(lanes, &v, sizeof lanes);
          for (int j = 0; j < np; ++j) {
            const float o = lanes[j] + (e.residual ? e.residual[at + j] : 0.f);
            y[at + j] = e.relu && !(o > 0) ? 0.f : o;
          }
        }
      }
    }
  }
}

// Whether the outputs read no padding: then the blocks read x in place.
bool reads_no_padding(const Lanes& d) { return d.pt == 0 && d.pl == 0 && d.hp() <= d.h && d.wp() <= d.w; }

// Output row oh of filter blocks [b0, b1). Strides 1 and 2 and kernels 3 and 1 wide (most networks')
// as constants: the block's loads then have constant offsets and its loop over the kernel's columns
// unrolls (stride-2 layers 25% faster; ResNet-18's 1x1 stride-2 shortcuts 17 - 23%).
void row(const Lanes& d, const Src& xs, const float* packed, int64_t oh, int64_t b0, int64_t b1, const Epilogue& e,
         float* y) {
  auto run = d.kw == 3   ? (d.sw == 1   ? row_blocks<1, 3>
                            : d.sw == 2 ? row_blocks<2, 3>
                                        : row_blocks<0, 3>)
             : d.kw == 1 ? (d.sw == 2 ? row_blocks<2, 1> : row_blocks<0, 1>)
                         : (d.sw == 1   ? row_blocks<1, 0>
                            : d.sw == 2 ? row_blocks<2, 0>
                                        : row_blocks<0, 0>);
  run(d, xs, packed, oh, b0, b1, e, y);
}

// Small images (the deep layers of a network): their whole input stays in L2 beside one filter block, and a
// filter block at a time over all rows reads the weights once rather than once a row (from L3 or memory).
// Large ones: a row at a time over several blocks, the rows' input in L1, the weights streaming from L2.
bool block_outer(const Lanes& d) {
  constexpr int64_t kSmallInput = 512 << 10;
  return d.padded() * int64_t(sizeof(float)) <= kSmallInput && d.blocks() >= 2;
}

// Output rows [oh0, oh1) of one sample, every filter, on this thread; buf (a padded sample's worth)
// takes the input rows they read unless they read no padding.
void rows_of_sample(const Lanes& d, const float* x, const float* packed, const Epilogue& e, float* y, int64_t oh0,
                    int64_t oh1, float* buf) {
  Src xs{x, d.w, d.h * d.w};
  if (!reads_no_padding(d)) {
    pad_rows(d.padding(), x, buf, 0, d.c, oh0 * d.sh, d.rows_read(oh1));
    xs = Src{buf, d.wp(), d.plane()};
  }
  if (block_outer(d))  // a block's weights read once a band
    for (int64_t b = 0; b < d.blocks(); ++b)
      for (int64_t oh = oh0; oh < oh1; ++oh) row(d, xs, packed, oh, b, b + 1, e, y);
  else  // a row's input read from L1 by every block
    for (int64_t oh = oh0; oh < oh1; ++oh) row(d, xs, packed, oh, 0, d.blocks(), e, y);
}

cpu::DerivedShape shape_key(const Lanes& d) { return cpu::DerivedShape{d.k, d.c, d.taps(), -kFilters}; }

cpu::Derived cached_packed(const Lanes& d, const float* w, uint64_t w_stamp) {
  return cpu::derived_weights(w, w_stamp, shape_key(d), static_cast<size_t>(d.packed()),
                              [&](float* out) { pack(d, w, out); });
}

}  // namespace

bool lanes_applies(const Geom& g) {
  if (g.groups != 1 || g.ker[0] != 1 || g.in[0] != 1 || g.out[1] <= 0 || g.out[2] <= 0 || g.c <= 0 || g.k <= 0)
    return false;
  if (g.stride[1] > 1 || g.stride[2] > 1) return true;
  // Stride 1 as well where conv_direct.cpp's vectors of 16 pixels would leave lanes empty (rows of 7, 14, 28 or
  // 56 fill 7/8 of them) and the filters fill whole blocks: ResNet's layers at 224x224 ran 10-20% faster so.
  const int64_t ow = g.out[2];
  const bool pixel_lanes_full = ow % 16 == 0 || ow == 8 || ow == 4 || ow == 2;
  return !pixel_lanes_full && g.k % kFilters == 0 && g.c * g.kk() >= 64;
}

// The packed weights (unless cached), then one padded sample per thread unless no padding is read.
size_t lanes_workspace(const Geom& g) {
  const Lanes d = lanes_of(g);
  const int64_t pads = reads_no_padding(d) ? 0 : d.padded() * cpu::num_threads();
  return static_cast<size_t>(d.packed() + pads) * sizeof(float);
}

void lanes_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& epilogue, float* y,
                   float* ws, size_t ws_bytes) {
  const Lanes d = lanes_of(g);
  cpu::Derived cached;  // a variable's weights in an inference call: packed once
  const float* packed = cpu::packed_weights(w, w_stamp, shape_key(d), static_cast<size_t>(d.packed()), ws, cached,
                                            [&](float* out) { pack(d, w, out); });
  // Tasks: an output row and up to 4 filter blocks, so that rows of few pixels still make enough of them.
  constexpr int64_t kBlocksPerTask = 4;
  const int64_t groups = (d.blocks() + kBlocksPerTask - 1) / kBlocksPerTask;
  const bool padding = !reads_no_padding(d);
  // Padded copies the workspace holds (one a part); reading x in place, parts need none.
  const int64_t slots =
      padding ? static_cast<int64_t>(ws_bytes / sizeof(float) - d.packed()) / d.padded() : int64_t(cpu::num_threads());
  // One sample: in bands of output rows (rows_in_bands), each thread computing every filter of its
  // rows and padding just the input rows it reads into its own buffer.
  const int64_t bands =
      d.n == 1 && rows_in_bands(d.padded(), d.packed()) ? std::min({slots, int64_t(cpu::num_threads()), d.oh / 2}) : 1;
  if (bands > 1) {
    run_parts(bands, [&](int64_t part) {
      rows_of_sample(d, x, packed, epilogue, y, d.oh * part / bands, d.oh * (part + 1) / bands,
                     padding ? ws + d.packed() + part * d.padded() : nullptr);
    });
    return;
  }
  // A batch of at least a sample per thread: each thread takes whole samples. Fewer: the rows of each sample
  // spread over the pool.
  const int64_t parts = d.n >= cpu::num_threads() ? std::min(slots, int64_t(cpu::num_threads())) : 1;
  run_parts(parts, [&](int64_t part) {
    float* buf = ws + d.packed() + part * d.padded();
    for (int64_t n = d.n * part / parts; n < d.n * (part + 1) / parts; ++n) {
      const float* xn = x + n * d.c * d.h * d.w;
      Src xs{xn, d.w, d.h * d.w};
      if (padding) {
        cpu::parallel_for(d.c, 1, [&](int64_t c0, int64_t c1) { pad_rows(d.padding(), xn, buf, c0, c1, 0, d.hp()); });
        xs = Src{buf, d.wp(), d.plane()};
      }
      float* yn = y + n * d.k * d.oh * d.ow;
      const Epilogue en = at_sample(epilogue, n * d.k * d.oh * d.ow);
      if (block_outer(d))  // each filter block runs over every row: its weights are read once
        cpu::parallel_for(d.blocks(), 1, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            for (int64_t oh = 0; oh < d.oh; ++oh) row(d, xs, packed, oh, b, b + 1, en, yn);
        });
      else
        cpu::parallel_for(d.oh * groups, 1, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r)
            row(d, xs, packed, r / groups, r % groups * kBlocksPerTask,
                std::min(d.blocks(), (r % groups + 1) * kBlocksPerTask), en, yn);
        });
    }
  });
}

cpu::Derived lanes_packed(const Geom& g, const float* w, uint64_t w_stamp) {
  return cached_packed(lanes_of(g), w, w_stamp);
}

size_t lanes_rows_buffer(const Geom& g) { return static_cast<size_t>(lanes_of(g).padded()); }

void lanes_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0, int64_t r1,
                float* buf) {
  rows_of_sample(lanes_of(g), x, packed, e, y, r0, r1, buf);
}

}  // namespace kiln::conv
