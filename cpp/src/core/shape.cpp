#include "kiln/shape.h"

namespace kiln {

Shape::Shape(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims) push_back(d);
}
Shape::Shape(const std::vector<int64_t>& dims) {
  for (int64_t d : dims) push_back(d);
}

void Shape::push_back(int64_t d) {
  if (rank_ == kMaxRank) throw Error("kiln supports tensors of rank at most " + std::to_string(kMaxRank));
  dims_[rank_++] = d;
}
void Shape::insert(int pos, int64_t d) {
  push_back(0);
  for (int i = rank_ - 1; i > pos; --i) dims_[i] = dims_[i - 1];
  dims_[pos] = d;
}
void Shape::erase(int pos) {
  for (int i = pos; i + 1 < rank_; ++i) dims_[i] = dims_[i + 1];
  --rank_;
}

bool Shape::known() const {
  for (int64_t d : *this)
    if (d < 0) return false;
  return true;
}
int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : *this) {
    if (d < 0) return kUnknownDim;
    n *= d;
  }
  return n;
}
std::string Shape::str() const {
  std::string s = "(";
  for (int i = 0; i < rank_; ++i) {
    if (i) s += ", ";
    s += dims_[i] < 0 ? "None" : std::to_string(dims_[i]);
  }
  if (rank_ == 1) s += ",";
  return s + ")";
}
bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (dims_[i] != o.dims_[i]) return false;
  return true;
}

Shape contiguous_strides(const Shape& s) {
  Shape st = s;
  int64_t acc = 1;
  for (int i = s.rank() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i] < 0 ? 1 : s[i];
  }
  return st;
}

int normalize_axis(int64_t axis, int rank, const char* op) {
  if (axis < -rank || axis >= rank || (rank == 0 && axis != 0 && axis != -1))
    throw Error(std::string(op) + ": axis " + std::to_string(axis) + " is out of range for a tensor of rank " +
                std::to_string(rank));
  return static_cast<int>(axis < 0 ? axis + rank : axis);
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  int r = a.rank() > b.rank() ? a.rank() : b.rank();
  Shape out;
  for (int i = 0; i < r; ++i) {
    int ia = i - (r - a.rank()), ib = i - (r - b.rank());
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    int64_t d;
    if (da == db)
      d = da;
    else if (da == 1)
      d = db;
    else if (db == 1)
      d = da;
    else if (da < 0)
      d = db;  // symbolic against a fixed size: the size must match at run time
    else if (db < 0)
      d = da;
    else
      throw Error(std::string(op) + ": shapes " + a.str() + " and " + b.str() +
                  " cannot be broadcast together (dimension " + std::to_string(i) + ": " + std::to_string(da) + " vs " +
                  std::to_string(db) + ")");
    out.push_back(d);
  }
  return out;
}

}  // namespace kiln
