#include "cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::cpu {
namespace {

thread_local bool t_in_region = false;  // this thread is running a chunk of a parallel region

struct RegionFlag {
  RegionFlag() { t_in_region = true; }
  ~RegionFlag() { t_in_region = false; }
};

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return size_.load(std::memory_order_relaxed); }

  // Safe while other threads run parallel regions: waits for the one in flight.
  void resize_now(int n) {
    std::lock_guard<std::mutex> serial(run_mutex_);
    resize(n);
  }

  void resize(int n) {
    stop();
    size_.store(n, std::memory_order_relaxed);
    stopping_ = false;
    // A worker counts jobs from the generation of its creation, not of its first instruction
    // (a job posted before the thread runs must not be missed).
    const uint64_t start = generation_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, start] { loop(i, start); });
  }

  void run(int64_t n, int64_t grain, detail::RangeFn call, void* fn) {
    std::lock_guard<std::mutex> serial(run_mutex_);  // one parallel region at a time
    int chunks = static_cast<int>(std::min<int64_t>(size(), n / grain));
    {
      std::lock_guard<std::mutex> lk(mu_);
      call_ = call;
      fn_ = fn;
      n_ = n;
      chunks_ = chunks;
      pending_.store(chunks - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    run_chunk(0);
    // Workers usually finish within microseconds: spin before sleeping.
    for (int spin = 0; spin < kSpins && pending_.load(std::memory_order_acquire) > 0; ++spin) pause();
    if (pending_.load(std::memory_order_acquire) > 0) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    // Every chunk has finished (the body's stack frame is no longer used): rethrow the first error.
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lk(mu_);
      std::swap(error, error_);
    }
    if (error) std::rethrow_exception(error);
  }

 private:
  // Spinning this long (tens of microseconds) before blocking keeps back-to-back small kernels
  // from paying a futex wake-up each; nothing else competes for these cores (BLAS runs in them).
  static constexpr int kSpins = 20000;

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  // A throwing body must neither terminate a worker nor leave the region half-waited: the first
  // error is kept and rethrown by run() once all chunks are done.
  void run_chunk(int c) {
    int64_t b = n_ * c / chunks_, e = n_ * (c + 1) / chunks_;
    RegionFlag in_region;
    try {
      call_(fn_, b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void loop(int index, uint64_t seen) {
    for (;;) {
      for (int spin = 0; spin < kSpins && generation_.load(std::memory_order_acquire) == seen && !stopping_flag_.load();
           ++spin)
        pause();
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_.load(std::memory_order_acquire) != seen; });
        if (stopping_) return;
        seen = generation_.load(std::memory_order_acquire);
        if (index >= chunks_) continue;
      }
      run_chunk(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);  // pairs with the waiter's predicate check
        done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      stopping_flag_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stopping_flag_.store(false);
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mutex_;
  std::condition_variable cv_, done_cv_;
  bool stopping_ = false;
  std::atomic<bool> stopping_flag_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> size_{1};
  std::exception_ptr error_;  // guarded by mu_
  detail::RangeFn call_ = nullptr;
  void* fn_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
};

int default_threads() {
  if (const char* env = std::getenv("KILN_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize_now(std::max(1, n)); }

namespace detail {
void run_parallel(int64_t n, int64_t grain, RangeFn call, void* fn) { pool().run(n, grain, call, fn); }
bool in_parallel_region() { return t_in_region; }
}  // namespace detail

}  // namespace kiln::cpu

namespace kiln {
int num_threads() { return cpu::num_threads(); }
void set_num_threads(int n) { cpu::set_num_threads(n); }
}  // namespace kiln
