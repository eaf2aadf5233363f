// CUDA kernels of the shape ops (cpp/src/ops/shape.cpp defines the ops and their CPU kernels).
// All of them move elements without looking at them, so kernels are instantiated per element size,
// not per dtype; broadcast, concat, split, slice and slice_grad are one strided box copy.
#include <cstdint>
#include <cstring>

#include "common.cuh"
#include "kiln/ops.h"
#include "ops/slice.h"

namespace kiln::cuda {
namespace {

// Below this many elements, positions fit in 32 bits even after one grid stride (at most 2^24) is
// added: the index arithmetic then runs on 32-bit integers, whose division is several times cheaper
// than the emulated 64-bit one and would otherwise bound these memory-bound loops.
constexpr int64_t kMax32 = int64_t(1) << 30;

// Raw bits of `value` converted to `dtype` as the CPU's fill converts it; zero writes all-zero bits
// (the CPU memsets then, so -0.0 fills +0.0 there too).
uint64_t fill_bits(DType dtype, double value, const char* op) {
  uint64_t bits = 0;
  if (value == 0.0) return bits;
  KILN_DISPATCH_ALL(dtype, op, {
    const scalar_t v = static_cast<scalar_t>(value);
    std::memcpy(&bits, &v, sizeof v);  // little-endian host and device: the low bytes are the value
  });
  return bits;
}

// ---- strided box copy ----

// dst[dst0 + sum idx[d] * dst[d]] = src[src0 + sum idx[d] * src[d]] for every idx in extent; strides
// are in elements and may be 0 (broadcast) or negative (slices with negative steps).
struct Box {
  int rank = 0;
  int64_t extent[kMaxRank] = {}, src[kMaxRank] = {}, dst[kMaxRank] = {};
  int64_t src0 = 0, dst0 = 0;
};

// Drops size-1 dimensions and merges neighbours that are contiguous on both sides, so that the
// kernel does fewer divisions and most copies end as one contiguous run.
Box make_box(const Shape& extent, const int64_t* src_stride, const int64_t* dst_stride, int64_t src0, int64_t dst0) {
  Box b;
  b.src0 = src0, b.dst0 = dst0;
  for (int i = 0; i < extent.rank(); ++i) {
    if (extent[i] == 1) continue;
    const int r = b.rank;
    if (r > 0 && b.src[r - 1] == src_stride[i] * extent[i] && b.dst[r - 1] == dst_stride[i] * extent[i]) {
      b.extent[r - 1] *= extent[i];
      b.src[r - 1] = src_stride[i];
      b.dst[r - 1] = dst_stride[i];
      continue;
    }
    b.extent[r] = extent[i], b.src[r] = src_stride[i], b.dst[r] = dst_stride[i];
    ++b.rank;
  }
  return b;
}

// A box between contiguous tensors, with per-dimension starts and steps on each side (cpu::copy_box).
Box box_of(const Shape& src_shape, const int64_t* src_start, const int64_t* src_step, const Shape& dst_shape,
           const int64_t* dst_start, const int64_t* dst_step, const Shape& extent) {
  const Shape ss = contiguous_strides(src_shape), ds = contiguous_strides(dst_shape);
  int64_t sstride[kMaxRank], dstride[kMaxRank], s0 = 0, d0 = 0;
  for (int i = 0; i < extent.rank(); ++i) {
    s0 += src_start[i] * ss[i];
    d0 += dst_start[i] * ds[i];
    sstride[i] = src_step[i] * ss[i];
    dstride[i] = dst_step[i] * ds[i];
  }
  return make_box(extent, sstride, dstride, s0, d0);
}

template <class T, class I>
__global__ void box_copy(I n, const T* __restrict__ x, T* __restrict__ y, Box b) {
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n; i += I(blockDim.x) * I(gridDim.x)) {
    I rest = i, so = I(b.src0), dof = I(b.dst0);
    for (int d = b.rank - 1; d >= 0; --d) {
      const I e = I(b.extent[d]), k = rest % e;
      rest /= e;
      so += k * I(b.src[d]);
      dof += k * I(b.dst[d]);
    }
    y[dof] = x[so];
  }
}

template <class T>
void launch_box(int64_t n, const void* x, void* y, const Box& b, bool small) {
  if (small)
    box_copy<T, int32_t>
        <<<blocks_for(n), kThreads, 0, stream()>>>(int32_t(n), static_cast<const T*>(x), static_cast<T*>(y), b);
  else
    box_copy<T, int64_t><<<blocks_for(n), kThreads, 0, stream()>>>(n, static_cast<const T*>(x), static_cast<T*>(y), b);
}

// Runs a box from src's storage into dst's; a box that is one contiguous run on both sides (after
// merging: concat and split along a leading axis, contiguous slices, same-shape broadcasts) is a
// plain device-to-device copy.
void copy_box(const Tensor& src, Tensor& dst, const Box& b, const char* op) {
  int64_t n = 1;
  for (int d = 0; d < b.rank; ++d) n *= b.extent[d];
  if (n <= 0) return;
  const size_t es = dtype_size(src.dtype());
  const char* x = static_cast<const char*>(src.raw());
  char* y = static_cast<char*>(dst.raw());
  if (b.rank == 0 || (b.rank == 1 && b.src[0] == 1 && b.dst[0] == 1)) {
    check(cudaMemcpyAsync(y + b.dst0 * es, x + b.src0 * es, n * es, cudaMemcpyDeviceToDevice, stream()), op);
    return;
  }
  const bool small = src.numel() <= kMax32 && dst.numel() <= kMax32;
  dispatch_by_size(src.dtype(), op, [&](auto t) { launch_box<decltype(t)>(n, x, y, b, small); });
  check_launch(op);
}

// ---- broadcast / fill ----

void broadcast_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  dispatch_by_size(x.dtype(), "broadcast_to", [](auto) {});  // the dtypes the CPU's kernel takes
  if (y.numel() == 0) return;
  const Shape* shapes[1] = {&x.shape()};
  const cpu::Broadcast<1> bc(y.shape(), shapes);  // y's shape with the input's strides, 0 where broadcast
  Shape extent;
  for (int d = 0; d < bc.rank; ++d) extent.push_back(bc.shape[d]);
  const Shape ys = contiguous_strides(extent);
  copy_box(x, y, make_box(extent, bc.strides[0], ys.begin(), 0, 0), "broadcast_to");
}

template <class T>
__global__ void fill_bits_kernel(int64_t n, T* y, T v) {
  KILN_GRID_LOOP(i, n) y[i] = v;
}

void fill(Tensor& t, double value, const char* op) {
  const int64_t n = t.numel();
  const uint64_t bits = fill_bits(t.dtype(), value, op);
  if (n == 0) return;
  if (bits == 0) {
    check(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()), op);
    return;
  }
  dispatch_by_size(t.dtype(), op, [&](auto v) {
    using T = decltype(v);
    fill_bits_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(n, t.data<T>(), T(bits));
  });
  check_launch(op);
}

void full_like_kernel(const KernelContext& c) { fill(c.output(0), c.attrs.f("value"), "full_like"); }

// ---- concat / split ----

// Copies each part into (or out of) its place along `axis` of the whole: one copy per part.
void move_parts(const Tensor& whole, const Tensor* const* parts, int n, int axis, bool into_whole, const char* op) {
  int64_t zero[kMaxRank] = {}, one[kMaxRank], start[kMaxRank] = {};
  for (int i = 0; i < kMaxRank; ++i) one[i] = 1;
  Tensor w = whole;
  for (int k = 0; k < n; ++k) {
    Tensor p = *parts[k];
    if (into_whole)
      copy_box(p, w, box_of(p.shape(), zero, one, w.shape(), start, one, p.shape()), op);
    else
      copy_box(w, p, box_of(w.shape(), start, one, p.shape(), zero, one, p.shape()), op);
    start[axis] += p.shape()[axis];
  }
}

void concat_kernel(const KernelContext& c) {
  move_parts(c.output(0), c.in, c.n_in, normalize_axis(c.attrs.i("axis"), c.output(0).rank(), "concat"), true,
             "concat");
}
void split_kernel(const KernelContext& c) {
  move_parts(c.input(0), const_cast<const Tensor* const*>(c.out), c.n_out,
             normalize_axis(c.attrs.i("axis"), c.input(0).rank(), "split"), false, "split");
}

// ---- slice / pad ----

void slice_kernel(const KernelContext& c) {
  const SliceBox b = slice_box(c.input(0).shape(), c.attrs);
  int64_t zero[kMaxRank] = {}, one[kMaxRank];
  for (int i = 0; i < kMaxRank; ++i) one[i] = 1;
  copy_box(c.input(0), c.output(0),
           box_of(c.input(0).shape(), b.start, b.step, c.output(0).shape(), zero, one, b.extent), "slice");
}

void slice_grad_kernel(const KernelContext& c) {
  Tensor& gx = c.output(0);
  const SliceBox b = slice_box(gx.shape(), c.attrs);
  int64_t zero[kMaxRank] = {}, one[kMaxRank];
  for (int i = 0; i < kMaxRank; ++i) one[i] = 1;
  // A slice never repeats an element, so one that has all of them leaves nothing to zero.
  if (b.extent.numel() < gx.numel()) check(cudaMemsetAsync(gx.raw(), 0, gx.nbytes(), stream()), "slice_grad");
  copy_box(c.input(0), gx, box_of(c.input(0).shape(), zero, one, gx.shape(), b.start, b.step, b.extent), "slice_grad");
}

// y[idx] = x[idx - before] where that lies inside x, else the fill value. ysize/xsize/before are per
// dimension after merging unpadded neighbours; xstride is x's row-major stride.
struct PadDims {
  int rank = 0;
  int64_t ysize[kMaxRank] = {}, xsize[kMaxRank] = {}, xstride[kMaxRank] = {}, before[kMaxRank] = {};
};

// One pass over the output (the CPU fills, then copies the interior: two passes over memory).
template <class T, class I>
__global__ void pad_copy(I n, const T* __restrict__ x, T* __restrict__ y, PadDims p, T value) {
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n; i += I(blockDim.x) * I(gridDim.x)) {
    I rest = i, off = 0;
    bool inside = true;
    for (int d = p.rank - 1; d >= 0; --d) {
      const I e = I(p.ysize[d]), xi = rest % e - I(p.before[d]);
      rest /= e;
      inside = inside && xi >= 0 && xi < I(p.xsize[d]);
      if (inside) off += xi * I(p.xstride[d]);
    }
    y[i] = inside ? x[off] : value;
  }
}

template <class T>
void launch_pad(int64_t n, const void* x, void* y, const PadDims& p, uint64_t bits, bool small) {
  const T* xs = static_cast<const T*>(x);
  T* ys = static_cast<T*>(y);
  const T v = T(bits);
  if (small)
    pad_copy<T, int32_t><<<blocks_for(n), kThreads, 0, stream()>>>(int32_t(n), xs, ys, p, v);
  else
    pad_copy<T, int64_t><<<blocks_for(n), kThreads, 0, stream()>>>(n, xs, ys, p, v);
}

void pad_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const Shape& s = x.shape();
  const auto& pads = c.attrs.ints("pads");
  if (pads.size() % 2 || static_cast<int>(pads.size()) > 2 * s.rank())
    throw Error("pad: expected an even number of pad sizes, at most 2 per dimension of " + s.str());
  // pads: (before, after) pairs starting from the last dimension, as torch.nn.functional.pad.
  int64_t before[kMaxRank] = {}, after[kMaxRank] = {};
  for (size_t k = 0; k < pads.size() / 2; ++k) {
    const int d = s.rank() - 1 - static_cast<int>(k);
    before[d] = pads[2 * k];
    after[d] = pads[2 * k + 1];
  }
  bool full = true;  // pure cropping: every output element comes from x, nothing is filled
  for (int i = 0; i < s.rank(); ++i) full = full && before[i] <= 0 && after[i] <= 0;
  const uint64_t bits = full ? 0 : fill_bits(y.dtype(), c.attrs.f("value", 0.0), "pad");
  const int64_t n = y.numel();
  if (n == 0) return;
  if (x.numel() == 0) {  // all padding
    fill(y, c.attrs.f("value", 0.0), "pad");
    return;
  }
  const Shape xst = contiguous_strides(s);
  PadDims p;
  for (int i = 0; i < s.rank(); ++i) {
    if (y.shape()[i] == 1 && before[i] == 0) continue;  // x's size is 1 too: index 0 on both sides
    const int r = p.rank;
    if (r > 0 && before[i] == 0 && after[i] == 0 && p.before[r - 1] == 0 && p.xsize[r - 1] == p.ysize[r - 1] &&
        p.xstride[r - 1] == xst[i] * s[i]) {  // a cropped size-1 output dimension in between breaks this
      p.ysize[r - 1] *= s[i], p.xsize[r - 1] *= s[i], p.xstride[r - 1] = xst[i];
      continue;
    }
    p.ysize[r] = y.shape()[i], p.xsize[r] = s[i], p.xstride[r] = xst[i], p.before[r] = before[i];
    ++p.rank;
  }
  // No padding left, only (at most) cropping of leading dimensions: x's first n elements.
  if (p.rank == 0 || (p.rank == 1 && p.before[0] == 0 && p.xsize[0] == p.ysize[0] && p.xstride[0] == 1)) {
    check(cudaMemcpyAsync(y.raw(), x.raw(), y.nbytes(), cudaMemcpyDeviceToDevice, stream()), "pad");
    return;
  }
  bool small = n <= kMax32 && x.numel() <= kMax32;
  for (int d = 0; d < p.rank; ++d) small = small && p.before[d] <= kMax32 && p.before[d] >= -kMax32;
  dispatch_by_size(y.dtype(), "pad", [&](auto t) { launch_pad<decltype(t)>(n, x.raw(), y.raw(), p, bits, small); });
  check_launch("pad");
}

}  // namespace

void register_shape_kernels(OpRegistry& r) {
  r.set_cuda_kernel("broadcast_to", broadcast_kernel);
  r.set_cuda_kernel("broadcast_like", broadcast_kernel);
  r.set_cuda_kernel("full_like", full_like_kernel);
  r.set_cuda_kernel("concat", concat_kernel);
  r.set_cuda_kernel("split", split_kernel);
  r.set_cuda_kernel("split_like", split_kernel);
  r.set_cuda_kernel("slice", slice_kernel);
  r.set_cuda_kernel("slice_grad", slice_grad_kernel);
  r.set_cuda_kernel("pad", pad_kernel);
}

}  // namespace kiln::cuda
