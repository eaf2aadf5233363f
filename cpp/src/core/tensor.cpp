#include "kiln/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "kiln/error.h"
#include "runtime/device.h"

namespace kiln {

namespace {

std::atomic<uint64_t> g_allocations{0};

// Large blocks freed recently, kept for reuse: a function's outputs are fresh every call, and
// handing back the previous call's block skips the page faults (and the kernel zeroing every
// page) of new memory. Bounded, so idle memory stays small.
class BlockCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kMaxCached = size_t(256) << 20;

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = blocks_.lower_bound(bytes);
    if (it == blocks_.end() || it->first > bytes + bytes / 4) return nullptr;  // at most 25% waste
    void* p = it->second;
    cached_ -= it->first;
    capacity_.emplace(p, it->first);
    blocks_.erase(it);
    return p;
  }

  // Returns false when the block is not kept (the caller frees it).
  bool give(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = capacity_.find(p);
    if (it == capacity_.end()) return false;
    size_t bytes = it->second;
    capacity_.erase(it);
    if (cached_ + bytes > kMaxCached) return false;
    blocks_.emplace(bytes, p);
    cached_ += bytes;
    return true;
  }

  void track(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    capacity_.emplace(p, bytes);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> blocks_;  // free blocks by capacity
  std::map<void*, size_t> capacity_;     // live large blocks and their capacity
  size_t cached_ = 0;
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();  // never destroyed: storages may outlive statics
  return *cache;
}

}  // namespace

uint64_t Storage::allocations() { return g_allocations.load(std::memory_order_relaxed); }

namespace {
std::atomic<uint64_t> g_stamps{0};
}  // namespace

void Storage::touch() { stamp_.store(g_stamps.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_release); }

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  touch();
  if (device == Device::cuda) {
    data_ = device::alloc(nbytes);
    return;
  }
  // Large blocks go on 2 MiB boundaries and ask for transparent huge pages, as numpy does:
  // touching fresh memory then costs one page fault per 2 MiB instead of per 4 KiB.
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = nbytes >= 2 * kHuge ? kHuge : kAlignment;
  size_t rounded = (nbytes + align - 1) / align * align;
  if (rounded == 0) rounded = align;
  if (rounded >= BlockCache::kMinBytes && (data_ = block_cache().take(rounded))) return;
  data_ = std::aligned_alloc(align, rounded);
  if (!data_) throw Error("out of memory allocating " + std::to_string(nbytes) + " bytes");
#ifdef MADV_HUGEPAGE
  if (align == kHuge) madvise(data_, rounded, MADV_HUGEPAGE);
#endif
  if (rounded >= BlockCache::kMinBytes) block_cache().track(data_, rounded);
}

Storage::Storage(void* data, size_t nbytes, std::shared_ptr<void> owner)
    : data_(data), nbytes_(nbytes), owner_(std::move(owner)), owned_(false) {
  touch();
}
Storage::~Storage() {
  if (owned_ && device_ == Device::cuda) {
    device::free(data_);
    return;
  }
  if (owned_ && !(nbytes_ >= BlockCache::kMinBytes / 2 && block_cache().give(data_))) std::free(data_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  if (!shape.known()) throw Error("cannot allocate a tensor of symbolic shape " + shape.str());
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape.numel()) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::cuda)
    device::zero(t.raw(), t.nbytes());
  else
    std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner,
                         const Shape* strides) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = strides ? *strides : contiguous_strides(shape);
  t.storage_ = std::make_shared<Storage>(data, 0, std::move(owner));
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.storage_ = std::move(storage);
  return t;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_) || numel() <= 1; }

Tensor Tensor::view(const Shape& shape) const {
  if (shape.numel() != numel()) throw Error("view: cannot view " + shape_.str() + " as " + shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (device() == d) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.dtype_ != dtype_ || src.numel() != numel())
    throw Error("copy: cannot copy " + std::string(dtype_name(src.dtype_)) + src.shape_.str() + " into " +
                dtype_name(dtype_) + shape_.str());
  if (device() == Device::cuda || src.device() == Device::cuda) {
    if (!is_contiguous()) throw Error("copy: a strided destination on the GPU");
    if (!src.is_contiguous() && src.device() == Device::cuda) throw Error("copy: a strided source on the GPU");
    const Tensor packed = src.contiguous();
    if (numel() > 0) device::copy(raw(), device(), packed.raw(), packed.device(), nbytes());
    storage_->touch();
    return;
  }
  storage_->touch();
  size_t es = dtype_size(dtype_);
  if (src.is_contiguous()) {
    if (numel() > 0) std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
  // Strided source: walk it with an odometer over its shape.
  const int r = src.rank();
  int64_t idx[kMaxRank] = {};
  char* dst = static_cast<char*>(raw());
  const char* base = static_cast<const char*>(src.raw());
  for (int64_t n = 0, total = src.numel(); n < total; ++n) {
    int64_t off = 0;
    for (int i = 0; i < r; ++i) off += idx[i] * src.strides_[i];
    std::memcpy(dst + n * es, base + off * static_cast<int64_t>(es), es);
    for (int i = r - 1; i >= 0; --i) {
      if (++idx[i] < src.shape_[i]) break;
      idx[i] = 0;
    }
  }
}

double Tensor::item() const {
  if (numel() != 1) throw Error("item: tensor of shape " + shape_.str() + " is not one element");
  if (device() != Device::cpu) return to(Device::cpu).item();
  return load_as(dtype_, raw(), 0);
}

void store_as(DType t, void* data, int64_t i, double value) {
  KILN_DISPATCH_ALL(t, "store", static_cast<scalar_t*>(data)[i] = static_cast<scalar_t>(value));
}
double load_as(DType t, const void* data, int64_t i) {
  double v = 0;
  KILN_DISPATCH_ALL(t, "load", v = static_cast<double>(static_cast<const scalar_t*>(data)[i]));
  return v;
}

}  // namespace kiln
