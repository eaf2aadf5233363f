#pragma once
// A convolution run by output rows, for row-tiled execution (runtime/row_tiles.cpp): at batch 1 each
// thread computes, layer after layer, its band of rows of a chain's values, in memory of its own.
#include <array>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "cpu/weight_cache.h"
#include "kiln/op.h"
#include "ops/conv_geom.h"
#include "ops/conv_inputs.h"

namespace kiln::conv {

class RowConv {
 public:
  // Null where a "conv" node of these concrete input specs cannot run by rows: it must be float32,
  // 2-D, taken by the direct, the filter-lane, the strided 1x1 or Winograd's kernel,
  // with any fused residual shaped as its output. A call computes rows of one sample.
  static std::unique_ptr<RowConv> make(const std::vector<TensorSpec>& inputs, const Attrs& attrs);

  int64_t out_rows() const { return g_.out[1]; }
  int64_t out_cols() const { return g_.out[2]; }
  int64_t filters() const { return g_.k; }
  // Rows [r0, r1) computed together start at a multiple of this, and end at one or at the last row.
  int64_t row_unit() const { return unit_; }
  // The input rows that output rows [r0, r1) read (clipped to the input).
  std::pair<int64_t, int64_t> rows_read(int64_t r0, int64_t r1) const;
  int residual_input() const { return at_.residual; }
  size_t buffer_floats() const { return buffer_; }  // one call's padded rows

  // Once a call, before any rows: the weights packed (cached while the variable is unchanged) and a
  // batch norm folded into a scale and shift.
  void prepare(const std::vector<const Tensor*>& inputs);
  // Output rows [r0, r1) of one sample on this thread: x, the residual and y its (C, H, W) arrays.
  void run(const float* x, const float* residual, float* y, int64_t r0, int64_t r1, float* buf) const;

 private:
  // A kernel's entry points by rows (ops/conv_geom.h).
  struct RowKernel {
    cpu::Derived (*packed)(const Geom&, const float* w, uint64_t w_stamp);
    int64_t (*unit)(const Geom&);
    size_t (*buffer)(const Geom&);
    void (*rows)(const Geom&, const float* x, const float* packed, const Epilogue& e, float* y, int64_t r0, int64_t r1,
                 float* buf);
  };
  static const RowKernel kDirectRows, kLanesRows, kPointwiseRows, kWinogradRows;
  RowConv(const Geom& g, const Attrs& attrs, size_t n_in, const RowKernel& kernel);
  Geom g_;
  ConvInputs at_;
  const RowKernel& kernel_;
  bool relu_;
  double eps_ = 0;
  int64_t unit_ = 1;
  size_t buffer_ = 0;
  // What prepare() derived its members from: each of the weights, bias and batch norm's data and stamp.
  using Sources = std::array<std::pair<const void*, uint64_t>, 6>;
  Sources sources_{};
  cpu::Derived packed_;
  std::vector<float> affine_;  // a folded batch norm: scale, then shift
  const float* bias_ = nullptr;
};

}  // namespace kiln::conv
