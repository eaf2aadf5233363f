#pragma once
// The geometry of a convolution and how its work is cut, shared by its two CPU algorithms:
// im2col + GEMM (ops/conv.cpp, any stride) and shifted GEMMs (ops/conv_shifted.cpp, stride 1).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cpu/parallel.h"
#include "cpu/vec.h"
#include "cpu/weight_cache.h"

namespace kiln::conv {

// A tile's im2col columns: 256k elements (1 MiB of float32): GEMMs this wide run near their
// peak, and the columns are still read back from L2 or L3 rather than memory.
constexpr int64_t kColumnElems = int64_t(1) << 18;

enum class Pass { forward, input_grad, weight_grad };

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
  int64_t rows_per_sample() const { return out[0] * out[1]; }
  // Output rows per tile: as many as keep the tile's im2col columns within kColumnElems.
  int64_t tile_rows() const {
    return std::max<int64_t>(1, std::min(n * rows_per_sample(), kColumnElems / std::max<int64_t>(1, ckk() * out[2])));
  }
  int64_t tile() const { return tile_rows() * out[2]; }
  // One part's workspace: the columns, a (kg, tile) buffer unless the input gradient, and the weight
  // gradient's accumulator; rounded to whole cache lines.
  int64_t slot_elems(Pass pass) const {
    int64_t e = ckk() * tile();
    if (pass != Pass::input_grad) e += kg() * tile();
    if (pass == Pass::weight_grad) e += k * ckk();
    return (std::max<int64_t>(e, 1) + 15) / 16 * 16;
  }
  // Planned for the pool's size at compile time; a kernel run with more threads uses fewer parts.
  size_t workspace(Pass pass, size_t elem) const {
    return static_cast<size_t>(slot_elems(pass) * cpu::num_threads()) * elem;
  }
};

// A sample's input (c, h, w) as the direct kernels read it, zero-padded: planes of hp rows of pitch
// floats, x at row pt and column pl; rows and columns past the input are zeros.
struct Padding {
  int64_t h, w, hp, pitch, pt, pl;
};

// n floats at p set to 0, and copied from src: whole vectors, the last one overlapping the one before (the
// compiler turned the loops into calls to memset and memmove, 6% of ResNet-8's time at batch 1).
inline void zero_floats(float* p, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    cpu::store(p + j, cpu::splat(0.f));
    asm volatile("");  // a loop with more in it than the store: not a memset to the compiler
  }
  if (j < n && n >= 16) return cpu::store(p + n - 16, cpu::splat(0.f));
  for (; j < n; ++j) p[j] = 0.f;
}
inline void copy_floats(float* __restrict dst, const float* __restrict src, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    cpu::store(dst + j, cpu::load(src + j));
    asm volatile("");  // likewise: not a memmove
  }
  if (j == n) return;
  if (n >= 16) return cpu::store(dst + n - 16, cpu::load(src + n - 16));
  if (n >= 8) {
    cpu::store(dst, cpu::load<cpu::v8>(src));
    return cpu::store(dst + n - 8, cpu::load<cpu::v8>(src + n - 8));
  }
  for (; j < n; ++j) dst[j] = src[j];
}

// Rows [r0, r1) of channels [c0, c1) of the padded input: each row zeroed, then the input's copied over it
// (an element-wise select ran at a float a cycle on rows of 34: padding took as long as a 16-channel
// Winograd layer's GEMMs).
inline void pad_rows(const Padding& p, const float* __restrict x, float* __restrict buf, int64_t c0, int64_t c1,
                     int64_t r0, int64_t r1) {
  const int64_t n = std::max<int64_t>(0, std::min(p.w, p.pitch - p.pl));  // the input's columns a row holds
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = r0; r < r1; ++r) {
      float* row = buf + (c * p.hp + r) * p.pitch;
      zero_floats(row, p.pitch);
      const int64_t src = r - p.pt;
      if (src >= 0 && src < p.h) copy_floats(row + p.pl, x + (c * p.h + src) * p.w, n);
    }
}

// At batch 1 a direct convolution splits its output rows into bands, a band a thread, where the
// sample's (padded) input is at least half as large as its weights: a thread then reads the rows it
// wrote in the layer before, where split by filters half of each layer's input came from the other
// core's cache (ResNet-8 at batch 1 ran 1.4x slower on two cores than on one where the host placed
// the two virtual CPUs far apart). Deep layers of more weights than pixels stay split by filters, each
// thread reading only its filters' weights (in bands, ResNet-18 at batch 1 ran 8% slower).
inline bool rows_in_bands(int64_t padded_input, int64_t packed_weights) { return 2 * padded_input >= packed_weights; }

// Runs fn(part) for parts in [0, parts) on the pool, each part on one thread. With a single part
// it runs here, outside any parallel region, so its inner loops and GEMMs use the whole pool.
template <class F>
void run_parts(int64_t parts, F&& fn) {
  if (parts <= 1) {
    if (parts == 1) fn(int64_t{0});
    return;
  }
  cpu::parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(p);
  });
}

// Shifted GEMMs (conv_shifted.cpp): used when every stride is 1 and the groups have enough
// channels for a GEMM over them to run near peak.
bool shifted_applies(const Geom& g);
size_t shifted_workspace(const Geom& g, Pass pass, size_t elem);
template <class T>
void shifted_forward(const Geom& g, const T* x, const T* w, const T* bias, T* out, T* ws, size_t ws_bytes);
template <class T>
void shifted_input_grad(const Geom& g, const T* gy, const T* w, T* dx, T* ws, size_t ws_bytes);
template <class T>
void shifted_weight_grad(const Geom& g, const T* gy, const T* x, T* dw, T* ws, size_t ws_bytes);

// What the float32 forward kernels apply to each output as they store it, in this order: y * scale[k]
// (a folded batch norm's scale) + bias[k] (its shift, or the convolution's bias) + residual (an
// (N, K, P) array like the output: a ResNet block's shortcut), then max(0, y) if relu.
struct Epilogue {
  const float* bias = nullptr;
  const float* scale = nullptr;
  const float* residual = nullptr;
  bool relu = false;
  // One sample's residual added to every sample (a batch of 1 broadcast): its elements, else 0.
  int64_t residual_sample = 0;
};
// The epilogue of the outputs from element `offset` on (a later sample's).
inline Epilogue at_sample(Epilogue e, int64_t offset) {
  if (e.residual && !e.residual_sample) e.residual += offset;
  return e;
}

// The first n (up to 16) of a vector of outputs stored at y, the residual at res (unless null) added and
// the ReLU applied first.
inline void store_outputs(float* y, const float* res, cpu::v16 v, int64_t n, bool relu) {
  if (res) v += n == 16 ? cpu::load(res) : cpu::load_part(res, n);
  if (relu) v = v > 0 ? v : 0;
  n == 16 ? cpu::store(y, v) : cpu::store_part(y, v, n);
}

// Direct convolution (conv_direct.cpp): float32, 1-D and 2-D, stride 1, all three passes.
bool direct_applies(const Geom& g, Pass pass);
size_t direct_workspace(const Geom& g, Pass pass);
// w_stamp: the weights' Storage::stamp() when they are a variable's (their packed form is then
// cached until the variable is written), else 0.
void direct_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& e, float* out,
                    float* ws, size_t ws_bytes);
void direct_input_grad(const Geom& g, const float* gy, const float* w, float* dx, float* ws, size_t ws_bytes);
// By output rows, for row-tiled execution (runtime/row_tiles.cpp): the forward's packed weights of a
// variable (cached), the output rows computed together (rows [r0, r1) start at a multiple), the floats
// of the buffer a call pads into, and output rows [r0, r1) of one sample on this thread, reading the
// input rows they need.
cpu::Derived direct_packed(const Geom& g, const float* w, uint64_t w_stamp);
int64_t direct_row_unit(const Geom& g);
size_t direct_rows_buffer(const Geom& g);
void direct_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0,
                 int64_t r1, float* buf);
void direct_weight_grad(const Geom& g, const float* gy, const float* x, float* dw, float* ws, size_t ws_bytes);

// Direct convolution with the filters in the lanes (conv_lanes.cpp): float32, 1-D and 2-D, one group,
// strides above 1, and stride 1 where it wastes fewer lanes than the direct kernels; the forward only.
bool lanes_applies(const Geom& g);
size_t lanes_workspace(const Geom& g);
void lanes_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& e, float* out,
                   float* ws, size_t ws_bytes);
// By output rows, as the direct kernel's (any rows [r0, r1)).
cpu::Derived lanes_packed(const Geom& g, const float* w, uint64_t w_stamp);
size_t lanes_rows_buffer(const Geom& g);
void lanes_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0, int64_t r1,
                float* buf);

// Strided 1x1 convolutions without padding (conv_pointwise.cpp): float32, 2-D, one group; the forward, and
// by output rows as the direct kernel's (any rows [r0, r1)).
bool pointwise_applies(const Geom& g);
size_t pointwise_workspace(const Geom& g);
void pointwise_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& e, float* out,
                       float* ws, size_t ws_bytes);
cpu::Derived pointwise_packed(const Geom& g, const float* w, uint64_t w_stamp);
size_t pointwise_rows_buffer(const Geom& g);
void pointwise_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0,
                    int64_t r1, float* buf);

// Winograd F(2x2, 3x3) (conv_winograd.cpp): float32, 2-D, 3x3, stride 1, one group; the forward.
bool winograd_applies(const Geom& g);
size_t winograd_workspace(const Geom& g);
void winograd_forward(const Geom& g, const float* x, const float* w, uint64_t w_stamp, const Epilogue& e, float* out,
                      float* ws, size_t ws_bytes);
// By output rows, as the direct kernel's, wherever winograd_applies: the transformed weights of a variable
// (cached), the output rows computed together, the floats of the buffer a call works in, and output rows
// [r0, r1) of one sample on this thread.
cpu::Derived winograd_packed(const Geom& g, const float* w, uint64_t w_stamp);
int64_t winograd_row_unit(const Geom& g);
size_t winograd_rows_buffer(const Geom& g);
void winograd_rows(const Geom& g, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0,
                   int64_t r1, float* buf);
// The input gradient (and a transposed convolution's forward) of the convolutions g for which Winograd
// applies to that gradient's own convolution.
bool winograd_input_grad_applies(const Geom& g);
size_t winograd_input_grad_workspace(const Geom& g);
void winograd_input_grad(const Geom& g, const float* gy, const float* w, float* dx, float* ws, size_t ws_bytes);

}  // namespace kiln::conv
