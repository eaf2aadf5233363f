#pragma once
// A concrete n-d array: dtype, shape, strides, device and shared, 64-byte-aligned storage.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "kiln/dtype.h"
#include "kiln/shape.h"

namespace kiln {

enum class Device : uint8_t { cpu, cuda };

// A block of memory on one device. Either kiln allocated it (aligned host memory, or device
// memory from the CUDA backend's stream-ordered pool) or it belongs to someone else (a numpy
// array) and `owner` keeps that someone alive.
class Storage {
 public:
  static constexpr size_t kAlignment = 64;
  explicit Storage(size_t nbytes, Device device = Device::cpu);  // uninitialised
  Storage(void* data, size_t nbytes, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  // How many blocks kiln has allocated in this process: lets tests check that a planned call
  // allocates nothing but its outputs.
  static uint64_t allocations();

  // A stamp unique to this block's current contents, for caches of values derived from a variable
  // (a convolution's packed weights). Only variables' storages are tracked: Tensor::copy_from and
  // the updates of a Function renew it. Whoever writes a variable's memory another way calls touch().
  bool tracked() const { return tracked_; }
  void track() { tracked_ = true; }
  uint64_t stamp() const { return stamp_.load(std::memory_order_acquire); }
  void touch();

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  std::shared_ptr<void> owner_;  // keeps external memory alive
  bool owned_ = true;            // kiln allocated data_ and frees it
  Device device_ = Device::cpu;
  bool tracked_ = false;
  std::atomic<uint64_t> stamp_{0};  // written by one thread's update while another may read it
};

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu);
  // Wraps external memory without copying; `owner` is kept alive as long as the tensor.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner,
                          const Shape* strides = nullptr);
  // A contiguous tensor over (the start of) an existing storage.
  static Tensor from_storage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype);
  template <typename T>
  static Tensor scalar(T value, DType dtype);
  // numpy .npy files (io/npy.cpp; also kiln::load_npy and kiln::save_npy).
  static Tensor from_npy(const std::string& path);
  void to_npy(const std::string& path) const;

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu; }
  int rank() const { return shape_.rank(); }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool defined() const { return storage_ != nullptr; }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }

  // Same storage, another shape with the same number of elements (contiguous tensors only).
  Tensor view(const Shape& shape) const;
  Tensor contiguous() const;  // itself when already contiguous, else a packed copy
  Tensor clone() const;       // on the same device
  // Same dtype and numel, between any devices; strided sources on the host only.
  void copy_from(const Tensor& src);
  Tensor to(Device device) const;  // itself when already there, else a contiguous copy
  double item() const;             // value of a one-element tensor, as double (from any device)

 private:
  DType dtype_ = DType::float32;
  Shape shape_, strides_;
  size_t offset_ = 0;  // bytes
  std::shared_ptr<Storage> storage_;
};

// Writes `value` (a double) into element i of a raw buffer of dtype t.
void store_as(DType t, void* data, int64_t i, double value);
double load_as(DType t, const void* data, int64_t i);

template <typename T>
Tensor Tensor::scalar(T value, DType dtype) {
  Tensor t = empty(Shape{}, dtype);
  store_as(dtype, t.raw(), 0, static_cast<double>(value));
  return t;
}

}  // namespace kiln
