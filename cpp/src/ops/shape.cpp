// Shape ops: views (reshape, flatten, squeeze, unsqueeze, reshape_like), broadcasting,
// filling, concat/split, slicing and padding.
#include <algorithm>
#include <numeric>

#include "cpu/broadcast.h"
#include "cpu/copy.h"
#include "ops/common.h"
#include "ops/slice.h"

namespace kiln {
using namespace ops;

namespace {

using Specs = std::vector<TensorSpec>;
using C = const VjpContext&;

std::vector<Value> grad_as_input_shape(C c) { return {reshape_like(c.grads[0], c.inputs[0])}; }

void add_view(OpRegistry& r, const std::string& name, std::vector<AttrSpec> attrs, InferFn infer) {
  OpDef d;
  d.name = name;
  d.attrs = std::move(attrs);
  d.infer = std::move(infer);
  d.cpu = alias_kernel;
  d.kind = OpKind::alias;
  d.vjp = grad_as_input_shape;
  r.add(std::move(d));
}

Specs infer_reshape(const Specs& in, const Attrs& a) {
  const Shape& s = in[0].shape;
  const auto& target = a.ints("shape");
  Shape out;
  int infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < target.size(); ++i) {
    int64_t d = target[i];
    if (d == -1) {
      if (infer_at >= 0) throw Error("reshape: only one dimension can be -1, got " + Shape(target).str());
      infer_at = static_cast<int>(i);
    } else if (d < 0) {
      throw Error("reshape: invalid size " + std::to_string(d) + " in " + Shape(target).str());
    } else {
      known *= d;
    }
    out.push_back(d);
  }
  int64_t n = s.numel();
  if (n < 0) return {TensorSpec{in[0].dtype, out}};  // symbolic input: the -1 stays symbolic
  if (infer_at >= 0) {
    if (known == 0 || n % known != 0)
      throw Error("reshape: cannot reshape " + s.str() + " (" + std::to_string(n) + " elements) into " +
                  Shape(target).str());
    out[infer_at] = n / known;
  } else if (known != n) {
    throw Error("reshape: cannot reshape " + s.str() + " (" + std::to_string(n) + " elements) into " + out.str());
  }
  return {TensorSpec{in[0].dtype, out}};
}

Specs infer_flatten(const Specs& in, const Attrs& a) {
  const Shape& s = in[0].shape;
  if (s.rank() == 0) return {TensorSpec{in[0].dtype, Shape{1}}};
  int b = normalize_axis(a.i("start_dim"), s.rank(), "flatten"),
      e = normalize_axis(a.i("end_dim"), s.rank(), "flatten");
  if (b > e) throw Error("flatten: start_dim " + std::to_string(b) + " is after end_dim " + std::to_string(e));
  Shape out;
  for (int i = 0; i < b; ++i) out.push_back(s[i]);
  int64_t m = 1;
  for (int i = b; i <= e; ++i) m = (m < 0 || s[i] < 0) ? kUnknownDim : m * s[i];
  out.push_back(m);
  for (int i = e + 1; i < s.rank(); ++i) out.push_back(s[i]);
  return {TensorSpec{in[0].dtype, out}};
}

Specs infer_squeeze(const Specs& in, const Attrs& a) {
  Shape s = in[0].shape;
  auto axes = sorted_axes(a.ints("axes"), s.rank(), "squeeze");
  for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
    int ax = static_cast<int>(*it);
    if (s[ax] > 1)
      throw Error("squeeze: cannot squeeze axis " + std::to_string(ax) + " of size " + std::to_string(s[ax]) + " in " +
                  in[0].shape.str());
    s.erase(ax);
  }
  return {TensorSpec{in[0].dtype, s}};
}

Specs infer_unsqueeze(const Specs& in, const Attrs& a) {
  Shape s = in[0].shape;
  s.insert(normalize_axis(a.i("axis"), s.rank() + 1, "unsqueeze"), 1);
  return {TensorSpec{in[0].dtype, s}};
}

Specs infer_reshape_like(const Specs& in, const Attrs&) {
  int64_t a = in[0].shape.numel(), b = in[1].shape.numel();
  if (a >= 0 && b >= 0 && a != b)
    throw Error("reshape_like: cannot reshape " + in[0].shape.str() + " into " + in[1].shape.str());
  return {TensorSpec{in[0].dtype, in[1].shape}};
}

void broadcast_kernel(const KernelContext& c) {
  dispatch_by_size(c.input(0).dtype(), "broadcast_to",
                   [&](auto t) { cpu::broadcast_copy<decltype(t)>(c.input(0), c.output(0)); });
}

Shape check_broadcastable(const Shape& x, const Shape& to, const char* op) {
  if (x.rank() > to.rank()) throw Error(std::string(op) + ": cannot broadcast " + x.str() + " to " + to.str());
  Shape out = to;
  for (int i = 0; i < x.rank(); ++i) {
    int j = i + to.rank() - x.rank();
    int64_t dx = x[i], dt = to[j];
    if (dx == 1 || dims_compatible(dx, dt)) {
      if (dt < 0 && dx > 1) out[j] = dx;
    } else {
      throw Error(std::string(op) + ": cannot broadcast " + x.str() + " to " + to.str());
    }
  }
  return out;
}

void fill_kernel(const KernelContext& c) { cpu::fill(c.output(0), c.attrs.f("value")); }

// ---- concat / split ----

Specs infer_concat(const Specs& in, const Attrs& a) {
  if (in.empty()) throw Error("concat: needs at least one tensor");
  const Shape& s0 = in[0].shape;
  int ax = normalize_axis(a.i("axis"), s0.rank(), "concat");
  Shape out = s0;
  for (size_t k = 1; k < in.size(); ++k) {
    const Shape& s = in[k].shape;
    if (in[k].dtype != in[0].dtype) throw Error("concat: dtypes differ: " + specs_str(in));
    bool ok = s.rank() == s0.rank();
    for (int i = 0; ok && i < s.rank(); ++i)
      if (i != ax && !dims_compatible(s[i], s0[i])) ok = false;
    if (!ok) throw Error("concat: shapes " + specs_str(in) + " differ outside axis " + std::to_string(ax));
    out[ax] = (out[ax] < 0 || s[ax] < 0) ? kUnknownDim : out[ax] + s[ax];
  }
  return {TensorSpec{in[0].dtype, out}};
}

// Copies each part into (or out of) its place along `axis` of the whole.
void move_parts(const Tensor& whole, const Tensor* const* parts, int n, int axis, bool into_whole) {
  int64_t zero[kMaxRank] = {}, one[kMaxRank], start[kMaxRank] = {};
  for (int i = 0; i < kMaxRank; ++i) one[i] = 1;
  Tensor w = whole;
  for (int k = 0; k < n; ++k) {
    Tensor p = *parts[k];
    if (into_whole)
      cpu::copy_box(p, zero, one, w, start, one, p.shape());
    else
      cpu::copy_box(w, start, one, p, zero, one, p.shape());
    start[axis] += p.shape()[axis];
  }
}

void concat_kernel(const KernelContext& c) {
  move_parts(c.output(0), c.in, c.n_in, normalize_axis(c.attrs.i("axis"), c.output(0).rank(), "concat"), true);
}
void split_kernel(const KernelContext& c) {
  move_parts(c.input(0), const_cast<const Tensor* const*>(c.out), c.n_out,
             normalize_axis(c.attrs.i("axis"), c.input(0).rank(), "split"), false);
}

std::vector<Value> concat_grads(C c) {  // the gradient of a split: its outputs' grads, joined
  std::vector<Value> parts;
  for (size_t i = 0; i < c.outputs.size(); ++i)
    parts.push_back(c.grads[i].valid() ? c.grads[i] : zeros_like(c.outputs[i]));
  std::vector<Value> out{concat(parts, c.attrs().i("axis"))};
  out.resize(c.inputs.size());
  return out;
}

// ---- slice / pad ----

void slice_kernel(const KernelContext& c) {
  SliceBox b = slice_box(c.input(0).shape(), c.attrs);
  int64_t zero[kMaxRank] = {}, one[kMaxRank];
  std::fill(one, one + kMaxRank, 1);
  cpu::copy_box(c.input(0), b.start, b.step, c.output(0), zero, one, b.extent);
}

void slice_grad_kernel(const KernelContext& c) {
  SliceBox b = slice_box(c.output(0).shape(), c.attrs);
  int64_t zero[kMaxRank] = {}, one[kMaxRank];
  std::fill(one, one + kMaxRank, 1);
  cpu::fill(c.output(0), 0.0);
  cpu::copy_box(c.input(0), zero, one, c.output(0), b.start, b.step, b.extent);
}

// pads: (before, after) pairs starting from the last dimension, as torch.nn.functional.pad.
void pad_amounts(const Shape& s, const std::vector<int64_t>& pads, int64_t* before, int64_t* after) {
  if (pads.size() % 2 || static_cast<int>(pads.size()) > 2 * s.rank())
    throw Error("pad: expected an even number of pad sizes, at most 2 per dimension of " + s.str());
  for (int i = 0; i < s.rank(); ++i) before[i] = after[i] = 0;
  for (size_t k = 0; k < pads.size() / 2; ++k) {
    int d = s.rank() - 1 - static_cast<int>(k);
    before[d] = pads[2 * k];
    after[d] = pads[2 * k + 1];
  }
}

Specs infer_pad(const Specs& in, const Attrs& a) {
  const Shape& s = in[0].shape;
  int64_t before[kMaxRank], after[kMaxRank];
  pad_amounts(s, a.ints("pads"), before, after);
  Shape out = s;
  for (int i = 0; i < s.rank(); ++i) {
    if (s[i] < 0) continue;
    out[i] = s[i] + before[i] + after[i];
    if (out[i] < 0)
      throw Error("pad: negative padding crops " + s.str() + " below zero along axis " + std::to_string(i));
  }
  return {TensorSpec{in[0].dtype, out}};
}

void pad_kernel(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  int64_t before[kMaxRank], after[kMaxRank], xs[kMaxRank], ys[kMaxRank], one[kMaxRank];
  pad_amounts(x.shape(), c.attrs.ints("pads"), before, after);
  Shape extent;
  bool full = true;
  for (int i = 0; i < x.rank(); ++i) {
    one[i] = 1;
    xs[i] = before[i] < 0 ? -before[i] : 0;
    ys[i] = before[i] > 0 ? before[i] : 0;
    extent.push_back(std::max<int64_t>(0, std::min(x.shape()[i] - xs[i], y.shape()[i] - ys[i])));
    full = full && before[i] <= 0 && after[i] <= 0;
  }
  if (!full) cpu::fill(y, c.attrs.f("value", 0.0));
  cpu::copy_box(x, xs, one, y, ys, one, extent);
}

}  // namespace

void register_shape_ops(OpRegistry& r) {
  add_view(r, "reshape", {{"shape", true}}, infer_reshape);
  add_view(r, "flatten", {{"start_dim", true}, {"end_dim", true}}, infer_flatten);
  add_view(r, "squeeze", {{"axes", true}}, infer_squeeze);
  add_view(r, "unsqueeze", {{"axis", true}}, infer_unsqueeze);
  add_view(r, "reshape_like", {}, infer_reshape_like);
  {
    OpDef& d = const_cast<OpDef&>(r.at("reshape_like"));
    d.num_inputs = 2;
    d.shape_only_from = 1;
    d.vjp = [](C c) { return std::vector<Value>{reshape_like(c.grads[0], c.inputs[0]), Value{}}; };
  }

  OpDef bt;
  bt.name = "broadcast_to";
  bt.attrs = {{"shape", true}};
  bt.infer = [](const Specs& in, const Attrs& a) {
    Shape to(a.ints("shape"));
    int lead = to.rank() - in[0].shape.rank();
    for (int i = 0; i < to.rank(); ++i)  // -1 keeps the input's size, as torch's expand
      if (to[i] == -1) to[i] = i >= lead ? in[0].shape[i - lead] : 1;
    return Specs{{in[0].dtype, check_broadcastable(in[0].shape, to, "broadcast_to")}};
  };
  bt.identity_if_same_shape = true;
  bt.cpu = broadcast_kernel;
  bt.vjp = [](C c) { return std::vector<Value>{sum_to_like(c.grads[0], c.inputs[0])}; };
  r.add(std::move(bt));

  OpDef bl;
  bl.name = "broadcast_like";
  bl.num_inputs = 2;
  bl.shape_only_from = 1;
  bl.infer = [](const Specs& in, const Attrs&) {
    return Specs{{in[0].dtype, check_broadcastable(in[0].shape, in[1].shape, "broadcast_like")}};
  };
  bl.identity_if_same_shape = true;
  bl.cpu = broadcast_kernel;
  bl.vjp = [](C c) { return std::vector<Value>{sum_to_like(c.grads[0], c.inputs[0]), Value{}}; };
  r.add(std::move(bl));

  OpDef fl;
  fl.name = "full_like";
  fl.attrs = {{"value", true}};
  fl.shape_only_from = 0;
  fl.infer = same_as_input;
  fl.cpu = fill_kernel;
  fl.differentiable = false;  // its value does not depend on the input's values
  r.add(std::move(fl));

  OpDef cc;
  cc.name = "concat";
  cc.attrs = {{"axis", true}};
  cc.num_inputs = -1;
  cc.infer = infer_concat;
  cc.cpu = concat_kernel;
  cc.vjp = [](C c) {
    std::vector<Value> likes(c.inputs.begin(), c.inputs.end());
    return split_like(c.grads[0], likes, c.attrs().i("axis"));
  };
  r.add(std::move(cc));

  OpDef sp;
  sp.name = "split";
  sp.attrs = {{"sizes", true}, {"axis", true}};
  sp.infer = [](const Specs& in, const Attrs& a) {
    const Shape& s = in[0].shape;
    int ax = normalize_axis(a.i("axis"), s.rank(), "split");
    const auto& sizes = a.ints("sizes");
    int64_t total = 0;
    Specs out;
    for (int64_t n : sizes) {
      if (n < 0) throw Error("split: negative size " + std::to_string(n));
      total += n;
      Shape o = s;
      o[ax] = n;
      out.push_back({in[0].dtype, o});
    }
    if (s[ax] >= 0 && total != s[ax])
      throw Error("split: sizes " + Shape(sizes).str() + " add up to " + std::to_string(total) + ", not to dimension " +
                  std::to_string(ax) + " of " + s.str());
    return out;
  };
  sp.cpu = split_kernel;
  sp.vjp = concat_grads;
  r.add(std::move(sp));

  OpDef sl;
  sl.name = "split_like";
  sl.attrs = {{"axis", true}};
  sl.num_inputs = -1;
  sl.shape_only_from = 1;
  sl.infer = [](const Specs& in, const Attrs& a) {
    const Shape& s = in[0].shape;
    int ax = normalize_axis(a.i("axis"), s.rank(), "split_like");
    Specs out;
    int64_t total = 0;
    for (size_t k = 1; k < in.size(); ++k) {
      if (in[k].shape.rank() != s.rank()) throw Error("split_like: parts must have the rank of " + s.str());
      Shape o = s;
      o[ax] = in[k].shape[ax];
      total = o[ax] < 0 || total < 0 ? kUnknownDim : total + o[ax];
      out.push_back({in[0].dtype, o});
    }
    if (total >= 0 && s[ax] >= 0 && total != s[ax])
      throw Error("split_like: the parts add up to " + std::to_string(total) + " along an axis of " + s.str());
    return out;
  };
  sl.cpu = split_kernel;
  sl.vjp = concat_grads;
  r.add(std::move(sl));

  OpDef sc;
  sc.name = "slice";
  sc.attrs = {{"starts", true}, {"stops", true}, {"steps", true}};
  sc.infer = [](const Specs& in, const Attrs& a) { return Specs{{in[0].dtype, slice_box(in[0].shape, a).extent}}; };
  sc.cpu = slice_kernel;
  sc.vjp = [](C c) { return std::vector<Value>{c.graph.apply1("slice_grad", {c.grads[0], c.inputs[0]}, c.attrs())}; };
  r.add(std::move(sc));

  OpDef sg;
  sg.name = "slice_grad";
  sg.attrs = {{"starts", true}, {"stops", true}, {"steps", true}};
  sg.num_inputs = 2;
  sg.shape_only_from = 1;
  sg.infer = [](const Specs& in, const Attrs& a) {  // (gy, x)
    require_like(in[0], forward_specs("slice", {in[1]}, a)[0], "the gradient");
    return Specs{{in[0].dtype, in[1].shape}};
  };
  sg.cpu = slice_grad_kernel;
  sg.vjp = [](C c) { return std::vector<Value>{c.graph.apply1("slice", {c.grads[0]}, c.attrs()), Value{}}; };
  r.add(std::move(sg));

  OpDef pd;
  pd.name = "pad";
  pd.attrs = {{"pads", true}, {"value"}};
  pd.infer = infer_pad;
  pd.cpu = pad_kernel;
  pd.vjp = [](C c) {
    std::vector<int64_t> crop = c.attrs().ints("pads");
    for (auto& p : crop) p = -p;
    return std::vector<Value>{pad(c.grads[0], crop)};
  };
  r.add(std::move(pd));
}

}  // namespace kiln
