#pragma once
// Values derived from a variable's contents (a convolution's packed weights, a linear layer's
// transposed weight), kept while the variable is unchanged: its storage's stamp (Storage::stamp)
// is part of the key, and every write renews it. For inference functions, where the weights are
// read on every call and written by none.
#include <array>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "cpu/aligned.h"

namespace kiln::cpu {

using Derived = std::shared_ptr<const AlignedFloats>;
using DerivedShape = std::array<int64_t, 4>;  // the derivation's geometry, part of the key

// The entry for (addr, stamp, shape), or null.
Derived find_derived(const void* addr, uint64_t stamp, const DerivedShape& shape);
// Keeps `values` for (addr, stamp, shape), dropping entries of older stamps at the same address;
// the cache holds at most 512 MB.
Derived keep_derived(const void* addr, uint64_t stamp, const DerivedShape& shape, AlignedFloats values);

// The derived values for (addr, stamp, shape): made by fill(out) into `floats` zeroed floats the
// first time, shared afterwards. A hit costs one locked map lookup, nothing allocated.
template <class Fill>
Derived derived_weights(const void* addr, uint64_t stamp, const DerivedShape& shape, size_t floats, Fill&& fill) {
  if (Derived hit = find_derived(addr, stamp, shape)) return hit;
  AlignedFloats values(floats, 0.f);
  fill(values.data());  // outside the lock: it may run on the thread pool
  return keep_derived(addr, stamp, shape, std::move(values));
}

// Weights in a kernel's packed form: a variable's (stamp != 0, an inference call) from the cache, kept
// alive by `keep` while the kernel runs; any others made by fill(out) into `scratch`, which must write
// all `floats` of it (a training step packs on every call: zeroing first cost 10 us a 64-channel layer).
template <class Fill>
const float* packed_weights(const void* addr, uint64_t stamp, const DerivedShape& shape, size_t floats, float* scratch,
                            Derived& keep, Fill&& fill) {
  if (stamp) {
    keep = derived_weights(addr, stamp, shape, floats, fill);
    return keep->data();
  }
  fill(scratch);
  return scratch;
}

}  // namespace kiln::cpu
