// A bounded, checked reader of safetensors files: an 8-byte little-endian header size N, N bytes of JSON
//   {NAME: {"dtype": "F32", "shape": [d0, …], "data_offsets": [begin, end]}, …, "__metadata__": {KEY: "VALUE"}}
// and then the data section, which the tensors' [begin, end) ranges tile exactly, in any order.
//
// The constructor opens the file (a regular file, at most `max_bytes`; a FIFO or device is refused without
// blocking) and reads and checks only the header: its size against the file and limits::kMaxPlanHeaderBytes,
// its JSON (types, nesting), every dtype, every shape (rank ≤ 8, dimensions ≤ limits::kMaxDim) and every range
// (inside the data section, not overlapping, no gap, and exactly the bytes its shape and dtype need, computed
// without overflow). Only then can read() copy a tensor's bytes. Every problem is one wn::Error naming the file.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "wn/manifest.hpp"

namespace wn {

struct SafeTensor {
  std::string name;
  DType dtype = DType::Float32;  // F32, F16, F64, I64, I32 (others are refused)
  std::vector<int64_t> shape;
  int64_t begin = 0, bytes = 0;  // its range within the data section
};

class SafetensorsFile {
 public:
  SafetensorsFile(const std::string& path, int64_t max_bytes);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, SafeTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Copy tensor `t`'s t.bytes bytes into dst (a wn::Error if the file changed size under us).
  void read(const SafeTensor& t, void* dst) const;
  const std::string& name() const { return name_; }  // the file's name, for messages

 private:
  void read_at(int64_t offset, void* dst, int64_t bytes) const;
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_, name_;
  int fd_ = -1;
  int64_t size_ = 0, data_offset_ = 0;
  std::map<std::string, SafeTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace wn
