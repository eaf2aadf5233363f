#include "cpu/weight_cache.h"

#include <map>
#include <mutex>
#include <tuple>

namespace kiln::cpu {
namespace {

using Key = std::tuple<uintptr_t, uint64_t, DerivedShape>;

struct Cache {
  static constexpr size_t kMaxBytes = size_t(512) << 20;
  std::mutex mu;
  std::map<Key, Derived> entries;
  size_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: functions may outlive statics
  return *c;
}

}  // namespace

Derived find_derived(const void* addr, uint64_t stamp, const DerivedShape& shape) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.entries.find(Key{reinterpret_cast<uintptr_t>(addr), stamp, shape});
  return it == c.entries.end() ? nullptr : it->second;
}

Derived keep_derived(const void* addr, uint64_t stamp, const DerivedShape& shape, AlignedFloats values) {
  Cache& c = cache();
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  auto made = std::make_shared<const AlignedFloats>(std::move(values));
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.entries.begin(); it != c.entries.end();) {  // older stamps of the same weights
    if (std::get<0>(it->first) != a) {
      ++it;
      continue;
    }
    c.bytes -= it->second->size() * sizeof(float);
    it = c.entries.erase(it);
  }
  if (c.bytes + made->size() * sizeof(float) > Cache::kMaxBytes) {
    c.entries.clear();
    c.bytes = 0;
  }
  c.bytes += made->size() * sizeof(float);
  c.entries.emplace(Key{a, stamp, shape}, made);
  return made;
}

}  // namespace kiln::cpu
