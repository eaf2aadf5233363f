// Indexing: take (numpy.take / torch.index_select), gather (take_along_axis / torch.gather),
// their scatter-add gradients, and one_hot.
#include <cstring>

#include "cpu/copy.h"
#include "ops/common.h"

namespace kiln {
using namespace ops;

namespace {

using Specs = std::vector<TensorSpec>;
using C = const VjpContext&;

int64_t checked_index(const Tensor& idx, int64_t j, int64_t dim, const char* op, int axis) {
  int64_t k = idx.dtype() == DType::int32 ? idx.data<int32_t>()[j] : idx.data<int64_t>()[j];
  if (k < -dim || k >= dim)
    throw Error(std::string(op) + ": index " + std::to_string(k) + " is out of bounds for axis " +
                std::to_string(axis) + " with size " + std::to_string(dim));
  return k < 0 ? k + dim : k;
}

void check_index_dtype(const TensorSpec& idx, const char* op) {
  if (idx.dtype != DType::int32 && idx.dtype != DType::int64)
    throw Error(std::string(op) + ": indices must be int32 or int64, got " + dtype_name(idx.dtype));
}

// take: out[o, j, i] = x[o, idx[j], i]; take_grad scatters back with +=.
template <bool scatter>
void take_kernel(const KernelContext& c) {
  const Tensor& src = c.input(0);
  const Tensor& idx = c.input(1);
  Tensor& dst = c.output(0);
  const Tensor& big = scatter ? dst : src;  // the tensor with the indexed axis
  const int axis = normalize_axis(c.attrs.i("axis"), big.rank(), "take");
  AxisSplit a = split_at(big.shape(), axis);
  const int64_t nidx = idx.numel();
  const size_t es = dtype_size(src.dtype());
  if (scatter) cpu::fill(dst, 0.0);
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  for (int64_t j = 0; j < nidx; ++j) {
    int64_t k = checked_index(idx, j, a.dim, scatter ? "take_grad" : "take", axis);
    for (int64_t o = 0; o < a.outer; ++o) {
      int64_t small = (o * nidx + j) * a.inner, large = (o * a.dim + k) * a.inner;
      if (!scatter) {
        std::memcpy(d + small * es, s + large * es, a.inner * es);
      } else {
        KILN_DISPATCH_NUMERIC(src.dtype(), "take_grad", {
          const scalar_t* g = src.data<scalar_t>() + small;
          scalar_t* out = dst.data<scalar_t>() + large;
          for (int64_t i = 0; i < a.inner; ++i) out[i] += g[i];
        });
      }
    }
  }
}

// gather: out[..., j, ...] = x[..., idx[..., j, ...], ...] along `axis`; idx has x's rank.
template <bool scatter>
void gather_kernel(const KernelContext& c) {
  const Tensor& idx = c.input(1);
  const Tensor& big = scatter ? c.output(0) : c.input(0);
  const Tensor& small = scatter ? c.input(0) : c.output(0);  // shaped like idx
  const int axis = normalize_axis(c.attrs.i("axis"), big.rank(), "gather");
  const int r = idx.rank();
  Shape bs = contiguous_strides(big.shape());
  if (scatter) cpu::fill(const_cast<Tensor&>(big), 0.0);
  int64_t pos[kMaxRank] = {};
  KILN_DISPATCH_NUMERIC(big.dtype(), "gather", {
    scalar_t* bp = big.data<scalar_t>();
    scalar_t* sp = small.data<scalar_t>();
    for (int64_t j = 0, n = idx.numel(); j < n; ++j) {
      int64_t off = 0;
      for (int i = 0; i < r; ++i)
        off += (i == axis ? checked_index(idx, j, big.shape()[axis], "gather", axis) : pos[i]) * bs[i];
      if (scatter)
        bp[off] += sp[j];
      else
        sp[j] = bp[off];
      for (int i = r - 1; i >= 0; --i) {
        if (++pos[i] < idx.shape()[i]) break;
        pos[i] = 0;
      }
    }
  });
}

void one_hot_kernel(const KernelContext& c) {
  const Tensor& idx = c.input(0);
  Tensor& out = c.output(0);
  const int64_t n = c.attrs.i("num_classes");
  cpu::fill(out, 0.0);
  for (int64_t j = 0, m = idx.numel(); j < m; ++j) {
    int64_t k = idx.dtype() == DType::int32 ? idx.data<int32_t>()[j] : idx.data<int64_t>()[j];
    if (k < 0 || k >= n)
      throw Error("one_hot: class " + std::to_string(k) + " is outside [0, " + std::to_string(n) + ")");
    store_as(out.dtype(), out.raw(), j * n + k, 1.0);
  }
}

}  // namespace

void register_index_ops(OpRegistry& r) {
  OpDef t;
  t.name = "take";
  t.attrs = {{"axis", true}};
  t.num_inputs = 2;
  t.infer = [](const Specs& in, const Attrs& a) {
    check_index_dtype(in[1], "take");
    const Shape& s = in[0].shape;
    int ax = normalize_axis(a.i("axis"), s.rank(), "take");
    Shape out;
    for (int i = 0; i < ax; ++i) out.push_back(s[i]);
    for (int64_t d : in[1].shape) out.push_back(d);
    for (int i = ax + 1; i < s.rank(); ++i) out.push_back(s[i]);
    return Specs{{in[0].dtype, out}};
  };
  t.cpu = take_kernel<false>;
  t.vjp = [](C c) {
    return std::vector<Value>{c.graph.apply1("take_grad", {c.grads[0], c.inputs[1], c.inputs[0]}, c.attrs()), Value{}};
  };
  r.add(std::move(t));

  OpDef tg;
  tg.name = "take_grad";
  tg.attrs = {{"axis", true}};
  tg.num_inputs = 3;
  tg.shape_only_from = 2;
  tg.infer = [](const Specs& in, const Attrs& a) {  // (gy, indices, x)
    require_like(in[0], forward_specs("take", {in[2], in[1]}, a)[0], "the gradient");
    return Specs{{in[0].dtype, in[2].shape}};
  };
  tg.cpu = take_kernel<true>;
  tg.vjp = [](C c) { return std::vector<Value>{take(c.grads[0], c.inputs[1], c.attrs().i("axis")), Value{}, Value{}}; };
  r.add(std::move(tg));

  OpDef g;
  g.name = "gather";
  g.attrs = {{"axis", true}};
  g.num_inputs = 2;
  g.infer = [](const Specs& in, const Attrs& a) {
    check_index_dtype(in[1], "gather");
    const Shape &s = in[0].shape, &is = in[1].shape;
    int ax = normalize_axis(a.i("axis"), s.rank(), "gather");
    if (is.rank() != s.rank())
      throw Error("gather: indices " + is.str() + " must have the rank of the input " + s.str());
    for (int i = 0; i < s.rank(); ++i)
      if (i != ax && is[i] >= 0 && s[i] >= 0 && is[i] > s[i])
        throw Error("gather: indices " + is.str() + " are larger than the input " + s.str() + " along axis " +
                    std::to_string(i));
    return Specs{{in[0].dtype, is}};
  };
  g.cpu = gather_kernel<false>;
  g.vjp = [](C c) {
    return std::vector<Value>{c.graph.apply1("gather_grad", {c.grads[0], c.inputs[1], c.inputs[0]}, c.attrs()),
                              Value{}};
  };
  r.add(std::move(g));

  OpDef gg;
  gg.name = "gather_grad";
  gg.attrs = {{"axis", true}};
  gg.num_inputs = 3;
  gg.shape_only_from = 2;
  gg.infer = [](const Specs& in, const Attrs& a) {  // (gy, indices, x)
    require_like(in[0], forward_specs("gather", {in[2], in[1]}, a)[0], "the gradient");
    return Specs{{in[0].dtype, in[2].shape}};
  };
  gg.cpu = gather_kernel<true>;
  gg.vjp = [](C c) {
    return std::vector<Value>{gather(c.grads[0], c.inputs[1], c.attrs().i("axis")), Value{}, Value{}};
  };
  r.add(std::move(gg));

  OpDef oh;
  oh.name = "one_hot";
  oh.attrs = {{"num_classes", true}, {"dtype", true}};
  oh.infer = [](const Specs& in, const Attrs& a) {
    check_index_dtype(in[0], "one_hot");
    if (a.i("num_classes") <= 0)
      throw Error("one_hot: num_classes must be positive, got " + std::to_string(a.i("num_classes")));
    Shape s = in[0].shape;
    s.push_back(a.i("num_classes"));
    return Specs{{dtype_from_name(a.s("dtype")), s}};
  };
  oh.cpu = one_hot_kernel;
  oh.differentiable = false;
  r.add(std::move(oh));
}

}  // namespace kiln
