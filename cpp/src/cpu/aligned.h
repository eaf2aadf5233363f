#pragma once
// Float buffers on cache-line boundaries, like a Storage's (kiln/tensor.h). The kernels' vector loads
// and stores are unaligned ones, but a 64-byte vector at a 16-byte boundary spans two lines: operator
// new's alignment cost ResNet-8's Winograd layers 12 - 16% of their time in row-tiled groups.
#include <cstddef>
#include <new>
#include <vector>

namespace kiln::cpu {

template <class T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const CacheLineAllocator<U>&) const {
    return false;
  }
};

using AlignedFloats = std::vector<float, CacheLineAllocator<float>>;

}  // namespace kiln::cpu
