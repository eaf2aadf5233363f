#pragma once
// The graph-building API: functions that add nodes to a value's graph. Binary ops promote
// their operands numpy-style; composite ops (var, softmax, ...) are written in terms of
// primitives, so their gradients come for free.
#include <optional>
#include <string>
#include <vector>

#include "kiln/graph.h"

namespace kiln::ops {

using Axes = std::optional<std::vector<int64_t>>;  // nullopt: all axes

Value constant_like(double value, const Value& like);  // rank-0 constant of like's dtype
Value cast(const Value& x, DType dtype);
Value stop_gradient(const Value& x);

// Elementwise. `binary` accepts add sub mul div pow maximum minimum eq ne lt le gt ge
// logical_and logical_or logical_xor; `unary` accepts neg exp log sqrt rsqrt abs sign square
// sigmoid tanh relu logical_not.
Value binary(const std::string& op, Value a, Value b);
Value unary(const std::string& op, const Value& x);
Value add(const Value& a, const Value& b);
Value sub(const Value& a, const Value& b);
Value mul(const Value& a, const Value& b);
Value div(const Value& a, const Value& b);
Value neg(const Value& x);
Value where(const Value& cond, Value a, Value b);
Value clip(const Value& x, std::optional<double> lo, std::optional<double> hi);

// Reductions (numpy semantics for axis and keepdims).
Value reduce(const std::string& op, const Value& x, const Axes& axes, bool keepdims);
Value sum(const Value& x, const Axes& axes = std::nullopt, bool keepdims = false);
Value mean(const Value& x, const Axes& axes = std::nullopt, bool keepdims = false);
Value var(const Value& x, const Axes& axes = std::nullopt, bool keepdims = false, int64_t ddof = 0);
Value std_(const Value& x, const Axes& axes = std::nullopt, bool keepdims = false, int64_t ddof = 0);
Value logsumexp(const Value& x, const Axes& axes = std::nullopt, bool keepdims = false);
Value argmax(const Value& x, std::optional<int64_t> axis, bool keepdims = false);
Value argmin(const Value& x, std::optional<int64_t> axis, bool keepdims = false);
// The k largest (or smallest) entries along `axis`, best first, and their int64 indices: {values,
// indices}, each x's shape with that axis k long (torch.topk). NaN ranks above every number; equal
// values keep the lower index first.
std::vector<Value> topk(const Value& x, int64_t k, int64_t axis = -1, bool largest = true);
Value softmax(const Value& x, int64_t axis = -1);
Value log_softmax(const Value& x, int64_t axis = -1);
Value count(const Value& x, const std::vector<int64_t>& axes, DType dtype);  // elements reduced

// Linear algebra.
Value matmul(Value a, Value b, bool transpose_a = false, bool transpose_b = false);
Value permute(const Value& x, std::vector<int64_t> dims);
Value transpose(const Value& x, int64_t dim0 = -2, int64_t dim1 = -1);

// Shape.
Value reshape(const Value& x, const std::vector<int64_t>& shape);
Value flatten(const Value& x, int64_t start_dim = 1, int64_t end_dim = -1);
Value squeeze(const Value& x, const Axes& axes = std::nullopt);
Value unsqueeze(const Value& x, int64_t axis);
Value broadcast_to(const Value& x, const std::vector<int64_t>& shape);
Value broadcast_like(const Value& x, const Value& like);
Value sum_to_like(const Value& x, const Value& like);
Value reshape_like(const Value& x, const Value& like);
Value zeros_like(const Value& x);
Value ones_like(const Value& x);
Value concat(const std::vector<Value>& xs, int64_t axis = 0);
Value stack(const std::vector<Value>& xs, int64_t axis = 0);
std::vector<Value> split(const Value& x, const std::vector<int64_t>& sizes, int64_t axis = 0);
std::vector<Value> split_like(const Value& x, const std::vector<Value>& likes, int64_t axis);
// Python slice semantics per axis; kSliceNone stands for an omitted start or stop.
constexpr int64_t kSliceNone = INT64_MIN;
Value slice(const Value& x, const std::vector<int64_t>& starts, const std::vector<int64_t>& stops,
            const std::vector<int64_t>& steps);
Value pad(const Value& x, const std::vector<int64_t>& pads, double value = 0.0);

// Indexing.
Value take(const Value& x, const Value& indices, int64_t axis);    // numpy.take
Value gather(const Value& x, const Value& indices, int64_t axis);  // take_along_axis
Value one_hot(const Value& indices, int64_t num_classes, DType dtype = DType::float32);

// Random: a fresh draw on every call of a compiled function; reproducible for a given seed.
// seed < 0 picks a nondeterministic one. `like`, when valid, gives the shape at run time.
Value uniform(Graph& g, const Shape& shape, double low, double high, int64_t seed, DType dtype = DType::float32,
              const Value& like = {});
Value normal(Graph& g, const Shape& shape, double mean, double std, int64_t seed, DType dtype = DType::float32,
             const Value& like = {});
Value bernoulli(Graph& g, double p, const Shape& shape, int64_t seed, DType dtype = DType::float32,
                const Value& like = {});

}  // namespace kiln::ops
