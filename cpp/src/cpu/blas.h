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

}  // namespace kiln::cpu
