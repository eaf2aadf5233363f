#pragma once
// Where a conv node's optional inputs sit, for its CPU (ops/conv.cpp) and CUDA (cuda/conv.cu) kernels
// and its shape inference: x, w, then the bias, a folded batch norm's gamma, beta, mean and var
// (attribute bn_eps), and a residual added before the ReLU (attribute residual), each where present;
// the last two fused by the compiler (graph/passes.cpp), never by users.
#include <cstddef>

#include "kiln/graph.h"

namespace kiln::conv {

struct ConvInputs {
  int bias = -1, bn = -1, residual = -1;
  ConvInputs(size_t n_in, const Attrs& a) {
    int next = static_cast<int>(n_in);
    if (a.i("residual", 0)) residual = --next;
    if (a.has("bn_eps")) bn = next -= 4;
    if (next > 2) bias = 2;
  }
  int plain() const { return bias >= 0 ? 3 : 2; }  // the inputs before the fused ones
};

}  // namespace kiln::conv
