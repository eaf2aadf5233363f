#include "cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

#include "kiln/error.h"

namespace kiln::cpu {
namespace {

#ifdef __linux__
// The CPU this thread runs on, or -1.
int current_cpu() { return sched_getcpu(); }

// Moves the calling thread off `cpu`: allowed everywhere but there, then everywhere again (the kernel
// migrates it at once, and leaves it where it landed). No-op where it may run on no other CPU.
// (sched_{get,set}affinity of 0 act on the calling thread; bionic has no pthread_setaffinity_np.)
void leave_cpu(int cpu) {
  cpu_set_t all;
  if (sched_getaffinity(0, sizeof all, &all) != 0 || !CPU_ISSET(cpu, &all) || CPU_COUNT(&all) < 2) return;
  cpu_set_t others = all;
  CPU_CLR(cpu, &others);
  if (sched_setaffinity(0, sizeof others, &others) == 0) sched_setaffinity(0, sizeof all, &all);
}

// The CPUs the calling thread may run on (its affinity mask), or 0 where unknown.
int allowed_cpus() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
}
#else
int current_cpu() { return -1; }
void leave_cpu(int) {}
int allowed_cpus() { return 0; }
#endif

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
    spread_ = n <= allowed_cpus();  // with more threads than CPUs, threads share CPUs by design
    // A worker counts regions from the one posted at its creation, not at its first instruction (a
    // region posted before the thread runs must not be missed).
    const uint64_t start = generation_.load();
    claimed_ = std::make_unique<Claim[]>(n);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, start] { loop(i, start); });
  }

  void run(int64_t n, int64_t grain, detail::RangeFn call, void* fn) {
    std::lock_guard<std::mutex> serial(run_mutex_);  // one parallel region at a time
    int chunks = static_cast<int>(std::min<int64_t>(size(), n / grain));
    uint64_t region;
    {
      std::lock_guard<std::mutex> lk(mu_);
      call_ = call;
      fn_ = fn;
      n_ = n;
      chunks_ = chunks;
      pending_.store(chunks, std::memory_order_relaxed);
      region = generation_.load(std::memory_order_relaxed) + 1;
      poster_cpu_ = current_cpu();
      generation_.store(region, std::memory_order_release);
    }
    cv_.notify_all();
    run_chunks(0, region, chunks);
    // Workers usually finish within microseconds: spin before sleeping.
    spin_while([&] { return pending_.load(std::memory_order_acquire) > 0; });
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
  // Threads spin this long for the next region or chunk before they block. Back-to-back small
  // kernels then pay no futex wake-up each, and, on the virtual machine measured here, a worker
  // that had blocked for a 50 ms pause ran the next 30 calls of a small model at one thread's
  // speed (its virtual CPU, idle, is slow to get its core back): with 0.5 ms of spinning the
  // two-layer net at batch 32 took 84-104 us a call after such a pause, with 10 ms 62-75 us.
  // Intel's OpenMP spins 200 ms by default.
  static constexpr auto kSpinTime = std::chrono::milliseconds(10);
  // The first part of it with pause, the rest yielding the CPU between checks: a thread of another
  // library (numpy's BLAS, say) gets the core at once, and the CPU stays busy for the host all the same.
  static constexpr auto kPauseTime = std::chrono::milliseconds(1);

  template <class Busy>
  static void spin_while(Busy busy) {
    const auto start = std::chrono::steady_clock::now();
    while (busy()) {
      const auto spun = std::chrono::steady_clock::now() - start;
      if (spun > kSpinTime) return;
      if (spun > kPauseTime) {
        std::this_thread::yield();
        continue;
      }
      for (int i = 0; i < 256 && busy(); ++i) {  // the clock every few microseconds
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
    }
  }

  // Chunk i is thread i's, so that a thread's part of the data stays in its cache from call to call
  // (claimed by whichever thread came first, the two-layer net at batch 32 ran at one thread's speed
  // in a new process: 100 us a call, against 54). A thread that has run its own chunk takes those no
  // one has started: a worker that starts late (its core taken by another process, or its virtual
  // CPU descheduled by the host) leaves its chunk to the others instead of holding the region up.
  // claimed_[c] holds the last region whose chunk c was taken: regions count up, so it needs no reset.
  bool claim(int c, uint64_t region) {
    uint64_t seen = claimed_[c].region.load(std::memory_order_relaxed);
    return seen < region && claimed_[c].region.compare_exchange_strong(seen, region, std::memory_order_acq_rel);
  }

  // A throwing body must neither terminate a worker nor leave the region half-waited: the first
  // error is kept and rethrown by run() once all chunks are done.
  void run_chunks(int self, uint64_t region, int chunks) {
    if (self >= chunks) return;  // a region of fewer chunks than threads: the others' caches stay theirs
    for (int i = 0; i < chunks; ++i) {
      const int c = (self + i) % chunks;  // its own first, then the next ones
      if (!claim(c, region)) continue;
      int64_t b = n_ * c / chunks, e = n_ * (c + 1) / chunks;
      {
        RegionFlag in_region;
        try {
          call_(fn_, b, e);
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu_);
          if (!error_) error_ = std::current_exception();
        }
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);  // pairs with the waiter's predicate check
        done_cv_.notify_one();
      }
    }
  }

  void loop(int self, uint64_t seen) {
    for (;;) {
      spin_while([&] { return generation_.load(std::memory_order_acquire) == seen && !stopping_flag_.load(); });
      int chunks, poster;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_.load(std::memory_order_acquire) != seen; });
        if (stopping_) return;
        seen = generation_.load(std::memory_order_acquire);
        chunks = chunks_;  // the region's, read under the lock that run() writes it under
        poster = poster_cpu_;
      }
      // Woken onto the CPU of the thread that posted the region, a worker would take turns with it
      // there rather than work beside it: the kernel may place a wakee beside its waker, and spread
      // them only milliseconds later. Seen here after every pause of 50 ms, in one call in three
      // (the two-layer net at batch 32: 100 us a call, one thread's time, against 62).
      if (spread_ && poster >= 0 && current_cpu() == poster) leave_cpu(poster);
      run_chunks(self, seen, chunks);
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

  // Each thread's hot words on cache lines of their own: where the host places the two virtual
  // CPUs far apart, a line moving between them costs about 200 ns.
  static constexpr size_t kLine = 64;
  struct alignas(kLine) Claim {
    std::atomic<uint64_t> region{0};  // the last region whose chunk this is that was taken
  };

  std::vector<std::thread> workers_;
  alignas(kLine) std::mutex run_mutex_;  // taken by the posting thread only
  alignas(kLine) std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  bool stopping_ = false;
  std::exception_ptr error_;  // guarded by mu_
  // A region: written by the poster under mu_, then published by generation_, all on one line.
  alignas(kLine) std::atomic<uint64_t> generation_{0};
  detail::RangeFn call_ = nullptr;
  void* fn_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  int poster_cpu_ = -1;                         // guarded by mu_: the CPU run() was called on
  alignas(kLine) std::atomic<int> pending_{0};  // chunks of the region not yet finished
  alignas(kLine) std::atomic<bool> stopping_flag_{false};
  std::atomic<int> size_{1};
  bool spread_ = false;               // no more threads than CPUs: a worker keeps off the poster's CPU
  std::unique_ptr<Claim[]> claimed_;  // a flag a chunk
};

int default_threads() {
  if (const char* env = std::getenv("KILN_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  // The CPUs the first thread to call into kiln may run on (normally the process's: taskset, a
  // container's cpuset), not all the machine has; the workers inherit that thread's mask.
  if (int allowed = allowed_cpus(); allowed > 0) return allowed;
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) {
  // From inside a chunk it would wait for its own region to end.
  if (detail::in_parallel_region()) throw Error("set_num_threads: called inside a parallel region");
  pool().resize_now(std::max(1, n));
}

namespace detail {
void run_parallel(int64_t n, int64_t grain, RangeFn call, void* fn) { pool().run(n, grain, call, fn); }
bool in_parallel_region() { return t_in_region; }
}  // namespace detail

}  // namespace kiln::cpu

namespace kiln {
int num_threads() { return cpu::num_threads(); }
void set_num_threads(int n) { cpu::set_num_threads(n); }
}  // namespace kiln
