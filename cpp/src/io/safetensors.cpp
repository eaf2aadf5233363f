#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>

#include "kiln/error.h"

namespace kiln::io {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeader = uint64_t(100) << 20;  // 100 MiB of JSON: far above any real graph
constexpr size_t kDataAlignment = 64;

const std::pair<DType, const char*> kDtypes[] = {
    {DType::float64, "F64"}, {DType::float32, "F32"}, {DType::float16, "F16"}, {DType::bfloat16, "BF16"},
    {DType::int64, "I64"},   {DType::int32, "I32"},   {DType::uint8, "U8"},    {DType::bool_, "BOOL"}};

const char* st_name(DType t) {
  for (auto& [d, n] : kDtypes)
    if (d == t) return n;
  throw Error(std::string("safetensors: no dtype name for ") + dtype_name(t));
}

bool st_dtype(const std::string& name, DType* out) {
  for (auto& [d, n] : kDtypes)
    if (name == n) return *out = d, true;
  return false;
}

// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

bool read_at(int fd, void* buf, size_t n, size_t offset) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<size_t>(got);
  }
  return true;
}

}  // namespace

void write_safetensors(const std::string& path, const std::map<std::string, std::string>& metadata,
                       const std::vector<std::pair<std::string, Tensor>>& tensors) {
  // Largest elements first: with the data on a 64-byte boundary every offset is then a multiple
  // of its tensor's element size.
  std::vector<std::pair<std::string, Tensor>> order;
  for (const auto& [name, t] : tensors) order.emplace_back(name, t.contiguous());
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second.dtype()) > dtype_size(b.second.dtype());
  });
  json header = json::object();
  header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& [name, t] : order) {
    if (name == "__metadata__" || header.contains(name)) throw Error("save: two tensors named '" + name + "'");
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    header[name] = {{"dtype", st_name(t.dtype())}, {"shape", shape}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  text.append((kDataAlignment - (8 + text.size()) % kDataAlignment) % kDataAlignment, ' ');

  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("save: cannot write '" + tmp + "': " + std::strerror(errno));
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : order)
      out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error("save: writing '" + path + "' failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("save: cannot replace '" + path + "': " + std::strerror(errno));
  }
}

std::string printable(const std::string& text, size_t limit) {
  std::string out;
  for (unsigned char ch : text.substr(0, limit)) {
    if (ch >= 0x20 && ch < 0x7f) {
      out += static_cast<char>(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    }
  }
  return text.size() > limit ? out + "..." : out;
}

namespace {
Safetensors read_checked(const std::string& path);
}  // namespace

Safetensors read_safetensors(const std::string& path) {
  try {
    return read_checked(path);
  } catch (const nlohmann::json::exception& e) {  // a value of the wrong type, or not UTF-8
    throw Error(path + ": " + printable(e.what()));
  }
}

namespace {
Safetensors read_checked(const std::string& path) {
  auto fail = [&](const std::string& what) { return Error(path + ": " + what); };
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) throw fail("not a regular file");
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8)
    throw fail("truncated: " + std::to_string(size) + " bytes, but a .kiln file starts with an 8-byte header length");
  unsigned char len[8];
  if (!read_at(f.fd, len, 8, 0)) throw fail("cannot read the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  if (n > kMaxHeader)
    throw fail("header length " + std::to_string(n) + " is implausible (over 100 MiB): not a .kiln file, or damaged");
  if (n > size - 8)
    throw fail("truncated: the header length says " + std::to_string(n) + " bytes of header, the file has " +
               std::to_string(size - 8) + " after it");
  std::string text(n, '\0');
  if (!read_at(f.fd, text.data(), n, 8)) throw fail("cannot read the header");
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw fail("the header is not valid JSON: " + printable(e.what()));
  }
  if (!header.is_object()) throw fail("the header is not a JSON object");

  Safetensors out;
  out.file_bytes = size;
  const size_t data_start = 8 + n, data_size = size - data_start;
  struct Entry {
    size_t begin, end;
    std::string name;
    DType dtype;
    Shape shape;
  };
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) throw fail("__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) throw fail("__metadata__['" + mk + "'] is not a string");
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail("tensor '" + key + "': " + what); };
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      throw bad("needs dtype, shape and data_offsets");
    Entry e{0, 0, key, DType::float32, Shape{}};
    if (!value["dtype"].is_string() || !st_dtype(value["dtype"].get<std::string>(), &e.dtype))
      throw bad("unknown dtype " + value["dtype"].dump() + " (kiln reads F64, F32, F16, BF16, I64, I32, U8, BOOL)");
    const json& shape = value["shape"];
    if (!shape.is_array() || shape.size() > static_cast<size_t>(kMaxRank))
      throw bad("shape must be a list of at most " + std::to_string(kMaxRank) + " sizes");
    uint64_t numel = 1;
    for (const json& d : shape) {
      if (!d.is_number_unsigned()) throw bad("shape " + shape.dump() + " holds a size that is not a natural number");
      const uint64_t v = d.get<uint64_t>();
      if (v > data_size || (v && numel > data_size / v))  // more elements than the file has bytes
        throw bad("shape " + shape.dump() + " is larger than the file's data");
      numel *= v;
      e.shape.push_back(static_cast<int64_t>(v));
    }
    const json& off = value["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad("data_offsets must be [begin, end]");
    e.begin = off[0].get<uint64_t>() > data_size ? data_size + 1 : off[0].get<size_t>();
    e.end = off[1].get<uint64_t>() > data_size ? data_size + 1 : off[1].get<size_t>();
    if (e.begin > e.end || e.end > data_size)
      throw bad("data_offsets " + off.dump() + " fall outside the data (" + std::to_string(data_size) +
                " bytes): the file is truncated or damaged");
    if (e.end - e.begin != numel * dtype_size(e.dtype))
      throw bad("data_offsets " + off.dump() + " hold " + std::to_string(e.end - e.begin) + " bytes, shape " +
                shape.dump() + " of " + value["dtype"].get<std::string>() + " needs " +
                std::to_string(numel * dtype_size(e.dtype)));
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  for (size_t i = 1; i < entries.size(); ++i)
    if (entries[i].begin < entries[i - 1].end && entries[i].begin < entries[i].end)
      throw fail("tensors '" + entries[i - 1].name + "' and '" + entries[i].name + "' overlap");

  // One read of the whole data into memory kiln owns; the tensors are views of it. Not a memory
  // map: a mapped file truncated or rewritten in place (cp over it) would crash the process
  // (SIGBUS) or change the loaded weights under a running model. Reading costs a few ms per
  // 45 MB from the page cache.
  auto data = std::make_shared<Storage>(std::max<size_t>(data_size, 1));
  if (data_size && !read_at(f.fd, data->data(), data_size, data_start)) throw fail("cannot read the tensor data");
  for (const Entry& e : entries)
    out.tensors[e.name] = Tensor::from_blob(static_cast<char*>(data->data()) + e.begin, e.shape, e.dtype, data);
  return out;
}
}  // namespace

}  // namespace kiln::io
