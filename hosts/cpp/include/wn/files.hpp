// File safety: manifest paths confined to the export directory, bounded reads, and outputs that are
// written under a temporary name and renamed into place (never over an input of the run).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "wn/limits.hpp"

namespace wn {

// DIR/FILE for a manifest `file` entry. Refuses (wn::Error naming `what`) an empty or absolute path, a
// `..` component, control characters, and a path that resolves (symlinks followed) outside DIR. A file
// that does not exist is returned as is: the caller reports it missing when it needs it.
std::string confined_path(const std::string& directory, const std::string& file, const std::string& what);

// The whole file, refused before anything is allocated when it is larger than `max_bytes` (also for
// files that do not report a size, e.g. /dev/zero: the read stops at the limit).
std::vector<unsigned char> read_file(const std::string& path, int64_t max_bytes = limits::kMaxInputBytes);

// Size of a regular file, or -1 (missing, not a regular file: a reader then finds out).
int64_t file_size(const std::string& path);

// Check planned outputs before any is created: each one's directory exists, it is not a directory, not
// inside `export_dir` (the run's input), not one of `inputs` (same file, through links too), and no two
// outputs are the same. wn::Error otherwise.
void check_outputs(const std::vector<std::string>& outputs, const std::vector<std::string>& inputs,
                   const std::string& export_dir);

// An output file written under a temporary name in its own directory (".NAME.XXXXXX.tmp") and renamed
// over NAME by commit(). Until then NAME is untouched; the destructor (error paths) and SIGINT, SIGTERM,
// SIGHUP, SIGPIPE, SIGXFSZ remove the temporary file. A SIGKILL leaves the temporary file, never a
// partial NAME.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t bytes);                 // append
  void write_at(const void* data, size_t bytes, int64_t offset);
  void close();   // close the descriptor; the file keeps its temporary name
  void commit();  // close(), then rename the temporary file over the output path
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_; }

 private:
  void discard() noexcept;
  std::string path_, temp_;
  int fd_ = -1;
  void* node_ = nullptr;  // registration for the signal handler
  bool committed_ = false;
};

// Write a whole file through an OutputFile (temporary name, then rename).
void write_file(const std::string& path, const void* data, size_t bytes);

}  // namespace wn
