// The graph-building functions of kiln::ops, one binding each; python/kiln/ops.py gives them
// their user-facing signatures and documentation.
#include "kiln/ops.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "convert.h"

namespace nb = nanobind;
using namespace kiln;
using namespace kiln::ops;
using nb::arg;

void bind_ops(nb::module_& m) {
  m.def("constant_like", &constant_like, arg("value"), arg("like"));
  m.def(
      "cast", [](const Value& x, nb::handle dtype) { return cast(x, py::dtype_arg(dtype)); }, arg("x"), arg("dtype"));
  m.def("stop_gradient", &stop_gradient, arg("x"));
  m.def("binary", &binary, arg("op"), arg("a"), arg("b"));
  m.def("unary", &unary, arg("op"), arg("x"));
  m.def("where", &where, arg("cond"), arg("a"), arg("b"));
  m.def("clip", &clip, arg("x"), arg("lo").none(), arg("hi").none());

  m.def("reduce", &reduce, arg("op"), arg("x"), arg("axes").none(), arg("keepdims"));
  m.def("var", &var, arg("x"), arg("axes").none(), arg("keepdims"), arg("ddof"));
  m.def("std", &std_, arg("x"), arg("axes").none(), arg("keepdims"), arg("ddof"));
  m.def("logsumexp", &logsumexp, arg("x"), arg("axes").none(), arg("keepdims"));
  m.def("argmax", &argmax, arg("x"), arg("axis").none(), arg("keepdims"));
  m.def("argmin", &argmin, arg("x"), arg("axis").none(), arg("keepdims"));
  m.def("topk", &topk, arg("x"), arg("k"), arg("axis"), arg("largest"));
  m.def("softmax", &softmax, arg("x"), arg("axis"));
  m.def("log_softmax", &log_softmax, arg("x"), arg("axis"));

  m.def("matmul", &matmul, arg("a"), arg("b"), arg("transpose_a") = false, arg("transpose_b") = false);
  m.def("permute", &permute, arg("x"), arg("dims"));
  m.def("transpose", &transpose, arg("x"), arg("dim0"), arg("dim1"));

  m.def("reshape", &reshape, arg("x"), arg("shape"));
  m.def("flatten", &flatten, arg("x"), arg("start_dim"), arg("end_dim"));
  m.def("squeeze", &squeeze, arg("x"), arg("axes").none());
  m.def("unsqueeze", &unsqueeze, arg("x"), arg("axis"));
  m.def("broadcast_to", &broadcast_to, arg("x"), arg("shape"));
  m.def("broadcast_like", &broadcast_like, arg("x"), arg("like"));
  m.def("sum_to_like", &sum_to_like, arg("x"), arg("like"));
  m.def("zeros_like", &zeros_like, arg("x"));
  m.def("ones_like", &ones_like, arg("x"));
  m.def("concat", &concat, arg("xs"), arg("axis"));
  m.def("stack", &stack, arg("xs"), arg("axis"));
  m.def("split", &split, arg("x"), arg("sizes"), arg("axis"));
  m.def("slice", &slice, arg("x"), arg("starts"), arg("stops"), arg("steps"));
  m.attr("SLICE_NONE") = kSliceNone;
  m.def("pad", &pad, arg("x"), arg("pads"), arg("value"));

  m.def("take", &take, arg("x"), arg("indices"), arg("axis"));
  m.def("gather", &gather, arg("x"), arg("indices"), arg("axis"));
  m.def(
      "one_hot", [](const Value& i, int64_t n, nb::handle dtype) { return one_hot(i, n, py::dtype_arg(dtype)); },
      arg("indices"), arg("num_classes"), arg("dtype"));

  auto shape_of = [](const std::vector<int64_t>& s) { return Shape(s); };
  m.def(
      "uniform",
      [=](Graph& g, const std::vector<int64_t>& shape, double low, double high, int64_t seed, nb::handle dtype,
          std::optional<Value> like) {
        return uniform(g, shape_of(shape), low, high, seed, py::dtype_arg(dtype), like ? *like : Value{});
      },
      arg("graph"), arg("shape"), arg("low"), arg("high"), arg("seed"), arg("dtype"), arg("like").none());
  m.def(
      "normal",
      [=](Graph& g, const std::vector<int64_t>& shape, double mean, double std, int64_t seed, nb::handle dtype,
          std::optional<Value> like) {
        return normal(g, shape_of(shape), mean, std, seed, py::dtype_arg(dtype), like ? *like : Value{});
      },
      arg("graph"), arg("shape"), arg("mean"), arg("std"), arg("seed"), arg("dtype"), arg("like").none());
  m.def(
      "bernoulli",
      [=](Graph& g, double p, const std::vector<int64_t>& shape, int64_t seed, nb::handle dtype,
          std::optional<Value> like) {
        return bernoulli(g, p, shape_of(shape), seed, py::dtype_arg(dtype), like ? *like : Value{});
      },
      arg("graph"), arg("p"), arg("shape"), arg("seed"), arg("dtype"), arg("like").none());
}
