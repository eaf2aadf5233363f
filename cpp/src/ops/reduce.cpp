// Reductions: sum, mean, prod, max, min over any set of axes; argmax/argmin along one axis;
// sum_to_like (the gradient of broadcasting); count (how many elements a reduction sees).
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/parallel.h"
#include "ops/common.h"

namespace kiln {
using namespace ops;

namespace {

template <class T>
struct Acc {
  using type = T;
};
template <>
struct Acc<float> {
  using type = double;
};  // float32 sums accumulate in double

struct SumOp {
  template <class A>
  static A init() {
    return A(0);
  }
  template <class A>
  static A apply(A acc, A v) {
    return acc + v;
  }
};
struct ProdOp {
  template <class A>
  static A init() {
    return A(1);
  }
  template <class A>
  static A apply(A acc, A v) {
    return acc * v;
  }
};
struct MaxOp {
  template <class A>
  static A init() {
    return std::numeric_limits<A>::has_infinity ? -std::numeric_limits<A>::infinity()
                                                : std::numeric_limits<A>::lowest();
  }
  template <class A>
  static A apply(A acc, A v) {
    return (v > acc || v != v) ? v : acc;
  }
};
struct MinOp {
  template <class A>
  static A init() {
    return std::numeric_limits<A>::has_infinity ? std::numeric_limits<A>::infinity() : std::numeric_limits<A>::max();
  }
  template <class A>
  static A apply(A acc, A v) {
    return (v < acc || v != v) ? v : acc;
  }
};

// Op over n contiguous values, in 8 independent lanes so that the loop vectorizes (a single
// accumulator is a dependency chain the compiler may not reorder).
template <class Op, class T>
T lane_reduce(const T* x, int64_t n) {
  T lane[8];
  for (int j = 0; j < 8; ++j) lane[j] = Op::template init<T>();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] = Op::apply(lane[j], x[i + j]);
  T acc = Op::template init<T>();
  for (int j = 0; j < 8; ++j) acc = Op::apply(acc, lane[j]);
  for (; i < n; ++i) acc = Op::apply(acc, x[i]);
  return acc;
}

// The input's dims with size-1 dims dropped and neighbours of the same kind merged.
struct Groups {
  int n = 0;
  int64_t size[kMaxRank];
  bool reduced[kMaxRank];
};
Groups group_dims(const Shape& s, const std::vector<bool>& mask) {
  Groups g;
  for (int i = 0; i < s.rank(); ++i) {
    if (s[i] == 1) continue;
    if (g.n > 0 && g.reduced[g.n - 1] == mask[i]) {
      g.size[g.n - 1] *= s[i];
    } else {
      g.size[g.n] = s[i];
      g.reduced[g.n] = mask[i];
      ++g.n;
    }
  }
  return g;
}

// Reduces x over the dims flagged in `mask` into out (whose elements follow x's kept dims in
// order), then multiplies by `scale` (1/count for mean).
template <class T, class Op>
void reduce_into(const Tensor& x, const std::vector<bool>& mask, Tensor& out, double scale) {
  using A = typename Acc<T>::type;
  const T* in = x.data<T>();
  T* o = out.data<T>();
  const int64_t n_out = out.numel();
  if (n_out == 0) return;
  Groups g = group_dims(x.shape(), mask);
  int64_t outer = 1, red = 1, inner = 1;
  int pos = 0;
  if (pos < g.n && !g.reduced[pos]) outer = g.size[pos++];
  if (pos < g.n && g.reduced[pos]) red = g.size[pos++];
  if (pos < g.n && !g.reduced[pos]) inner = g.size[pos++];
  if (x.numel() == 0) red = 0;
  if (red == 0 && (std::is_same_v<Op, MaxOp> || std::is_same_v<Op, MinOp>))
    throw Error("cannot take the max or min over a zero-size axis (shape " + x.shape().str() + ")");
  const A sc = static_cast<A>(scale);

  if (pos == g.n || x.numel() == 0) {  // (outer, red, inner): the common, fast case
    if (inner == 1) {
      cpu::parallel_for(outer, std::max<int64_t>(1, 4096 / (red ? red : 1)), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const T* row = in + i * red;
          A acc = Op::template init<A>();
          for (int64_t r = 0; r < red; ++r) acc = Op::apply(acc, static_cast<A>(row[r]));
          o[i] = static_cast<T>(acc * sc);
        }
      });
    } else {
      cpu::parallel_for(outer, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, red * inner)),
                        [&](int64_t b, int64_t e) {
                          for (int64_t i = b; i < e; ++i) {
                            T* orow = o + i * inner;
                            for (int64_t k = 0; k < inner; ++k) orow[k] = Op::template init<T>();
                            for (int64_t r = 0; r < red; ++r) {
                              const T* row = in + (i * red + r) * inner;
                              for (int64_t k = 0; k < inner; ++k) orow[k] = Op::apply(orow[k], row[k]);
                            }
                            if (sc != A(1))
                              for (int64_t k = 0; k < inner; ++k) orow[k] = static_cast<T>(orow[k] * sc);
                          }
                        });
    }
    return;
  }

  // (reduced, kept, reduced): a bias gradient, the sum of (N, C, H*W) over N and H*W.
  if (g.n == 3 && g.reduced[0] && !g.reduced[1] && g.reduced[2]) {
    const int64_t outer_r = g.size[0], kept = g.size[1], inner_r = g.size[2];
    cpu::parallel_for(kept, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        A acc = Op::template init<A>();
        for (int64_t b = 0; b < outer_r; ++b) {
          const T* row = in + (b * kept + k) * inner_r;
          acc = Op::apply(acc, static_cast<A>(lane_reduce<Op>(row, inner_r)));
        }
        o[k] = static_cast<T>(acc * sc);
      }
    });
    return;
  }

  // General case (e.g. axes (0, 2) of a 3-d tensor): walk x once, scattering into out.
  int64_t ostride[kMaxRank];
  int64_t acc = 1;
  for (int i = g.n - 1; i >= 0; --i) {
    ostride[i] = g.reduced[i] ? 0 : acc;
    if (!g.reduced[i]) acc *= g.size[i];
  }
  for (int64_t i = 0; i < n_out; ++i) o[i] = Op::template init<T>();
  int64_t idx[kMaxRank] = {};
  int64_t off = 0;
  for (int64_t n = 0, total = x.numel(); n < total; ++n) {
    o[off] = Op::apply(o[off], in[n]);
    for (int d = g.n - 1; d >= 0; --d) {
      off += ostride[d];
      if (++idx[d] < g.size[d]) break;
      off -= ostride[d] * g.size[d];
      idx[d] = 0;
    }
  }
  if (sc != A(1))
    for (int64_t i = 0; i < n_out; ++i) o[i] = static_cast<T>(o[i] * sc);
}

std::vector<bool> axes_mask(int rank, const std::vector<int64_t>& axes) {
  std::vector<bool> m(rank, false);
  for (int64_t a : axes) m[normalize_axis(a, rank, "reduce")] = true;
  return m;
}

template <class Op>
void reduce_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  auto mask = axes_mask(x.rank(), c.attrs.ints("axes"));
  KILN_DISPATCH_NUMERIC(x.dtype(), "reduce", reduce_into<scalar_t, Op>(x, mask, c.output(0), 1.0));
}

void mean_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  auto mask = axes_mask(x.rank(), c.attrs.ints("axes"));
  int64_t n = 1;
  for (int i = 0; i < x.rank(); ++i)
    if (mask[i]) n *= x.shape()[i];
  double scale = n ? 1.0 / static_cast<double>(n) : std::nan("");
  KILN_DISPATCH_FLOAT(x.dtype(), "mean", reduce_into<scalar_t, SumOp>(x, mask, c.output(0), scale));
}

void sum_to_like_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const Shape& to = c.output(0).shape();
  std::vector<bool> mask(x.rank(), false);
  int lead = x.rank() - to.rank();
  for (int i = 0; i < x.rank(); ++i) mask[i] = i < lead || (to[i - lead] == 1 && x.shape()[i] != 1);
  KILN_DISPATCH_NUMERIC(x.dtype(), "sum_to_like", reduce_into<scalar_t, SumOp>(x, mask, c.output(0), 1.0));
}

template <bool is_max>
void arg_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const int axis = normalize_axis(c.attrs.i("axis"), x.rank(), "argmax");
  int64_t outer = 1, red = x.shape()[axis], inner = 1;
  for (int i = 0; i < axis; ++i) outer *= x.shape()[i];
  for (int i = axis + 1; i < x.rank(); ++i) inner *= x.shape()[i];
  if (red == 0) throw Error(std::string(is_max ? "argmax" : "argmin") + ": axis of size 0 in shape " + x.shape().str());
  int64_t* o = c.output(0).data<int64_t>();
  KILN_DISPATCH_NUMERIC(x.dtype(), "argmax", {
    const scalar_t* in = x.data<scalar_t>();
    for (int64_t i = 0; i < outer; ++i)
      for (int64_t k = 0; k < inner; ++k) {
        const scalar_t* p = in + i * red * inner + k;
        int64_t best = 0;
        scalar_t bv = p[0];
        for (int64_t r = 1; r < red && bv == bv; ++r) {  // stops at the first NaN, as numpy
          scalar_t v = p[r * inner];
          if (v != v || (is_max ? v > bv : v < bv)) {
            bv = v;
            best = r;
          }
        }
        o[i * inner + k] = best;
      }
  });
}

// topk: the k entries of each row along `axis` that rank first, best first, and their int64
// indices. Largest first: NaN ranks above every number (numpy's sort puts it last, torch.topk first
// among the largest); smallest first: below none. Equal values keep the lower index first, so the
// result does not depend on the scan. One pass a row with a heap of the k kept (its top the worst):
// O(dim log k), and no index array of the whole row (argpartition's, 400 MB for kNN's 1000 x 50,000).
template <class T, bool largest>
struct RanksBefore {
  bool operator()(const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) const {
    const bool na = a.first != a.first, nb = b.first != b.first;
    if (na != nb) return largest ? na : nb;
    if (na || a.first == b.first) return a.second < b.second;
    return largest ? a.first > b.first : a.first < b.first;
  }
};

template <class T, bool largest>
void topk_rows(const Tensor& x, int64_t k, int axis, Tensor& values, Tensor& indices) {
  const AxisSplit a = split_at(x.shape(), axis);
  const T* in = x.data<T>();
  T* vals = values.data<T>();
  int64_t* idx = indices.data<int64_t>();
  const RanksBefore<T, largest> before;
  cpu::parallel_for(a.outer * a.inner, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.dim)),
                    [&](int64_t r0, int64_t r1) {
                      std::vector<std::pair<T, int64_t>> heap;
                      heap.reserve(k);
                      for (int64_t row = r0; row < r1; ++row) {
                        const int64_t o = row / a.inner, i = row % a.inner;
                        const T* p = in + o * a.dim * a.inner + i;
                        heap.clear();
                        for (int64_t j = 0; j < k; ++j) heap.emplace_back(p[j * a.inner], j);
                        std::make_heap(heap.begin(), heap.end(), before);
                        for (int64_t j = k; j < a.dim; ++j) {
                          const std::pair<T, int64_t> e{p[j * a.inner], j};
                          if (!before(e, heap.front())) continue;
                          std::pop_heap(heap.begin(), heap.end(), before);
                          heap.back() = e;
                          std::push_heap(heap.begin(), heap.end(), before);
                        }
                        std::sort_heap(heap.begin(), heap.end(), before);
                        for (int64_t j = 0; j < k; ++j) {
                          const int64_t at = (o * k + j) * a.inner + i;
                          vals[at] = heap[j].first;
                          idx[at] = heap[j].second;
                        }
                      }
                    });
}

void topk_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  const int axis = normalize_axis(c.attrs.i("axis"), x.rank(), "topk");
  const int64_t k = c.attrs.i("k");
  if (k == 0) return;  // empty outputs
  KILN_DISPATCH_NUMERIC(x.dtype(), "topk", {
    if (c.attrs.i("largest", 1))
      topk_rows<scalar_t, true>(x, k, axis, c.output(0), c.output(1));
    else
      topk_rows<scalar_t, false>(x, k, axis, c.output(0), c.output(1));
  });
}

void count_kernel(const KernelContext& c) {
  int64_t n = 1;
  for (int64_t a : c.attrs.ints("axes")) n *= c.input(0).shape()[normalize_axis(a, c.input(0).rank(), "count")];
  store_as(c.output(0).dtype(), c.output(0).raw(), 0, static_cast<double>(n));
}

std::vector<TensorSpec> infer_reduce(const std::vector<TensorSpec>& in, const Attrs& a) {
  const Shape& s = in[0].shape;
  std::vector<int64_t> axes = sorted_axes(a.ints("axes"), s.rank(), "reduce");
  bool keep = a.i("keepdims", 0) != 0;
  Shape out;
  for (int i = 0; i < s.rank(); ++i) {
    bool r = std::binary_search(axes.begin(), axes.end(), i);
    if (!r)
      out.push_back(s[i]);
    else if (keep)
      out.push_back(1);
  }
  return {TensorSpec{in[0].dtype, out}};
}

// Gradient flowing into a reduction's output, reshaped to keepdims form and broadcast to x.
Value expand_grad(const VjpContext& c, const Value& g) {
  Value e = g;
  if (!c.attrs().i("keepdims", 0))
    for (int64_t a : c.attrs().ints("axes")) e = unsqueeze(e, a);
  return broadcast_like(e, c.inputs[0]);
}

void add_reduce(OpRegistry& r, const std::string& name, KernelFn k, VjpFn vjp) {
  OpDef d;
  d.name = name;
  d.attrs = {{"axes", true}, {"keepdims"}};
  d.infer = infer_reduce;
  d.cpu = k;
  d.vjp = std::move(vjp);
  r.add(std::move(d));
}

}  // namespace

void register_reduce_ops(OpRegistry& r) {
  using C = const VjpContext&;
  add_reduce(r, "sum", reduce_kernel<SumOp>, [](C c) { return std::vector<Value>{expand_grad(c, c.grads[0])}; });
  add_reduce(r, "mean", mean_kernel, [](C c) {
    Value x = c.inputs[0];
    return std::vector<Value>{div(expand_grad(c, c.grads[0]), count(x, c.attrs().ints("axes"), x.dtype()))};
  });
  add_reduce(r, "prod", reduce_kernel<ProdOp>, [](C c) {  // assumes no zeros in x
    return std::vector<Value>{div(mul(expand_grad(c, c.grads[0]), expand_grad(c, c.outputs[0])), c.inputs[0])};
  });
  auto minmax_vjp = [](C c) {  // ties share the gradient equally
    Value x = c.inputs[0];
    Value mask = cast(binary("eq", x, expand_grad(c, c.outputs[0])), x.dtype());
    Value ties = broadcast_like(sum(mask, c.attrs().ints("axes"), true), x);
    return std::vector<Value>{div(mul(mask, expand_grad(c, c.grads[0])), ties)};
  };
  add_reduce(r, "max", reduce_kernel<MaxOp>, minmax_vjp);
  add_reduce(r, "min", reduce_kernel<MinOp>, minmax_vjp);

  OpDef st;
  st.name = "sum_to_like";
  st.num_inputs = 2;
  st.shape_only_from = 1;
  st.infer = [](const std::vector<TensorSpec>& in, const Attrs&) {
    const Shape &x = in[0].shape, &to = in[1].shape;
    if (to.rank() > x.rank()) throw Error("cannot reduce " + x.str() + " to the larger rank of " + to.str());
    for (int i = 0; i < to.rank(); ++i) {
      int64_t dx = x[i + x.rank() - to.rank()];
      if (to[i] != 1 && !dims_compatible(dx, to[i])) throw Error("cannot reduce " + x.str() + " to " + to.str());
    }
    return std::vector<TensorSpec>{{in[0].dtype, to}};
  };
  st.identity_if_same_shape = true;
  st.cpu = sum_to_like_kernel;
  st.vjp = [](C c) { return std::vector<Value>{broadcast_like(c.grads[0], c.inputs[0]), Value{}}; };
  r.add(std::move(st));

  for (bool is_max : {true, false}) {
    OpDef d;
    d.name = is_max ? "argmax" : "argmin";
    d.attrs = {{"axis", true}, {"keepdims"}};
    d.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
      Shape s = in[0].shape;
      int ax = normalize_axis(a.i("axis"), s.rank(), "argmax");
      if (a.i("keepdims", 0))
        s[ax] = 1;
      else
        s.erase(ax);
      return std::vector<TensorSpec>{{DType::int64, s}};
    };
    d.cpu = is_max ? arg_kernel<true> : arg_kernel<false>;
    d.differentiable = false;
    r.add(std::move(d));
  }

  OpDef tk;
  tk.name = "topk";
  tk.attrs = {{"k", true}, {"axis", true}, {"largest"}};
  tk.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
    Shape s = in[0].shape;
    if (s.rank() == 0) throw Error("topk: expects a tensor of at least one dimension, got a scalar");
    const int ax = normalize_axis(a.i("axis"), s.rank(), "topk");
    const int64_t k = a.i("k");
    if (k < 0 || (s[ax] >= 0 && k > s[ax]))
      throw Error("topk: k = " + std::to_string(k) + " is outside [0, " + std::to_string(s[ax]) +
                  "], the size of axis " + std::to_string(ax) + " of " + s.str());
    s[ax] = k;
    return std::vector<TensorSpec>{{in[0].dtype, s}, {DType::int64, s}};
  };
  tk.cpu = topk_kernel;
  tk.vjp = [](C c) {  // each kept value's gradient back to where it came from
    if (!c.grads[0].valid()) return std::vector<Value>{Value{}};
    return std::vector<Value>{
        c.graph.apply1("gather_grad", {c.grads[0], c.outputs[1], c.inputs[0]}, {{"axis", c.attrs().i("axis")}})};
  };
  r.add(std::move(tk));

  OpDef cnt;
  cnt.name = "count";
  cnt.attrs = {{"axes", true}, {"dtype", true}};
  cnt.shape_only_from = 0;
  cnt.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
    sorted_axes(a.ints("axes"), in[0].shape.rank(), "count");
    return std::vector<TensorSpec>{{dtype_from_name(a.s("dtype")), Shape{}}};
  };
  cnt.cpu = count_kernel;
  cnt.differentiable = false;  // depends on the shape only
  r.add(std::move(cnt));
}

}  // namespace kiln
