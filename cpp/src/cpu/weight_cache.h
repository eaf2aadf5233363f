#pragma once
// Values derived from a variable's contents (a convolution's packed weights, a linear layer's
// transposed weight), kept while the variable is unchanged: its storage's stamp (Storage::stamp)
// is part of the key, and every write renews it. For inference functions, where the weights are
// read on every call and written by none.
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace kiln::cpu {

// The derived values for (addr, stamp, geometry): made by fill(out) into `floats` zeroed floats the
// first time, shared afterwards. Entries of older stamps at the same address are dropped; the
// cache holds at most 512 MB.
std::shared_ptr<const std::vector<float>> derived_weights(const void* addr, uint64_t stamp,
                                                          const std::vector<int64_t>& geometry, size_t floats,
                                                          const std::function<void(float*)>& fill);

}  // namespace kiln::cpu
