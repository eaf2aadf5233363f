#pragma once
// GEMM for kiln's kernels. OpenBLAS runs single-threaded and kiln's own pool splits each large
// GEMM into column (or row) blocks: one set of threads for every kernel, so BLAS threads never
// spin on the cores that the next kernel needs.
#include <cstdint>

namespace kiln::cpu {

// C (m x n) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C, all row-major.
void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc);
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb,
          double beta, double* c, int ldc);

constexpr int kRowsPanel = 32;  // the columns of C one step of gemm_rows covers
// C (m x n) = A (m x k) @ B, B packed in panels of 32 columns, each k x 32 contiguous:
// bt[(j / 32) * k * 32 + p * 32 + j % 32] = B[p][j], zeros past n. A few rows (a small batch through a
// linear layer) against a weight packed once and cached (cpu/weight_cache.h): no packing per call,
// where BLAS packs the whole weight, and each step of k reads 128 contiguous bytes of B.
void gemm_rows(int m, int n, int k, const float* a, int lda, const float* bt, float* c, int ldc);
// The floats of B packed for gemm_rows.
inline int64_t rows_packed_size(int64_t n, int64_t k) { return (n + kRowsPanel - 1) / kRowsPanel * kRowsPanel * k; }

}  // namespace kiln::cpu
