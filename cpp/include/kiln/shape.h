#pragma once
// A shape (or a stride list) stored inline: copying one never allocates, which keeps the
// executor allocation-free per call. A dimension of -1 is symbolic (known only at run time).
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kiln/error.h"

namespace kiln {

constexpr int kMaxRank = 8;
constexpr int64_t kUnknownDim = -1;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[i]; }
  int64_t& operator[](int i) { return dims_[i]; }
  const int64_t* begin() const { return dims_; }
  const int64_t* end() const { return dims_ + rank_; }
  void push_back(int64_t d);
  void insert(int pos, int64_t d);
  void erase(int pos);

  bool known() const;     // no symbolic dimension
  int64_t numel() const;  // product of dims; -1 when any is symbolic
  std::vector<int64_t> vec() const { return {begin(), end()}; }
  std::string str() const;  // "(2, None, 3)"
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  int64_t dims_[kMaxRank] = {};
  int rank_ = 0;
};

// Row-major contiguous strides, in elements.
Shape contiguous_strides(const Shape& s);
// Normalises a possibly negative axis for a given rank; throws naming `op` when out of range.
int normalize_axis(int64_t axis, int rank, const char* op);
// numpy broadcasting of two shapes; symbolic dims broadcast against 1 and against themselves.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace kiln
