// Small command-line helpers shared by wn_generate and wn_score: option parsing, number parsing,
// one-line errors (exit 1) and usage errors (exit 2).
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "wn/backend.hpp"
#include "wn/limits.hpp"
#include "wn/manifest.hpp"

namespace cli {

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// Options: "--name value", "--name=value", "-x value"; flags take no value; the rest are positional.
class Args {
 public:
  Args(int argc, char** argv, std::map<std::string, std::string> aliases, std::set<std::string> flags)
      : aliases_(std::move(aliases)), flags_(std::move(flags)) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.size() < 2 || a[0] != '-' || a == "--") {
        positional.push_back(a);
        continue;
      }
      std::string value;
      bool has_value = false;
      if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_value = true;
      }
      if (auto it = aliases_.find(a); it != aliases_.end()) a = it->second;
      if (!known(a)) throw Usage("unknown option " + a);
      if (flags_.count(a)) {
        if (has_value) throw Usage(a + " takes no value");
        values_[a] = "1";
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) throw Usage(a + " needs a value");
        value = argv[++i];
      }
      values_[a] = value;
    }
  }

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  int64_t integer(const std::string& name, int64_t fallback, int64_t minimum,
                  int64_t maximum = std::numeric_limits<int64_t>::max()) const {
    if (!has(name)) return fallback;
    int64_t v = parse_int(get(name), name);
    if (v < minimum) throw Usage(name + " must be >= " + std::to_string(minimum) + " (got " + get(name) + ")");
    if (v > maximum) throw Usage(name + " must be <= " + std::to_string(maximum) + " (got " + get(name) + ")");
    return v;
  }
  double number(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const std::string s = get(name);
    char* end = nullptr;
    double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end) throw Usage(name + " needs a number (got '" + s + "')");
    return v;
  }
  static int64_t parse_int(const std::string& s, const std::string& what) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end || errno) throw Usage(what + " needs an integer (got '" + s + "')");
    return v;
  }

  std::vector<std::string> positional;

 private:
  bool known(const std::string& a) const {
    if (flags_.count(a)) return true;
    for (const auto& [k, v] : aliases_)
      if (v == a) return true;
    return false;
  }
  std::map<std::string, std::string> aliases_;  // every option: alias → canonical (canonical → itself)
  std::set<std::string> flags_;
  std::map<std::string, std::string> values_;
};

// Every float finite: a NaN or inf in conditioning would silently give wrong samples.
inline void check_finite(const float* data, size_t count, const std::string& what) {
  for (size_t i = 0; i < count; ++i)
    if (!std::isfinite(data[i]))
      throw wn::Error(what + " holds a non-finite value (" + std::to_string(data[i]) + ") at element " + std::to_string(i));
}

// "2" or "2,0,1" → ids; one id is repeated for every stream.
inline std::vector<int64_t> speakers(const std::string& spec, int64_t batch, int64_t count) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (true) {
    size_t comma = spec.find(',', start);
    ids.push_back(Args::parse_int(spec.substr(start, comma - start), "--speaker"));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (ids.size() == 1) ids.assign(static_cast<size_t>(batch), ids[0]);
  if (ids.size() != static_cast<size_t>(batch))
    throw Usage("--speaker lists " + std::to_string(ids.size()) + " ids for " + std::to_string(batch) + " streams");
  for (int64_t id : ids)
    if (id < 0 || id >= count)
      throw wn::Error("speaker " + std::to_string(id) + " is out of range: this model has " + std::to_string(count) +
                      " speakers (0.." + std::to_string(count - 1) + ")");
  return ids;
}

// The backend named by --backend (onnxruntime | tensorrt) with its options (--threads; --engine,
// --no-verify, --device, --cuda-graph).
inline std::unique_ptr<wn::Backend> backend(const Args& args, const wn::Manifest& manifest) {
  const std::string name = args.get("--backend", "onnxruntime");
  if (name == "onnxruntime" || name == "ort")
    return wn::make_ort_backend({static_cast<int>(args.integer("--threads", 0, 0, wn::limits::kMaxThreads))});
  if (name == "tensorrt" || name == "trt") {
    wn::TrtOptions t;
    t.manifest = &manifest;
    t.engine = args.get("--engine");
    t.verify = !args.has("--no-verify");
    t.device = static_cast<int>(args.integer("--device", 0, 0, wn::limits::kMaxDevice));
    t.cuda_graph = args.has("--cuda-graph");
    return wn::make_trt_backend(t);
  }
  throw Usage("--backend must be onnxruntime or tensorrt (got '" + name + "')");
}

// Run `body`; wn::Error and other exceptions become one line on stderr and exit 1, usage errors exit 2.
inline int guarded(const char* program, const char* usage, const std::function<int()>& body) {
  try {
    return body();
  } catch (const Usage& e) {
    std::fprintf(stderr, "%s: usage error: %s (see %s --help)\n", program, one_line(e.what()).c_str(), program);
    (void)usage;
    return 2;
  } catch (const wn::Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, one_line(e.what()).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: error: out of memory\n", program);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, one_line(e.what()).c_str());
    return 1;
  }
}

}  // namespace cli
