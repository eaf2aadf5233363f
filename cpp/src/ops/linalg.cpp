// matmul (batched, broadcasting, BLAS-backed, with transpose flags so that its own gradient
// needs no transposed copies) and permute.
#include <algorithm>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "cpu/weight_cache.h"
#include "ops/common.h"
#include "ops/half.h"

namespace kiln {
using namespace ops;

namespace {

struct MatmulDims {
  int64_t m, k, n;
  Shape batch;
};

MatmulDims matmul_dims(const Shape& a, const Shape& b, bool ta, bool tb) {
  auto fail = [&](const std::string& why) {
    return Error("matmul: shapes " + a.str() + (ta ? "^T" : "") + " and " + b.str() + (tb ? "^T" : "") + " " + why);
  };
  if (a.rank() < 2 || b.rank() < 2) throw fail("need at least 2 dimensions each");
  int ra = a.rank(), rb = b.rank();
  MatmulDims d;
  d.m = ta ? a[ra - 1] : a[ra - 2];
  d.k = ta ? a[ra - 2] : a[ra - 1];
  int64_t kb = tb ? b[rb - 1] : b[rb - 2];
  d.n = tb ? b[rb - 2] : b[rb - 1];
  if (!dims_compatible(d.k, kb))
    throw fail("are not aligned: inner dimensions " + std::to_string(d.k) + " and " + std::to_string(kb) + " differ");
  if (d.k < 0) d.k = kb;
  Shape ba, bb;
  for (int i = 0; i < ra - 2; ++i) ba.push_back(a[i]);
  for (int i = 0; i < rb - 2; ++i) bb.push_back(b[i]);
  d.batch = broadcast_shapes(ba, bb, "matmul");
  return d;
}

template <class T>
void gemm_naive(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T acc = 0;
      for (int64_t p = 0; p < k; ++p) acc += a[ta ? p * m + i : i * k + p] * b[tb ? j * k + p : p * n + j];
      c[i * n + j] = acc;
    }
}

template <class T>
void gemm_any(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c) {
  if (m == 0 || n == 0) return;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (k == 0) {
      std::fill(c, c + m * n, T(0));
      return;
    }
    cpu::gemm(ta, tb, int(m), int(n), int(k), T(1), a, ta ? int(m) : int(k), b, tb ? int(k) : int(n), T(0), c, int(n));
  } else {
    gemm_naive(ta, tb, m, n, k, a, b, c);
  }
}

void matmul(const Tensor& A, const Tensor& B, Tensor& C, bool ta, bool tb, bool training) {
  MatmulDims d = matmul_dims(A.shape(), B.shape(), ta, tb);
  const int nb = d.batch.rank();
  // Per-batch element offsets of A and B (0 along broadcast batch dims).
  Shape bs_a, bs_b;
  int64_t sa = d.m * d.k, sb = d.k * d.n;
  for (int i = 0; i < nb; ++i) {
    bs_a.push_back(0);
    bs_b.push_back(0);
  }
  {
    int64_t acc_a = sa, acc_b = sb;
    for (int i = nb - 1; i >= 0; --i) {
      int ia = i - (nb - (A.rank() - 2)), ib = i - (nb - (B.rank() - 2));
      if (ia >= 0) {
        bs_a[i] = A.shape()[ia] == 1 ? 0 : acc_a;
        acc_a *= A.shape()[ia];
      }
      if (ib >= 0) {
        bs_b[i] = B.shape()[ib] == 1 ? 0 : acc_b;
        acc_b *= B.shape()[ib];
      }
    }
  }
  int64_t batches = d.batch.numel();
  bool b_shared = true;
  for (int i = 0; i < nb; ++i) b_shared = b_shared && bs_b[i] == 0;
  // A small batch through a linear layer in an inference call: the weight (a variable) is
  // transposed once and kept, and the rows run against it unpacked (cpu::gemm_rows). One row
  // streams the weight as it is stored (GEMV) faster still.
  const int64_t rows = d.m * batches;
  if (A.dtype() == DType::float32 && !training && B.storage()->tracked() && tb && !ta && b_shared && rows >= 2 &&
      rows <= 64 && d.k >= 64 && d.n >= 16) {
    const float* b = B.data<float>();
    auto bt = cpu::derived_weights(b, B.storage()->stamp(), cpu::DerivedShape{d.n, d.k, 1, 0},
                                   static_cast<size_t>(cpu::rows_packed_size(d.n, d.k)), [&](float* out) {
                                     constexpr int64_t P = cpu::kRowsPanel;
                                     for (int64_t j = 0; j < d.n; ++j)
                                       for (int64_t p = 0; p < d.k; ++p)
                                         out[(j / P) * d.k * P + p * P + j % P] = b[j * d.k + p];
                                   });
    return cpu::gemm_rows(int(rows), int(d.n), int(d.k), A.data<float>(), int(d.k), bt->data(), C.data<float>(),
                          int(d.n));
  }
  KILN_DISPATCH_NUMERIC(A.dtype(), "matmul", {
    const scalar_t* a = A.data<scalar_t>();
    const scalar_t* b = B.data<scalar_t>();
    scalar_t* o = C.data<scalar_t>();
    if (b_shared && !ta && batches > 1) {  // (..., M, K) @ (K, N): one GEMM with M * batches rows
      gemm_any(false, tb, d.m * batches, d.n, d.k, a, b, o);
    } else {
      for (int64_t bi = 0; bi < batches; ++bi) {
        int64_t oa = 0, ob = 0, rem = bi;
        for (int i = nb - 1; i >= 0; --i) {
          int64_t idx = rem % d.batch[i];
          rem /= d.batch[i];
          oa += idx * bs_a[i];
          ob += idx * bs_b[i];
        }
        gemm_any(ta, tb, d.m, d.n, d.k, a + oa, b + ob, o + bi * d.m * d.n);
      }
    }
  });
}

// float16 products run in float32 (numpy's BLAS has no half GEMM either) and round once at the end;
// the float32 copies of A, B and the product live in the planned workspace.
template <class From, class To>
void convert(const From* in, To* out, int64_t n) {
  cpu::parallel_for(n, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = To(float(in[i]));
  });
}

size_t half_matmul_workspace(const std::vector<TensorSpec>& in, const std::vector<TensorSpec>& out, const Attrs&) {
  if (in[0].dtype != DType::float16) return 0;
  return static_cast<size_t>(in[0].shape.numel() + in[1].shape.numel() + out[0].shape.numel()) * sizeof(float);
}

void matmul_kernel(const KernelContext& c) {
  const Tensor &A = c.input(0), &B = c.input(1);
  Tensor& C = c.output(0);
  const bool ta = c.attrs.i("transpose_a", 0), tb = c.attrs.i("transpose_b", 0);
  if (A.dtype() != DType::float16) return matmul(A, B, C, ta, tb, c.training);
  float* ws = static_cast<float*>(c.workspace);
  Tensor a = Tensor::from_blob(ws, A.shape(), DType::float32, nullptr);
  Tensor b = Tensor::from_blob(ws + A.numel(), B.shape(), DType::float32, nullptr);
  Tensor product = Tensor::from_blob(ws + A.numel() + B.numel(), C.shape(), DType::float32, nullptr);
  convert(A.data<half>(), a.data<float>(), A.numel());
  convert(B.data<half>(), b.data<float>(), B.numel());
  matmul(a, b, product, ta, tb, c.training);
  convert(product.data<float>(), C.data<half>(), C.numel());
}

void permute_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  const auto& dims = c.attrs.ints("dims");
  const int r = x.rank();
  Shape xs = contiguous_strides(x.shape());
  int64_t st[kMaxRank];  // input stride for each output dim
  for (int i = 0; i < r; ++i) st[i] = xs[static_cast<int>(dims[i])];
  const Shape& os = y.shape();
  const int64_t n = y.numel();
  if (n == 0) return;
  const int64_t inner = r ? os[r - 1] : 1, sin = r ? st[r - 1] : 1;
  dispatch_by_size(x.dtype(), "permute", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    const scalar_t* in = x.data<scalar_t>();
    scalar_t* out = y.data<scalar_t>();
    cpu::parallel_for(n / inner, std::max<int64_t>(1, 8192 / inner), [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        int64_t off = 0, rem = row;
        for (int i = r - 2; i >= 0; --i) {
          off += (rem % os[i]) * st[i];
          rem /= os[i];
        }
        scalar_t* o = out + row * inner;
        for (int64_t j = 0; j < inner; ++j) o[j] = in[off + j * sin];
      }
    });
  });
}

}  // namespace

void register_linalg_ops(OpRegistry& r) {
  using C = const VjpContext&;
  OpDef mm;
  mm.name = "matmul";
  mm.attrs = {{"transpose_a"}, {"transpose_b"}};
  mm.num_inputs = 2;
  mm.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
    if (in[0].dtype != in[1].dtype)
      throw Error("operands have dtypes " + std::string(dtype_name(in[0].dtype)) + " and " + dtype_name(in[1].dtype));
    MatmulDims d = matmul_dims(in[0].shape, in[1].shape, a.i("transpose_a", 0), a.i("transpose_b", 0));
    Shape out = d.batch;
    out.push_back(d.m);
    out.push_back(d.n);
    return std::vector<TensorSpec>{{in[0].dtype, out}};
  };
  mm.cpu = matmul_kernel;
  mm.workspace = half_matmul_workspace;
  mm.vjp = [](C c) {
    Value A = c.inputs[0], B = c.inputs[1], G = c.grads[0];
    bool ta = c.attrs().i("transpose_a", 0), tb = c.attrs().i("transpose_b", 0);
    Value ga, gb;
    if (!ta && !tb) {
      ga = matmul(G, B, false, true);
      gb = matmul(A, G, true, false);
    } else if (!ta && tb) {
      ga = matmul(G, B, false, false);
      gb = matmul(G, A, true, false);
    } else if (ta && !tb) {
      ga = matmul(B, G, false, true);
      gb = matmul(A, G, false, false);
    } else {
      ga = matmul(B, G, true, true);
      gb = matmul(G, A, true, true);
    }
    return std::vector<Value>{sum_to_like(ga, A), sum_to_like(gb, B)};
  };
  r.add(std::move(mm));

  OpDef p;
  p.name = "permute";
  p.attrs = {{"dims", true}};
  p.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
    const Shape& s = in[0].shape;
    const auto& dims = a.ints("dims");
    if (static_cast<int>(dims.size()) != s.rank())
      throw Error("dims has " + std::to_string(dims.size()) + " entries for a tensor of shape " + s.str());
    std::vector<bool> seen(s.rank(), false);
    Shape out;
    for (int64_t d : dims) {
      int ax = normalize_axis(d, s.rank(), "permute");
      if (seen[ax]) throw Error("dims repeats axis " + std::to_string(ax));
      seen[ax] = true;
      out.push_back(s[ax]);
    }
    return std::vector<TensorSpec>{{in[0].dtype, out}};
  };
  p.cpu = permute_kernel;
  p.vjp = [](C c) {
    const auto& dims = c.attrs().ints("dims");
    std::vector<int64_t> inv(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) inv[static_cast<size_t>(dims[i])] = static_cast<int64_t>(i);
    return std::vector<Value>{permute(c.grads[0], inv)};
  };
  r.add(std::move(p));
}

}  // namespace kiln
