// Random sources: uniform and normal draws from the counter-based streams of cpu/random.h.
#include "cpu/random.h"

#include <cmath>

#include "cpu/parallel.h"
#include "ops/common.h"

namespace kiln {

namespace {

using cpu::random_bits;
using cpu::splitmix64;

template <class T>
inline T unit(uint64_t bits) {  // uniform in [0, 1)
  if constexpr (std::is_same_v<T, float>)
    return cpu::unit_float(bits);
  else
    return cpu::unit_double(bits);
}

template <bool gaussian>
void random_kernel(const KernelContext& c) {
  Tensor& out = c.output(0);
  const uint64_t key = cpu::stream_key(c.attrs.i("seed"), c.call_counter);
  const double a = c.attrs.f(gaussian ? "mean" : "low"), b = c.attrs.f(gaussian ? "std" : "high");
  KILN_DISPATCH_FLOAT(out.dtype(), gaussian ? "normal" : "uniform", {
    scalar_t* o = out.data<scalar_t>();
    cpu::parallel_for(out.numel(), 1 << 14, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        uint64_t h = random_bits(key, i);
        if constexpr (gaussian) {  // Box-Muller on two independent uniforms
          double u1 = (static_cast<double>(h >> 11) + 1.0) * (1.0 / 9007199254740993.0);
          double u2 = cpu::unit_double(splitmix64(h));
          o[i] = static_cast<scalar_t>(a + b * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
        } else {
          o[i] = static_cast<scalar_t>(a + (b - a) * unit<scalar_t>(h));
        }
      }
    });
  });
}

}  // namespace

void register_random_ops(OpRegistry& r) {
  for (bool gaussian : {false, true}) {
    OpDef d;
    d.name = gaussian ? "normal" : "uniform";
    d.attrs = {{"shape", true},
               {"dtype", true},
               {"seed", true},
               {gaussian ? "mean" : "low", true},
               {gaussian ? "std" : "high", true}};
    d.num_inputs = -1;  // none, or one whose shape the draw takes
    d.shape_only_from = 0;
    d.infer = [](const std::vector<TensorSpec>& in, const Attrs& a) {
      if (in.size() > 1) throw Error("expected at most one shape reference");
      DType t = dtype_from_name(a.s("dtype"));
      if (!is_floating(t)) throw Error("random draws are floating point, not " + std::string(dtype_name(t)));
      return std::vector<TensorSpec>{{t, in.empty() ? Shape(a.ints("shape")) : in[0].shape}};
    };
    d.cpu = gaussian ? random_kernel<true> : random_kernel<false>;
    d.differentiable = false;
    d.random = true;
    r.add(std::move(d));
  }
}

}  // namespace kiln
