#pragma once
// GEMM for kiln's kernels. OpenBLAS runs single-threaded and kiln's own pool splits each large
// GEMM into column (or row) blocks: one set of threads for every kernel, so BLAS threads never
// spin on the cores that the next kernel needs.
namespace kiln::cpu {

// C (m x n) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C, all row-major.
void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc);
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb,
          double beta, double* c, int ldc);

// C (m x n) = A (m x k) @ Bt, Bt (k x n) stored with rows n_pad apart (n_pad: n rounded up to 32,
// zeros past n): a few rows (a small batch through a linear layer) against a weight transposed
// once and cached (cpu/weight_cache.h). No packing per call, where BLAS packs the whole weight.
void gemm_rows(int m, int n, int k, const float* a, int lda, const float* bt, int n_pad, float* c, int ldc);
constexpr int kRowsPanel = 32;  // the columns of C one step of gemm_rows covers

}  // namespace kiln::cpu
