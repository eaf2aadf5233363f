#pragma once
// One name for CBLAS whichever OpenBLAS provides it: the PyPI build (scipy-openblas32) prefixes
// every symbol with scipy_, a system CBLAS does not.
#ifdef KILN_SCIPY_OPENBLAS
#include <cblas.h>
#define KILN_CBLAS(name) scipy_cblas_##name
#else
#include <cblas.h>
#define KILN_CBLAS(name) cblas_##name
#endif

namespace kiln::cpu {

inline void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
  KILN_CBLAS(sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
  KILN_CBLAS(dgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace kiln::cpu
