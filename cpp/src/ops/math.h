#pragma once
// The bodies of the elementwise kernels: one functor per op, shared by the CPU kernels
// (ops/elementwise.cpp, ops/activation.cpp) and the CUDA kernels (cuda/elementwise.cu), so that
// both backends compute each op by the same formula.
#include <cmath>
#include <type_traits>

#include "kiln/op.h"
#include "ops/host_device.h"

namespace kiln::math {

struct Neg {
  template <class T>
  KILN_HD T operator()(T x) const {
    return -x;
  }
};
struct Abs {
  template <class T>
  KILN_HD T operator()(T x) const {
    return x < 0 ? -x : x;
  }
};
struct Sign {
  template <class T>
  KILN_HD T operator()(T x) const {
    return T((x > 0) - (x < 0));
  }
};
struct Square {
  template <class T>
  KILN_HD T operator()(T x) const {
    return x * x;
  }
};
struct Exp {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::exp(x);
  }
};
struct Log {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::log(x);
  }
};
struct Sqrt {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::sqrt(x);
  }
};
struct Rsqrt {
  template <class T>
  KILN_HD T operator()(T x) const {
    return T(1) / std::sqrt(x);
  }
};
struct Sigmoid {
  template <class T>
  KILN_HD T operator()(T x) const {  // stable for large |x|
    return x >= 0 ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
  }
};
struct Tanh {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::tanh(x);
  }
};
struct Relu {
  template <class T>
  KILN_HD T operator()(T x) const {
    return x < T(0) ? T(0) : x;
  }
};  // NaN stays
struct Floor {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::floor(x);
  }
};
struct Cos {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::cos(x);
  }
};
struct Sin {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::sin(x);
  }
};
struct Erf {
  template <class T>
  KILN_HD T operator()(T x) const {
    return std::erf(x);
  }
};
struct LogicalNot {
  KILN_HD bool operator()(bool x) const { return !x; }
};

struct Add {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    return a + b;
  }
};
struct Sub {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    return a - b;
  }
};
struct Mul {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    return a * b;
  }
};
struct Div {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {  // floor division, as numpy's // (never traps)
      if (b == 0) return T(0);
      T q = a / b;
      if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
      return q;
    } else {
      return a / b;
    }
  }
};
struct Pow {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    return static_cast<T>(std::pow(static_cast<double>(a), static_cast<double>(b)));
  }
  KILN_HD float operator()(float a, float b) const { return std::pow(a, b); }
};
struct Maximum {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    return (a != a || a > b) ? a : b;
  }  // NaN wins
};
struct Minimum {
  template <class T>
  KILN_HD T operator()(T a, T b) const {
    return (a != a || a < b) ? a : b;
  }
};
struct ReluGrad {
  template <class T>
  KILN_HD T operator()(T g, T x) const {
    return x > T(0) ? g : T(0);
  }
};
struct Eq {
  template <class T>
  KILN_HD bool operator()(T a, T b) const {
    return a == b;
  }
};
struct Ne {
  template <class T>
  KILN_HD bool operator()(T a, T b) const {
    return a != b;
  }
};
struct Lt {
  template <class T>
  KILN_HD bool operator()(T a, T b) const {
    return a < b;
  }
};
struct Le {
  template <class T>
  KILN_HD bool operator()(T a, T b) const {
    return a <= b;
  }
};
struct Gt {
  template <class T>
  KILN_HD bool operator()(T a, T b) const {
    return a > b;
  }
};
struct Ge {
  template <class T>
  KILN_HD bool operator()(T a, T b) const {
    return a >= b;
  }
};
struct And {
  KILN_HD bool operator()(bool a, bool b) const { return a && b; }
};
struct Or {
  KILN_HD bool operator()(bool a, bool b) const { return a || b; }
};
struct Xor {
  KILN_HD bool operator()(bool a, bool b) const { return a != b; }
};

constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

struct LeakyRelu {
  double slope;
  explicit LeakyRelu(const Attrs& a) : slope(a.f("negative_slope", 0.01)) {}
  template <class T>
  KILN_HD T operator()(T x) const {
    return x < T(0) ? x * T(slope) : x;
  }
};
struct Elu {
  double alpha;
  explicit Elu(const Attrs& a) : alpha(a.f("alpha", 1.0)) {}
  template <class T>
  KILN_HD T operator()(T x) const {
    return x > T(0) ? x : T(alpha) * std::expm1(x);
  }
};
struct Selu {
  explicit Selu(const Attrs&) {}
  template <class T>
  KILN_HD T operator()(T x) const {
    return T(kSeluScale) * (x > T(0) ? x : T(kSeluAlpha) * std::expm1(x));
  }
};
struct Softplus {
  double beta, threshold;
  explicit Softplus(const Attrs& a) : beta(a.f("beta", 1.0)), threshold(a.f("threshold", 20.0)) {}
  template <class T>
  KILN_HD T operator()(T x) const {
    T bx = x * T(beta);
    return bx > T(threshold) ? x : std::log1p(std::exp(bx)) / T(beta);
  }
};
struct Gelu {
  bool tanh_approx;
  explicit Gelu(const Attrs& a) : tanh_approx(a.s("approximate") == "tanh") {}
  template <class T>
  KILN_HD T operator()(T x) const {
    if (tanh_approx) {
      const T k = T(0.7978845608028654);  // sqrt(2 / pi)
      return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
    }
    return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476)));
  }
  template <class T>
  KILN_HD T grad(T x) const {
    if (tanh_approx) {
      const T k = T(0.7978845608028654);
      T u = k * (x + T(0.044715) * x * x * x), t = std::tanh(u);
      return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * k * (T(1) + T(3 * 0.044715) * x * x);
    }
    const T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);  // 1 / sqrt(2 pi)
    return T(0.5) * (T(1) + std::erf(x * T(0.7071067811865476))) + x * pdf;
  }
};

// Which dtypes each kind of elementwise op takes, in one place for both backends: Map supplies
// unary(x, y, f) and binary(a, b, z, f) over tensors (cpu::map_* or the CUDA launches).
enum class Types { floats, numeric, boolean };

template <class Map, class F, Types types>
void unary_dispatch(const KernelContext& c) {
  const Tensor& x = c.input(0);
  Tensor& y = c.output(0);
  if constexpr (types == Types::floats) {
    KILN_DISPATCH_FLOAT(x.dtype(), "unary", (Map::template unary<scalar_t, scalar_t>(x, y, F{})));
  } else if constexpr (types == Types::numeric) {
    KILN_DISPATCH_NUMERIC(x.dtype(), "unary", (Map::template unary<scalar_t, scalar_t>(x, y, F{})));
  } else {
    Map::template unary<bool, bool>(x, y, F{});
  }
}

template <class Map, class F, Types types, bool to_bool>
void binary_dispatch(const KernelContext& c) {
  const Tensor &a = c.input(0), &b = c.input(1);
  Tensor& z = c.output(0);
  if constexpr (types == Types::boolean) {
    Map::template binary<bool, bool>(a, b, z, F{});
  } else if constexpr (to_bool) {
    KILN_DISPATCH_ALL(a.dtype(), "compare", (Map::template binary<scalar_t, bool>(a, b, z, F{})));
  } else if constexpr (types == Types::floats) {
    KILN_DISPATCH_FLOAT(a.dtype(), "binary", (Map::template binary<scalar_t, scalar_t>(a, b, z, F{})));
  } else {
    KILN_DISPATCH_NUMERIC(a.dtype(), "binary", (Map::template binary<scalar_t, scalar_t>(a, b, z, F{})));
  }
}

}  // namespace kiln::math
