// numpy's .npy format: a magic string, a version, a header length, a Python-literal header
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } and the raw C-order data.
#include <cstring>
#include <fstream>
#include <regex>

#include "kiln/error.h"
#include "kiln/io.h"

namespace kiln {
namespace {

const std::pair<DType, const char*> kDescr[] = {
    {DType::float32, "<f4"}, {DType::float64, "<f8"}, {DType::float16, "<f2"}, {DType::int32, "<i4"},
    {DType::int64, "<i8"},   {DType::uint8, "|u1"},   {DType::bool_, "|b1"}};

}  // namespace

Tensor load_npy(const std::string& path) {
  auto fail = [&](const std::string& what) { return Error(path + ": " + what); };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fail(std::string("cannot open: ") + std::strerror(errno));
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw fail("not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t hlen = 0;
  unsigned char len[4] = {0, 0, 0, 0};
  if (!in.read(reinterpret_cast<char*>(len), major == 1 ? 2 : 4)) throw fail("truncated header");
  for (int i = 3; i >= 0; --i) hlen = (hlen << 8) | len[i];
  if (major < 1 || major > 3 || hlen > (1u << 20)) throw fail("unsupported .npy version or header");
  std::string header(hlen, '\0');
  if (!in.read(header.data(), hlen)) throw fail("truncated header");
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']*)'"))) throw fail("header has no descr");
  const std::string descr = m[1];
  DType dtype{};
  bool known = false;
  for (auto& [d, s] : kDescr)
    if (descr == s) dtype = d, known = true;
  if (!known) throw fail("dtype '" + descr + "' is not one kiln reads (little-endian float, int32/64, uint8, bool)");
  if (std::regex_search(header, std::regex("'fortran_order':\\s*True")))
    throw fail("Fortran-order arrays are not supported: save with np.ascontiguousarray");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) throw fail("header has no shape");
  Shape shape;
  const std::string dims = m[1];
  const std::regex number("\\d+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it) {
    if (shape.rank() == kMaxRank) throw fail("more than 8 dimensions");
    shape.push_back(std::stoll(it->str()));
  }
  const std::streampos data_at = in.tellg();
  in.seekg(0, std::ios::end);
  const auto available = static_cast<uint64_t>(in.tellg() - data_at);
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d && numel > available / static_cast<uint64_t>(d))
      throw fail("shape " + shape.str() + " is larger than the file");
    numel *= static_cast<uint64_t>(d);
  }
  const uint64_t bytes = numel * dtype_size(dtype);
  if (bytes > available) throw fail("truncated: shape " + shape.str() + " needs " + std::to_string(bytes) + " bytes");
  Tensor t = Tensor::empty(shape, dtype);
  in.seekg(data_at);
  if (bytes && !in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(bytes))) throw fail("cannot read");
  return t;
}

void save_npy(const std::string& path, const Tensor& tensor) {
  const Tensor t = tensor.contiguous();
  const char* descr = nullptr;
  for (auto& [d, s] : kDescr)
    if (d == t.dtype()) descr = s;
  if (!descr) throw Error(std::string("save_npy: dtype ") + dtype_name(t.dtype()) + " has no .npy equivalent");
  std::string shape;
  for (int64_t d : t.shape()) shape += std::to_string(d) + ", ";
  if (t.rank() > 1) shape.erase(shape.size() - 2);  // (2, 3): no trailing comma
  if (t.rank() == 1) shape.pop_back();              // (3,): keeps it
  std::string header = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // 10 + header + '\n' is a multiple of 64
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot write: " + std::strerror(errno));
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  const char len[2] = {static_cast<char>(hlen & 0xff), static_cast<char>(hlen >> 8)};
  out.write(len, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  if (!out) throw Error(path + ": writing failed");
}

Tensor Tensor::from_npy(const std::string& path) { return load_npy(path); }
void Tensor::to_npy(const std::string& path) const { save_npy(path, *this); }

}  // namespace kiln
