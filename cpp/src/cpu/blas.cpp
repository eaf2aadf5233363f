#include "cpu/blas.h"

#include <algorithm>
#include <cblas.h>

#include <cstdint>
#include <mutex>

#include "cpu/parallel.h"

// One name for CBLAS whichever OpenBLAS provides it: the PyPI build (scipy-openblas32) prefixes
// every symbol with scipy_, a system CBLAS does not.
#ifdef KILN_SCIPY_OPENBLAS
#define KILN_CBLAS(name) scipy_cblas_##name
#define KILN_OPENBLAS_SET_THREADS scipy_openblas_set_num_threads
#else
#define KILN_CBLAS(name) cblas_##name
#ifdef KILN_OPENBLAS
#define KILN_OPENBLAS_SET_THREADS openblas_set_num_threads
#endif
#endif

namespace kiln::cpu {

namespace {

void single_threaded_blas() {
#ifdef KILN_OPENBLAS_SET_THREADS
  static std::once_flag once;
  std::call_once(once, [] { KILN_OPENBLAS_SET_THREADS(1); });
#endif
}

inline void blas(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
                 float beta, float* c, int ldc) {
  KILN_CBLAS(sgemm)
  (CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
   c, ldc);
}
inline void blas(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                 int ldb, double beta, double* c, int ldc) {
  KILN_CBLAS(dgemm)
  (CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
   c, ldc);
}

inline void gemv(bool trans, int m, int n, float alpha, const float* a, int lda, const float* x, int incx, float beta,
                 float* y, int incy) {
  KILN_CBLAS(sgemv)(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
inline void gemv(bool trans, int m, int n, double alpha, const double* a, int lda, const double* x, int incx,
                 double beta, double* y, int incy) {
  KILN_CBLAS(dgemv)(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

// A product with one row (a batch of one through a linear layer) streams the matrix: GEMV reads it
// once at memory speed, where GEMM would pack it first. Row blocks of the matrix go to the threads.
template <class T>
void row_times_matrix(bool tb, int n, int k, T alpha, const T* a, int inca, const T* b, int ldb, T beta, T* c) {
  // c (1 x n) = a (1 x k) @ op(B); with tb, B is (n x k) and c = B a
  auto block = [&](int64_t j0, int64_t j1) {
    if (tb)
      gemv(false, int(j1 - j0), k, alpha, b + j0 * ldb, ldb, a, inca, beta, c + j0, 1);
    else  // op(B) = B (k x n): c = B^T a over columns [j0, j1)
      gemv(true, k, int(j1 - j0), alpha, b + j0, ldb, a, inca, beta, c + j0, 1);
  };
  constexpr int64_t kMinWork = int64_t(1) << 16;
  if (int64_t(n) * k < kMinWork || num_threads() == 1 || detail::in_parallel_region()) return block(0, n);
  parallel_for((n + 3) / 4, 1, [&](int64_t b0, int64_t b1) { block(b0 * 4, std::min<int64_t>(n, b1 * 4)); });
}

template <class T>
void split_gemm(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta, T* c,
                int ldc) {
  single_threaded_blas();
  if (m == 1 && n > 0 && k > 0) return row_times_matrix(tb, n, k, alpha, a, ta ? lda : 1, b, ldb, beta, c);
  const int64_t work = int64_t(m) * n * k;
  constexpr int64_t kMinWork = int64_t(1) << 19;  // below ~1 MFLOP a thread hand-off costs more
  if (work < kMinWork || num_threads() == 1 || detail::in_parallel_region() || m == 0 || n == 0) {
    blas(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  constexpr int64_t kAlign = 16;  // blocks of whole SIMD panels
  if (n >= m) {                   // column blocks of op(B) and C
    const int64_t blocks = (n + kAlign - 1) / kAlign;
    parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
      const int64_t j0 = b0 * kAlign, j1 = std::min<int64_t>(n, b1 * kAlign);
      blas(ta, tb, m, int(j1 - j0), k, alpha, a, lda, tb ? b + j0 * ldb : b + j0, ldb, beta, c + j0, ldc);
    });
  } else {  // row blocks of op(A) and C
    const int64_t blocks = (m + kAlign - 1) / kAlign;
    parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
      const int64_t i0 = b0 * kAlign, i1 = std::min<int64_t>(m, b1 * kAlign);
      blas(ta, tb, int(i1 - i0), n, k, alpha, ta ? a + i0 : a + i0 * lda, lda, b, ldb, beta, c + i0 * ldc, ldc);
    });
  }
}

}  // namespace

void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc) {
  split_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb,
          double beta, double* c, int ldc) {
  split_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace kiln::cpu
