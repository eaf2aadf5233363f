// Random sources. Counter-based: element i of call n of a function is a hash of
// (seed, n, i), so a draw is reproducible for a seed, fresh on every call, and the same
// whatever the number of threads.
#include <cmath>

#include "cpu/parallel.h"
#include "ops/common.h"

namespace kiln {

namespace {

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
inline T unit(uint64_t bits) {  // uniform in [0, 1)
  if constexpr (std::is_same_v<T, float>) return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
  else return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

template <bool gaussian>
void random_kernel(const KernelContext& c) {
  Tensor& out = c.output(0);
  const uint64_t key = splitmix64(static_cast<uint64_t>(c.attrs.i("seed")) ^ splitmix64(c.call_counter));
  const double a = c.attrs.f(gaussian ? "mean" : "low"), b = c.attrs.f(gaussian ? "std" : "high");
  KILN_DISPATCH_FLOAT(out.dtype(), gaussian ? "normal" : "uniform", {
    scalar_t* o = out.data<scalar_t>();
    cpu::parallel_for(out.numel(), 1 << 14, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        uint64_t h = splitmix64(key + static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull);
        if constexpr (gaussian) {  // Box-Muller on two independent uniforms
          double u1 = (static_cast<double>(h >> 11) + 1.0) * (1.0 / 9007199254740993.0);
          double u2 = unit<double>(splitmix64(h));
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
    d.attrs = {{"shape", true}, {"dtype", true}, {"seed", true}, {gaussian ? "mean" : "low", true},
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
