// Confined manifest paths, bounded reads, and outputs written to a temporary name then renamed
// (see include/wn/files.hpp).
#include "wn/files.hpp"

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wn/manifest.hpp"

namespace wn {

// ---- limits helpers -----------------------------------------------------------------------------------
std::string human_bytes(int64_t bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 6) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw Error(what + " overflows (" + std::to_string(a) + " x " + std::to_string(b) + ")");
  return r;
}

int64_t checked_add(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r))
    throw Error(what + " overflows (" + std::to_string(a) + " + " + std::to_string(b) + ")");
  return r;
}

namespace {

std::string real_path(const std::string& p) {  // "" when it cannot be resolved (errno set)
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return "";
  std::string s = r;
  std::free(r);
  return s;
}

bool inside(const std::string& path, const std::string& dir) {  // both real paths
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

std::string dir_name(const std::string& p) {
  auto i = p.find_last_of('/');
  if (i == std::string::npos) return ".";
  return i == 0 ? "/" : p.substr(0, i);
}

std::string base_name(const std::string& p) {
  auto i = p.find_last_of('/');
  return i == std::string::npos ? p : p.substr(i + 1);
}

std::string shown(const std::string& s) {  // a path as it appears in a message: bounded
  return s.size() <= 200 ? s : s.substr(0, 200) + "…";
}

}  // namespace

// ---- manifest paths -----------------------------------------------------------------------------------
std::string confined_path(const std::string& directory, const std::string& file, const std::string& what) {
  if (file.empty()) throw Error(what + " is an empty path");
  for (unsigned char c : file)
    if (c < 0x20 || c == 0x7f) throw Error(what + " '" + shown(file) + "' contains a control character");
  if (file[0] == '/')
    throw Error(what + " '" + shown(file) + "' is an absolute path; manifest files must lie in the export directory");
  size_t start = 0;
  while (start <= file.size()) {
    size_t slash = file.find('/', start);
    if (slash == std::string::npos) slash = file.size();
    if (file.compare(start, slash - start, "..") == 0 && slash - start == 2)
      throw Error(what + " '" + shown(file) + "' has a '..' component; manifest files must lie in the export directory");
    start = slash + 1;
  }
  const std::string path = (directory.empty() || directory.back() == '/') ? directory + file : directory + "/" + file;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return path;  // missing: reported by whoever needs the file
  const std::string real = real_path(path);
  const std::string real_dir = real_path(directory);
  if (real.empty()) {
    if (S_ISLNK(st.st_mode)) return path;  // a dangling link: reported missing
    throw Error(what + " '" + shown(file) + "' cannot be resolved: " + std::strerror(errno));
  }
  if (real_dir.empty() || !inside(real, real_dir) || real == real_dir)
    throw Error(what + " '" + shown(file) + "' resolves outside the export directory (to " + shown(real) + ")");
  return path;
}

// ---- bounded reads ------------------------------------------------------------------------------------
std::vector<unsigned char> read_file(const std::string& path, int64_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error("cannot read " + shown(path) + ": " + std::strerror(errno));
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  struct stat st {};
  if (::fstat(::fileno(f), &st) != 0) throw Error("cannot read " + shown(path) + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw Error("cannot read " + shown(path) + ": it is a directory");
  auto too_big = [&](const std::string& size) {
    return Error(shown(path) + " is " + size + ", more than the host reads (" + human_bytes(max_bytes) +
                 ", wn::limits in hosts/cpp/include/wn/limits.hpp)");
  };
  std::vector<unsigned char> data;
  if (S_ISREG(st.st_mode)) {
    if (st.st_size > max_bytes) throw too_big(human_bytes(st.st_size));
    data.reserve(static_cast<size_t>(st.st_size));
  }
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (static_cast<int64_t>(data.size() + n) > max_bytes) throw too_big("larger than that");
    data.insert(data.end(), buf, buf + n);
  }
  if (std::ferror(f)) throw Error("cannot read " + shown(path) + ": " + std::strerror(errno));
  return data;
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  return static_cast<int64_t>(st.st_size);
}

// ---- outputs: checks ------------------------------------------------------------------------------------
namespace {
struct Identity {
  dev_t dev = 0;
  ino_t ino = 0;
  bool exists = false;
  bool operator==(const Identity& o) const { return exists && o.exists && dev == o.dev && ino == o.ino; }
};

Identity identity(const std::string& path) {  // follows links
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {st.st_dev, st.st_ino, true};
}
}  // namespace

void check_outputs(const std::vector<std::string>& outputs, const std::vector<std::string>& inputs,
                   const std::string& export_dir) {
  const std::string real_export = real_path(export_dir);
  std::vector<Identity> input_ids;
  for (const std::string& in : inputs) input_ids.push_back(identity(in));
  std::vector<std::string> seen;
  for (const std::string& out : outputs) {
    const std::string name = base_name(out);
    if (name.empty() || name == "." || name == "..")
      throw Error("output " + shown(out) + " does not name a file");
    const std::string dir = dir_name(out);
    const std::string real_dir = real_path(dir);
    if (real_dir.empty()) throw Error("cannot write " + shown(out) + ": directory " + shown(dir) + ": " + std::strerror(errno));
    struct stat st {};
    if (::stat(real_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      throw Error("cannot write " + shown(out) + ": " + shown(dir) + " is not a directory");
    if (::lstat(out.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
      throw Error("cannot write " + shown(out) + ": it is a directory");
    if (::stat(out.c_str(), &st) == 0 && !S_ISREG(st.st_mode))  // a device, FIFO or socket (or a link to one)
      throw Error("refusing to write " + shown(out) + ": it is not a regular file (the output is renamed into "
                  "place, which would replace it); write to a file");
    if (!real_export.empty() && inside(real_dir, real_export))
      throw Error("refusing to write " + shown(out) + " inside the export directory " + shown(export_dir) +
                  " (it is this run's input); write it elsewhere");
    const Identity id = identity(out);
    for (size_t i = 0; i < inputs.size(); ++i)
      if (id == input_ids[i])
        throw Error("refusing to write " + shown(out) + ": it is " + shown(inputs[i]) + ", an input of this run");
    const std::string entry = real_dir + "/" + name;
    for (const std::string& s : seen)
      if (s == entry) throw Error("two outputs of this run are the same file " + shown(out));
    seen.push_back(entry);
  }
}

// ---- outputs: temporary files, removed on error and on signals -----------------------------------------
namespace {
struct TempNode {  // prepend-only list read by the signal handler; nodes stay reachable until exit
  char* path = nullptr;
  std::atomic<bool> live{true};
  TempNode* next = nullptr;
};
std::atomic<TempNode*> g_temps{nullptr};

extern "C" void remove_temps_and_reraise(int sig) {
  for (TempNode* n = g_temps.load(); n; n = n->next)
    if (n->live.load()) ::unlink(n->path);  // async-signal-safe
  ::raise(sig);  // SA_RESETHAND: the default action, once this handler returns
}

void install_signal_handlers() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGXFSZ, SIGQUIT}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;  // e.g. nohup
    struct sigaction sa {};
    sa.sa_handler = remove_temps_and_reraise;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    ::sigaction(sig, &sa, nullptr);
  }
}

TempNode* register_temp(const std::string& path) {
  auto* node = new TempNode;
  node->path = ::strdup(path.c_str());
  if (!node->path) {
    delete node;
    throw std::bad_alloc();
  }
  node->next = g_temps.load();
  g_temps.store(node);
  return node;
}
}  // namespace

OutputFile::OutputFile(const std::string& path) : path_(path) {
  install_signal_handlers();
  const std::string dir = dir_name(path);
  std::string name = base_name(path);
  if (name.size() > 200) name.resize(200);  // the temporary name must stay within NAME_MAX
  static unsigned counter = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    char suffix[48];
    std::snprintf(suffix, sizeof suffix, ".%ld.%u.tmp", static_cast<long>(::getpid()), counter++);
    const std::string temp = (path.find('/') == std::string::npos ? "" : dir + (dir == "/" ? "" : "/")) + "." + name + suffix;
    // signals blocked while the file is created and registered: the handler never misses it, and never
    // removes a file that is not ours
    sigset_t all, old;
    sigfillset(&all);
    ::sigprocmask(SIG_BLOCK, &all, &old);
    fd_ = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    const int err = errno;
    if (fd_ >= 0) {
      try {
        node_ = register_temp(temp);
      } catch (...) {
        ::close(fd_);
        ::unlink(temp.c_str());
        fd_ = -1;
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
        throw;
      }
      temp_ = temp;
    }
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    if (fd_ >= 0) return;
    if (err != EEXIST) throw Error("cannot write " + shown(path) + ": " + std::strerror(err));
  }
  throw Error("cannot write " + shown(path) + ": no free temporary name");
}

OutputFile::~OutputFile() {
  if (!committed_) discard();
}

void OutputFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_.empty()) ::unlink(temp_.c_str());
  if (node_) static_cast<TempNode*>(node_)->live.store(false);
}

void OutputFile::write(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (bytes) {
    ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("cannot write " + shown(path_) + ": " + std::strerror(n < 0 ? errno : ENOSPC));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void OutputFile::write_at(const void* data, size_t bytes, int64_t offset) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (bytes) {
    ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("cannot write " + shown(path_) + ": " + std::strerror(n < 0 ? errno : ENOSPC));
    p += n;
    offset += n;
    bytes -= static_cast<size_t>(n);
  }
}

void OutputFile::close() {
  if (fd_ < 0) return;
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw Error("cannot write " + shown(path_) + ": " + std::strerror(errno));
}

void OutputFile::commit() {
  if (committed_) return;
  close();
  if (::rename(temp_.c_str(), path_.c_str()) != 0)
    throw Error("cannot write " + shown(path_) + ": " + std::strerror(errno));
  committed_ = true;
  static_cast<TempNode*>(node_)->live.store(false);
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  OutputFile f(path);
  f.write(data, bytes);
  f.commit();
}

}  // namespace wn
