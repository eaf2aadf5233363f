#pragma once
// One process-wide pool of worker threads for kernels, a thread per CPU the process may use
// (KILN_NUM_THREADS or set_num_threads to change it). BLAS runs single-threaded inside its chunks, so
// the two never compete for cores. Between regions the workers spin for up to 10 ms, then sleep.
#include <cstdint>
#include <type_traits>

namespace kiln::cpu {

int num_threads();
void set_num_threads(int n);

namespace detail {
using RangeFn = void (*)(void* fn, int64_t begin, int64_t end);
void run_parallel(int64_t n, int64_t grain, RangeFn call, void* fn);
bool in_parallel_region();
}  // namespace detail

// Calls fn(begin, end) on disjoint chunks covering [0, n), in parallel when n is at least
// 2 * grain. Takes the callable by reference: no allocation. Inside a parallel region it runs
// inline, so a kernel that splits its work over threads may call parallel code per part.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  grain = grain < 1 ? 1 : grain;
  if (n < 2 * grain || num_threads() == 1 || detail::in_parallel_region()) {
    fn(int64_t{0}, n);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  detail::run_parallel(
      n, grain, [](void* f, int64_t b, int64_t e) { (*static_cast<Fn*>(f))(b, e); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace kiln::cpu
