// Stride-1 convolution as one GEMM per kernel tap, without im2col. The input of a tile of samples
// is copied once, zero-padded, into a buffer laid out [channel][sample][padded grid]. On that grid
// the input that tap t reads for output position p sits at p + offset(t) of the same flat array,
// so each tap is a GEMM over a shifted view: y[:, p] += W_t @ x[:, p + offset(t)]. Outputs are
// computed at every grid position and the junk ones (the last k - 1 rows and columns of each
// sample, whose windows run into the padding) discarded. The input gradient is the adjoint (the
// GEMMs add into a padded buffer at the same offsets) and the weight gradient one GEMM per tap
// reducing over the grid, with the output gradient zero at junk positions.
#include <algorithm>
#include <cstring>

#include "cpu/blas.h"
#include "ops/conv_geom.h"

namespace kiln::conv {
namespace {

// Samples per tile: the padded input and the grid-sized output stay near 1 MiB of float32.
constexpr int64_t kTileElems = int64_t(1) << 18;

struct Grid {
  int64_t dims[3];  // the padded extents: out + dilation * (kernel - 1) along each spatial dim
  int64_t S;        // one sample's grid size
  int64_t slack;    // the largest tap offset: shifted reads run this far past the last sample
  int64_t nb;       // samples per tile
  int64_t cols() const { return nb * S; }
  int64_t pitch() const { return nb * S + slack; }  // channel stride of the padded buffers
  int64_t offset(const Geom& g, int64_t tap) const {
    const int64_t a = tap / (g.ker[1] * g.ker[2]), b = tap / g.ker[2] % g.ker[1], e = tap % g.ker[2];
    return (a * g.dil[0] * dims[1] + b * g.dil[1]) * dims[2] + e * g.dil[2];
  }
};

Grid grid_of(const Geom& g) {
  Grid gr{};
  for (int d = 0; d < 3; ++d) gr.dims[d] = g.out[d] + g.dil[d] * (g.ker[d] - 1);
  gr.S = gr.dims[0] * gr.dims[1] * gr.dims[2];
  gr.slack = gr.offset(g, g.kk() - 1);
  gr.nb = std::max<int64_t>(1, std::min(g.n, kTileElems / std::max<int64_t>(1, (g.c + g.k) * gr.S)));
  return gr;
}

// The workspace: the weights repacked per tap, then one slice per part.
int64_t packed_elems(const Geom& g) { return (g.k * g.ckk() + 15) / 16 * 16; }

int64_t slice_elems(const Geom& g, const Grid& gr, Pass pass) {
  int64_t e = g.c * gr.pitch();                       // the padded input (or its gradient)
  e += g.k * gr.cols();                               // the output (or its gradient) on the grid
  if (pass == Pass::weight_grad) e += g.k * g.ckk();  // the part's weight-gradient sum
  return (e + 15) / 16 * 16;
}

int64_t parts_of(const Geom& g, const Grid& gr, Pass pass, size_t ws_bytes, size_t elem) {
  const int64_t slots = (static_cast<int64_t>(ws_bytes / elem) - packed_elems(g)) / slice_elems(g, gr, pass);
  return std::min(std::max<int64_t>(slots, 1), (g.n + gr.nb - 1) / gr.nb);
}

// Calls fn(part, slice, n0, nb, first) for each tile of samples [n0, n0 + nb), the tiles spread
// over the parts, each part with its workspace slice (after the packed weights); first: the part's
// first tile. Returns the number of parts.
template <class T, class F>
int64_t for_each_tile(const Geom& g, const Grid& gr, Pass pass, T* ws, size_t ws_bytes, F&& fn) {
  const int64_t parts = parts_of(g, gr, pass, ws_bytes, sizeof(T)), tiles = (g.n + gr.nb - 1) / gr.nb;
  run_parts(parts, [&](int64_t part) {
    T* slice = ws + packed_elems(g) + part * slice_elems(g, gr, pass);
    const int64_t first = tiles * part / parts;
    for (int64_t tile = first; tile < tiles * (part + 1) / parts; ++tile)
      fn(part, slice, tile * gr.nb, std::min(gr.nb, g.n - tile * gr.nb), tile == first);
  });
  return parts;
}

// Copies between the (N, ch, d, h, w) tensor t, extents e, and buf[ch][s * S + grid position]:
// element (n0 + s, ch, i, j, l) of t is grid position (i + o[0], j + o[1], l + o[2]) of sample s.
// to_grid: t -> buf (the rest of buf is left alone); else buf -> t, adding bias[ch] if given.
template <class T>
void grid_copy(bool to_grid, T* t, int64_t channels, const int64_t e[3], const int64_t o[3], const Grid& gr,
               int64_t pitch, int64_t n0, int64_t nb, T* buf, const T* bias = nullptr) {
  const int64_t plane = e[0] * e[1] * e[2];
  cpu::parallel_for(channels * nb, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ch = i / nb, s = i % nb;
      T* tp = t + ((n0 + s) * channels + ch) * plane;
      T* bp = buf + ch * pitch + s * gr.S + (o[0] * gr.dims[1] + o[1]) * gr.dims[2] + o[2];
      const T b = bias ? bias[ch] : T(0);
      for (int64_t d = 0; d < e[0]; ++d)
        for (int64_t h = 0; h < e[1]; ++h) {
          T* row = tp + (d * e[1] + h) * e[2];
          T* grow = bp + (d * gr.dims[1] + h) * gr.dims[2];
          if (to_grid)
            std::memcpy(grow, row, e[2] * sizeof(T));
          else
            for (int64_t l = 0; l < e[2]; ++l) row[l] = grow[l] + b;
        }
    }
  });
}

void zero(void* p, int64_t elems, size_t elem) { std::memset(p, 0, static_cast<size_t>(elems) * elem); }

// packed[tap][k][cl] = w[k][cl][tap]: each tap's weights as a (K, C/groups) matrix.
template <class T>
void pack_weights(const Geom& g, const T* w, T* packed) {
  const int64_t kk = g.kk(), rows = g.k * g.cg();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < kk; ++t) packed[t * rows + r] = w[r * kk + t];
}

}  // namespace

bool shifted_applies(const Geom& g) {
  // Below ~16 channels per group the per-tap GEMMs are too thin, and on small images the junk
  // positions (2 of every 10 rows and columns of an 8x8 image with a 3x3 kernel) cost more than
  // im2col saves: there one deep GEMM wins (measured on 16x16 and 8x8 ResNet layers).
  if (g.stride[0] != 1 || g.stride[1] != 1 || g.stride[2] != 1 || g.cg() < 16 || g.kg() < 8) return false;
  return grid_of(g).S * 10 <= g.P() * 13;
}

size_t shifted_workspace(const Geom& g, Pass pass, size_t elem) {
  const Grid gr = grid_of(g);
  return static_cast<size_t>(packed_elems(g) + slice_elems(g, gr, pass) * cpu::num_threads()) * elem;
}

template <class T>
void shifted_forward(const Geom& g, const T* x, const T* w, const T* bias, T* out, T* ws, size_t ws_bytes) {
  const Grid gr = grid_of(g);
  const int64_t kg = g.kg(), cg = g.cg(), pitch = gr.pitch(), cols = gr.cols(), kc = g.k * cg;
  const int64_t zero_off[3] = {0, 0, 0};
  pack_weights(g, w, ws);
  for_each_tile(g, gr, Pass::forward, ws, ws_bytes, [&](int64_t, T* xb, int64_t n0, int64_t nb, bool) {
    T* yb = xb + g.c * pitch;
    zero(xb, g.c * pitch, sizeof(T));
    grid_copy(true, const_cast<T*>(x), g.c, g.in, g.pad, gr, pitch, n0, nb, xb);
    for (int64_t grp = 0; grp < g.groups; ++grp)
      for (int64_t t = 0; t < g.kk(); ++t)
        cpu::gemm(false, false, kg, nb * gr.S, cg, T(1), ws + t * kc + grp * kg * cg, cg,
                  xb + grp * cg * pitch + gr.offset(g, t), pitch, t ? T(1) : T(0), yb + grp * kg * cols, cols);
    grid_copy(false, out, g.k, g.out, zero_off, gr, cols, n0, nb, yb, bias);
  });
}

template <class T>
void shifted_input_grad(const Geom& g, const T* gy, const T* w, T* dx, T* ws, size_t ws_bytes) {
  const Grid gr = grid_of(g);
  const int64_t kg = g.kg(), cg = g.cg(), pitch = gr.pitch(), cols = gr.cols(), kc = g.k * cg;
  const int64_t zero_off[3] = {0, 0, 0};
  pack_weights(g, w, ws);
  for_each_tile(g, gr, Pass::input_grad, ws, ws_bytes, [&](int64_t, T* dxb, int64_t n0, int64_t nb, bool) {
    T* gb = dxb + g.c * pitch;
    zero(gb, g.k * cols, sizeof(T));  // junk positions must add nothing
    zero(dxb, g.c * pitch, sizeof(T));
    grid_copy(true, const_cast<T*>(gy), g.k, g.out, zero_off, gr, cols, n0, nb, gb);
    for (int64_t grp = 0; grp < g.groups; ++grp)
      for (int64_t t = 0; t < g.kk(); ++t)
        cpu::gemm(true, false, cg, nb * gr.S, kg, T(1), ws + t * kc + grp * kg * cg, cg, gb + grp * kg * cols, cols,
                  T(1), dxb + grp * cg * pitch + gr.offset(g, t), pitch);
    grid_copy(false, dx, g.c, g.in, g.pad, gr, pitch, n0, nb, dxb);
  });
}

template <class T>
void shifted_weight_grad(const Geom& g, const T* gy, const T* x, T* dw, T* ws, size_t ws_bytes) {
  const Grid gr = grid_of(g);
  const int64_t kg = g.kg(), cg = g.cg(), pitch = gr.pitch(), cols = gr.cols(), kc = g.k * cg, kk = g.kk();
  const int64_t zero_off[3] = {0, 0, 0};
  const int64_t slice = slice_elems(g, gr, Pass::weight_grad);
  auto acc_of = [&](int64_t part) { return ws + packed_elems(g) + part * slice + g.c * pitch + g.k * cols; };
  const int64_t parts = for_each_tile(g, gr, Pass::weight_grad, ws, ws_bytes,
                                      [&](int64_t part, T* xb, int64_t n0, int64_t nb, bool first) {
                                        T* gb = xb + g.c * pitch;
                                        T* acc = acc_of(part);  // acc[tap][k][cl]
                                        zero(xb, g.c * pitch, sizeof(T));
                                        zero(gb, g.k * cols, sizeof(T));
                                        grid_copy(true, const_cast<T*>(x), g.c, g.in, g.pad, gr, pitch, n0, nb, xb);
                                        grid_copy(true, const_cast<T*>(gy), g.k, g.out, zero_off, gr, cols, n0, nb, gb);
                                        for (int64_t grp = 0; grp < g.groups; ++grp)
                                          for (int64_t t = 0; t < kk; ++t)
                                            cpu::gemm(false, true, kg, cg, nb * gr.S, T(1), gb + grp * kg * cols, cols,
                                                      xb + grp * cg * pitch + gr.offset(g, t), pitch,
                                                      first ? T(0) : T(1), acc + t * kc + grp * kg * cg, cg);
                                      });
  if (parts == 0 || g.n == 0) {
    zero(dw, kc * kk, sizeof(T));
    return;
  }
  cpu::parallel_for(kc, 64, [&](int64_t r0, int64_t r1) {  // dw[r][tap] = sum over parts of acc[tap][r]
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t t = 0; t < kk; ++t) {
        T s = acc_of(0)[t * kc + r];
        for (int64_t p = 1; p < parts; ++p) s += acc_of(p)[t * kc + r];
        dw[r * kk + t] = s;
      }
  });
}

#define KILN_SHIFTED(T)                                                                        \
  template void shifted_forward<T>(const Geom&, const T*, const T*, const T*, T*, T*, size_t); \
  template void shifted_input_grad<T>(const Geom&, const T*, const T*, T*, T*, size_t);        \
  template void shifted_weight_grad<T>(const Geom&, const T*, const T*, T*, T*, size_t);
KILN_SHIFTED(float)
KILN_SHIFTED(double)

}  // namespace kiln::conv
