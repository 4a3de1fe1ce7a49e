// safetensors reader with every size, offset, dtype and shape checked before use (see include/wn/safetensors.hpp).
#include "wn/safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "wn/limits.hpp"

namespace wn {

using json = nlohmann::json;

namespace {

constexpr int kMaxDepth = 4;           // header → tensor entry → shape list (→ nothing deeper)
constexpr size_t kMaxNameBytes = 256;  // tensor names and metadata keys
constexpr size_t kMaxValueBytes = 4096;

std::string base_name(const std::string& p) {
  auto i = p.find_last_of('/');
  return i == std::string::npos ? p : p.substr(i + 1);
}

std::string brief(const json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "a list";
  std::string s = v.dump();
  return s.size() <= 60 ? s : s.substr(0, 60) + "…";
}

std::string printable(const std::string& s) {  // a name from the file, for a message
  std::string out;
  for (char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return s.size() > 64 ? out + "…" : out;
}

bool parse_dtype_tag(const std::string& tag, DType* dtype) {
  static const std::map<std::string, DType> kTags = {{"F32", DType::Float32}, {"F16", DType::Float16},
                                                     {"F64", DType::Float64}, {"I64", DType::Int64},
                                                     {"I32", DType::Int32}};
  auto it = kTags.find(tag);
  if (it == kTags.end()) return false;
  *dtype = it->second;
  return true;
}

// A non-negative JSON integer ≤ hi, or -1 (floats, negatives, beyond int64 included).
int64_t bounded(const json& v, int64_t hi) {
  if (!v.is_number_integer()) return -1;
  if (v.is_number_unsigned()) return v.get<uint64_t>() > static_cast<uint64_t>(hi) ? -1 : static_cast<int64_t>(v.get<uint64_t>());
  const int64_t x = v.get<int64_t>();
  return x < 0 || x > hi ? -1 : x;
}

}  // namespace

void SafetensorsFile::fail(const std::string& what) const {
  throw Error(name_ + " is not a valid native loop plan: " + what);
}

SafetensorsFile::SafetensorsFile(const std::string& path, int64_t max_bytes) : path_(path), name_(base_name(path)) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw Error("cannot read " + name_ + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw Error("cannot read " + name_ + ": " + std::strerror(err));
  }
  try {
    if (!S_ISREG(st.st_mode)) fail("it is not a regular file");
    size_ = static_cast<int64_t>(st.st_size);
    if (size_ > max_bytes)
      fail("it is " + human_bytes(size_) + ", more than the host reads (" + human_bytes(max_bytes) +
           ", wn::limits::kMaxPlanBytes)");
    if (size_ < 8) fail("it has " + std::to_string(size_) + " bytes, fewer than a safetensors header's 8");
    unsigned char head[8];
    read_at(0, head, 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | head[i];
    if (n > static_cast<uint64_t>(limits::kMaxPlanHeaderBytes) || n > static_cast<uint64_t>(size_ - 8))
      fail("its header declares " + std::to_string(n) + " bytes (the file has " + std::to_string(size_ - 8) +
           " after the size, the host reads at most " + human_bytes(limits::kMaxPlanHeaderBytes) + " of header)");
    data_offset_ = 8 + static_cast<int64_t>(n);
    std::string text(static_cast<size_t>(n), '\0');
    read_at(8, text.data(), static_cast<int64_t>(n));

    bool too_deep = false;
    json::parser_callback_t guard = [&](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth) too_deep = true;
      return !too_deep;
    };
    json header;
    try {
      header = json::parse(text, guard);
    } catch (const json::exception& e) {
      std::string what = e.what();
      fail("its header is not JSON (" + (what.size() <= 120 ? what : what.substr(0, 120) + "…") + ")");
    }
    if (too_deep) fail("its header nests deeper than " + std::to_string(kMaxDepth) + " levels");
    if (!header.is_object()) fail("its header is " + brief(header) + ", not an object");
    if (static_cast<int64_t>(header.size()) > limits::kMaxPlanTensors + 1)
      fail("it lists " + std::to_string(header.size()) + " entries, more than " +
           std::to_string(limits::kMaxPlanTensors) + " tensors");

    const int64_t data_bytes = size_ - data_offset_;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& key = it.key();
      const json& v = it.value();
      if (key.size() > kMaxNameBytes) fail("a name is longer than " + std::to_string(kMaxNameBytes) + " bytes");
      if (key == "__metadata__") {
        if (!v.is_object()) fail("__metadata__ is " + brief(v) + ", not an object of strings");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail("__metadata__ '" + printable(m.key()) + "' is " + brief(m.value()) + ", not a string");
          if (m.key().size() > kMaxNameBytes || m.value().get_ref<const std::string&>().size() > kMaxValueBytes)
            fail("__metadata__ '" + printable(m.key()) + "' is too long");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + printable(key) + "'";
      if (!v.is_object()) fail(where + " is " + brief(v) + ", not an object");
      for (auto f = v.begin(); f != v.end(); ++f)
        if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
          fail(where + " has an unknown key '" + printable(f.key()) + "'");
      if (!v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
        fail(where + " lacks dtype, shape or data_offsets");
      SafeTensor t;
      t.name = key;
      const json& dtype = v["dtype"];
      if (!dtype.is_string() || !parse_dtype_tag(dtype.get<std::string>(), &t.dtype))
        fail(where + " has dtype " + brief(dtype) + " (a plan holds F32, F16, F64, I64 or I32)");
      const json& shape = v["shape"];
      if (!shape.is_array() || shape.size() > limits::kMaxRank) fail(where + " has shape " + brief(shape) + " of rank > 8 or not a list");
      int64_t count = 1;
      for (const json& d : shape) {
        const int64_t x = bounded(d, limits::kMaxDim);
        if (x < 0) fail(where + " has a shape dimension " + brief(d) + " outside [0, " + std::to_string(limits::kMaxDim) + "]");
        t.shape.push_back(x);
        if (__builtin_mul_overflow(count, x, &count)) fail(where + "'s shape overflows");
      }
      const json& offsets = v["data_offsets"];
      if (!offsets.is_array() || offsets.size() != 2) fail(where + " has data_offsets " + brief(offsets) + ", not [begin, end]");
      const int64_t begin = bounded(offsets[0], data_bytes), end = bounded(offsets[1], data_bytes);
      if (begin < 0 || end < 0 || end < begin)
        fail(where + " has data_offsets [" + brief(offsets[0]) + ", " + brief(offsets[1]) +
             "] outside the data section's " + std::to_string(data_bytes) + " bytes");
      int64_t bytes = 0;
      if (__builtin_mul_overflow(count, static_cast<int64_t>(dtype_size(t.dtype)), &bytes))
        fail(where + "'s shape " + shape_str(t.shape) + " overflows");
      if (bytes != end - begin)
        fail(where + " has " + std::to_string(end - begin) + " bytes of data but its shape " + shape_str(t.shape) +
             " of " + dtype_name(t.dtype) + " needs " + std::to_string(bytes));
      t.begin = begin;
      t.bytes = bytes;
      tensors_.emplace(key, std::move(t));
    }
    // the ranges tile the data section: sorted by start, each begins where the one before ends
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const auto& [name, t] : tensors_) ranges.emplace_back(t.begin, t.begin + t.bytes);
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second) fail("two tensors' data overlap");
    int64_t at = 0;
    for (const auto& [b, e] : ranges) {
      if (b != at) fail("its data section has a gap at byte " + std::to_string(at));
      at = e;
    }
    if (at != data_bytes)
      fail("its data section has " + std::to_string(data_bytes - at) + " bytes after the last tensor");
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsFile::read_at(int64_t offset, void* dst, int64_t bytes) const {
  auto* p = static_cast<unsigned char*>(dst);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd_, p, static_cast<size_t>(std::min<int64_t>(bytes, int64_t{1} << 30)), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error("cannot read " + name_ + ": " + std::strerror(errno));
    if (n == 0) throw Error(name_ + " became shorter while it was read");
    p += n;
    offset += n;
    bytes -= n;
  }
}

void SafetensorsFile::read(const SafeTensor& t, void* dst) const { read_at(data_offset_ + t.begin, dst, t.bytes); }

}  // namespace wn
