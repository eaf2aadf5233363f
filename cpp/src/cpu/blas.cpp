#include "cpu/blas.h"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "cpu/aligned.h"
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

// MI rows x NV vectors of 16 columns of C in MI * NV vector accumulators (up to 8 x 2): each step of
// k broadcasts MI values of A and loads NV vectors of Bt (10 loads for 16 FMAs in the full block;
// blocks of 6 rows, 8 loads for 12 FMAs, ran 10% slower, and of 12 rows 25% slower, their 32 rows
// split 3 ways between 2 threads). Short blocks at the edges compute no dropped rows and at most 15
// dropped columns.
typedef float v16f __attribute__((vector_size(64)));
constexpr int kRowsBlock = 8;

template <int MI, int NV>
void rows_panel(int i0, int j0, int n, int k, int p0, int p1, bool add, const float* a, int lda, const float* bt,
                float* c, int ldc) {
  const float* ar[MI];
  for (int r = 0; r < MI; ++r) ar[r] = a + static_cast<int64_t>(i0 + r) * lda;
  const int nj = std::min(16 * NV, n - j0);
  v16f acc[MI][NV] = {};
  if (add)  // a later slice of k adds to what the earlier ones stored
    for (int r = 0; r < MI; ++r) {
      float row[16 * NV] = {};
      std::memcpy(row, c + static_cast<int64_t>(i0 + r) * ldc + j0, nj * sizeof(float));
      std::memcpy(acc[r], row, sizeof row);
    }
  const float* b = bt + static_cast<int64_t>(j0) * k + static_cast<int64_t>(p0) * kRowsPanel;  // panel j0 / 32
  for (int p = p0; p < p1; ++p, b += kRowsPanel) {
    v16f bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + 16 * v, sizeof(v16f));
    for (int r = 0; r < MI; ++r) {
      const float s = ar[r][p];
      const v16f av = {s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < MI; ++r) {
    float row[16 * NV];
    std::memcpy(row, acc[r], sizeof row);
    std::memcpy(c + static_cast<int64_t>(i0 + r) * ldc + j0, row, nj * sizeof(float));
  }
}

using PanelFn = void (*)(int, int, int, int, int, int, bool, const float*, int, const float*, float*, int);

template <int... MI>
constexpr std::array<std::array<PanelFn, 2>, sizeof...(MI)> panel_table(std::integer_sequence<int, MI...>) {
  return {{{rows_panel<MI + 1, 1>, rows_panel<MI + 1, 2>}...}};
}

}  // namespace

void gemm_rows(int m, int n, int k, const float* a, int lda, const float* bt, float* c, int ldc) {
  static constexpr auto kPanels = panel_table(std::make_integer_sequence<int, kRowsBlock>{});
  // k in slices of 256: a slice of a panel of Bt (32 KB) stays in L1 while every block of rows runs
  // against it. Unsliced, each block streamed the whole panel (1 MB at k = 8192) from L3 again.
  constexpr int kSlice = 256;
  // Rows in blocks as even as 8 allows (30 rows: 7 8 7 8, not 8 8 8 6).
  const int panels = (n + kRowsPanel - 1) / kRowsPanel, blocks = (m + kRowsBlock - 1) / kRowsBlock;
  // Panel j's rows of blocks [b0, b1) over k in [k0, k1), into out (whose rows are ldo apart).
  auto run = [&](int j, int b0, int b1, int k0, int k1, float* out, int ldo) {
    const int col = j * kRowsPanel, nv = n - col > 16 ? 2 : 1;
    for (int p0 = k0; p0 < k1; p0 += kSlice)
      for (int b = b0; b < b1; ++b) {
        const int i0 = b * m / blocks, mi = (b + 1) * m / blocks - i0;
        kPanels[mi - 1][nv - 1](i0, col, n, k, p0, std::min(k1, p0 + kSlice), p0 > k0, a, lda, bt, out, ldo);
      }
  };
  const int slices = (k + kSlice - 1) / kSlice, threads = num_threads();
  if (k >= 4 * n && threads > 1 && slices > 1) {
    // A tall Bt: the threads split k, in whole slices, each reading only its part of Bt (600 KB of the
    // two-layer net's 1.2 MB, which then stays in L2 from call to call) into a C of its own; the parts
    // are added after. Split by rows, each thread read all of Bt from L3 on every call (32 x 3072 x
    // 100: 63 -> 57 us; 32 x 8192 x 100 167 -> 152 us). A wide one (32 x 512 x 1000) ran 14% slower so.
    const int parts = std::min(threads, slices);
    static thread_local AlignedFloats partial;  // the caller's: parts 1 and on write here
    partial.resize(static_cast<size_t>(parts - 1) * m * n);
    float* scratch = partial.data();  // by pointer: in the workers, `partial` names their own
    parallel_for(parts, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int k0 = int(slices * t / parts) * kSlice, k1 = std::min(k, int(slices * (t + 1) / parts) * kSlice);
        float* out = t == 0 ? c : scratch + (t - 1) * m * n;
        for (int j = 0; j < panels; ++j) run(j, 0, blocks, k0, k1, out, t == 0 ? ldc : n);
      }
    });
    for (int t = 1; t < parts; ++t)
      for (int i = 0; i < m; ++i) {
        const float* q = scratch + ((t - 1) * m + i) * int64_t(n);
        float* row = c + static_cast<int64_t>(i) * ldc;
        for (int j = 0; j < n; ++j) row[j] += q[j];
      }
    return;
  }
  // Else jobs are the two halves of the rows of each panel of columns, dealt to the threads in turn:
  // whole panels would leave a thread idle beside a narrow last one (100 columns: 3 panels and 4
  // columns; 32 x 3072 x 100 67 -> 63 us).
  const int halves = blocks >= 2 && threads > 1 ? 2 : 1;
  const int64_t jobs = int64_t(panels) * halves, parts = std::min<int64_t>(threads, jobs);
  parallel_for(parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = t; j < jobs; j += parts) {
        const int h = static_cast<int>(j % halves);
        run(static_cast<int>(j / halves), h * blocks / halves, (h + 1) * blocks / halves, 0, k, c, ldc);
      }
  });
}

void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc) {
  split_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb,
          double beta, double* c, int ldc) {
  split_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace kiln::cpu
