// CUDA kernels of matmul (cuBLAS, batched and broadcasting, TF32 only when the user opts in) and
// permute (a gather over the output).
#include <vector>

#include "common.cuh"
#include "kiln/cuda.h"
#include "ops/half.h"

namespace kiln::cuda {
namespace {

// Row-major C (m x n) = op(A) (m x k) op(B) (k x n) is column-major C^T = op(B)^T op(A)^T: cuBLAS
// gets B first, and no operand is ever copied to transpose it.
template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t stride_a, const T* b, int64_t stride_b,
          T* c, int64_t batches) {
  constexpr bool is_half = std::is_same_v<T, half>;
  const cudaDataType_t type = is_half ? CUDA_R_16F : std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
  // Halves accumulate in float, as PyTorch's half matmul does.
  const cublasComputeType_t compute = std::is_same_v<T, double>    ? CUBLAS_COMPUTE_64F
                                      : tf32_allowed() && !is_half ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                   : CUBLAS_COMPUTE_32F;
  using scale_t = std::conditional_t<is_half, float, T>;
  const scale_t one = 1, zero = 0;
  check_blas(
      cublasGemmStridedBatchedEx(blas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m),
                                 int(k), &one, b, type, int(tb ? k : n), stride_b, a, type, int(ta ? m : k), stride_a,
                                 &zero, c, type, int(n), m * n, int(batches), compute, CUBLAS_GEMM_DEFAULT),
      "matmul (cublasGemmStridedBatchedEx)");
}

// Integer matmul has no cuBLAS routine: one thread per output element (rarely used, exact).
template <class T>
__global__ void gemm_naive(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, const int64_t* off_a,
                           const T* b, const int64_t* off_b, T* c, int64_t batches) {
  KILN_GRID_LOOP(idx, batches * m * n) {
    const int64_t bi = idx / (m * n), i = idx / n % m, j = idx % n;
    const T* A = a + off_a[bi];
    const T* B = b + off_b[bi];
    T acc = 0;
    for (int64_t p = 0; p < k; ++p) acc += A[ta ? p * m + i : i * k + p] * B[tb ? j * k + p : p * n + j];
    c[idx] = acc;
  }
}

void matmul_kernel(const KernelContext& c) {
  const Tensor &A = c.input(0), &B = c.input(1);
  Tensor& C = c.output(0);
  const bool ta = c.attrs.i("transpose_a", 0), tb = c.attrs.i("transpose_b", 0);
  const int ra = A.rank(), rb = B.rank(), rc = C.rank();
  const int64_t m = C.shape()[rc - 2], n = C.shape()[rc - 1], k = ta ? A.shape()[ra - 2] : A.shape()[ra - 1];
  if (C.numel() == 0) return;
  if (k == 0) return device_zero(C);
  // Element offset of each batch's A and B (0 along broadcast batch dims).
  const int nb = rc - 2;
  int64_t batches = 1;
  for (int i = 0; i < nb; ++i) batches *= C.shape()[i];
  std::vector<int64_t> off_a(batches, 0), off_b(batches, 0);
  for (int64_t bi = 0; bi < batches; ++bi) {
    int64_t rem = bi, oa = 0, ob = 0, acc_a = m * k, acc_b = k * n;
    for (int i = nb - 1; i >= 0; --i) {
      const int64_t idx = rem % C.shape()[i];
      rem /= C.shape()[i];
      const int ia = i - (nb - (ra - 2)), ib = i - (nb - (rb - 2));
      if (ia >= 0) {
        if (A.shape()[ia] != 1) oa += idx * acc_a;
        acc_a *= A.shape()[ia];
      }
      if (ib >= 0) {
        if (B.shape()[ib] != 1) ob += idx * acc_b;
        acc_b *= B.shape()[ib];
      }
    }
    off_a[bi] = oa, off_b[bi] = ob;
  }
  // One strided-batched call covers every case whose offsets step evenly (all but exotic broadcasts).
  auto even = [&](const std::vector<int64_t>& off) {
    for (int64_t bi = 2; bi < batches; ++bi)
      if (off[bi] - off[bi - 1] != off[1] - off[0]) return false;
    return true;
  };
  const int64_t step_a = batches > 1 ? off_a[1] - off_a[0] : 0, step_b = batches > 1 ? off_b[1] - off_b[0] : 0;
  auto blas_matmul = [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* a = A.data<scalar_t>();
    const scalar_t* b = B.data<scalar_t>();
    scalar_t* o = C.data<scalar_t>();
    if (batches > 1 && step_b == 0 && !ta && step_a == m * k && even(off_a))  // (..., M, K) @ (K, N): one GEMM
      gemm(false, tb, m * batches, n, k, a, 0, b, 0, o, 1);
    else if (even(off_a) && even(off_b))
      gemm(ta, tb, m, n, k, a, step_a, b, step_b, o, batches);
    else
      for (int64_t bi = 0; bi < batches; ++bi)
        gemm(ta, tb, m, n, k, a + off_a[bi], 0, b + off_b[bi], 0, o + bi * m * n, 1);
  };
  switch (A.dtype()) {
    case DType::float32:
      return blas_matmul(float{});
    case DType::float64:
      return blas_matmul(double{});
    case DType::float16:
      return blas_matmul(half{});
    default:
      KILN_DISPATCH_NUMERIC(A.dtype(), "matmul", {
        Scratch offsets(2 * batches * sizeof(int64_t));
        check(cudaMemcpyAsync(offsets.as<int64_t>(), off_a.data(), batches * sizeof(int64_t), cudaMemcpyHostToDevice,
                              stream()),
              "matmul offsets");
        check(cudaMemcpyAsync(offsets.as<int64_t>() + batches, off_b.data(), batches * sizeof(int64_t),
                              cudaMemcpyHostToDevice, stream()),
              "matmul offsets");
        gemm_naive<<<blocks_for(C.numel()), kThreads, 0, stream()>>>(
            ta, tb, m, n, k, A.data<scalar_t>(), offsets.as<int64_t>(), B.data<scalar_t>(),
            offsets.as<int64_t>() + batches, C.data<scalar_t>(), batches);
        check_launch("matmul");  // copies from pageable memory are staged: the vectors may go now
      });
  }
}

struct Permute {
  int rank;
  int64_t out_size[kMaxRank];
  int64_t in_stride[kMaxRank];  // input stride along each output dim
};

template <class T>
__global__ void permute_gather(int64_t n, const T* x, T* y, Permute p) {
  KILN_GRID_LOOP(i, n) {
    int64_t rem = i, off = 0;
    for (int d = p.rank - 1; d >= 0; --d) {
      off += (rem % p.out_size[d]) * p.in_stride[d];
      rem /= p.out_size[d];
    }
    y[i] = x[off];
  }
}

void permute_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const auto& dims = c.attrs.ints("dims");
  const int64_t n = y.numel();
  if (n == 0) return;
  Permute p{};
  p.rank = x.rank();
  const Shape xs = contiguous_strides(x.shape());
  for (int i = 0; i < p.rank; ++i) {
    p.out_size[i] = y.shape()[i];
    p.in_stride[i] = xs[static_cast<int>(normalize_axis(dims[i], p.rank, "permute"))];
  }
  // Moved by element size: the values are only copied.
  dispatch_by_size(x.dtype(), "permute", [&](auto t) {
    using T = decltype(t);
    permute_gather<<<blocks_for(n), kThreads, 0, stream()>>>(n, x.data<T>(), y.data<T>(), p);
  });
  check_launch("permute");
}

}  // namespace

void register_linalg_kernels(OpRegistry& r) {
  r.set_cuda_kernel("matmul", matmul_kernel);
  r.set_cuda_kernel("permute", permute_kernel);
}

}  // namespace kiln::cuda
