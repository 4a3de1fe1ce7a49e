// manifest.json reader and validator (see include/wn/manifest.hpp).
#include "wn/manifest.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "wn/files.hpp"
#include "wn/limits.hpp"

namespace wn {

using json = nlohmann::json;

namespace {

const char* const kFormat = "wn-export/1";
const char* const kNativeFormat = "wn-native-loop/1";  // native_plan.hpp reads files of this format

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string base_name(const std::string& p) {
  auto i = p.find_last_of('/');
  return i == std::string::npos ? p : p.substr(i + 1);
}

std::string join(const std::string& dir, const std::string& file) {
  if (!file.empty() && file[0] == '/') return file;
  if (dir.empty() || dir.back() == '/') return dir + file;
  return dir + "/" + file;
}

// A JSON value for a message: scalars as written (bounded), containers by their type.
std::string brief(const json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "a list";
  std::string s = v.dump();
  return s.size() <= 80 ? s : s.substr(0, 80) + "…";
}

// Field accessors with messages that say where the problem is.
struct Ctx {
  std::string where;  // e.g. "/x/manifest.json: graph 'step' input 'token'"
  [[noreturn]] void fail(const std::string& what) const { throw Error(where + ": " + what); }
  const json& get(const json& obj, const char* key) const {
    if (!obj.is_object()) fail("expected an object, got " + brief(obj));
    auto it = obj.find(key);
    if (it == obj.end()) fail(std::string("missing key '") + key + "'");
    return *it;
  }
  std::string str(const json& obj, const char* key) const {
    const json& v = get(obj, key);
    if (!v.is_string()) fail(std::string("'") + key + "' must be a string, got " + brief(v));
    std::string s = v.get<std::string>();
    if (s.empty()) fail(std::string("'") + key + "' is empty");
    if (s.size() > 4096) fail(std::string("'") + key + "' is longer than 4096 characters");
    return s;
  }
  // An integer in [lo, hi] (JSON integers beyond int64 included: they are out of range, not wrapped).
  int64_t int_value(const json& v, const std::string& key, int64_t lo, int64_t hi) const {
    if (v.is_number_float() && std::fabs(v.get<double>()) >= 0x1p63 && std::isfinite(v.get<double>()))
      fail("'" + key + "' = " + brief(v) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    if (!v.is_number_integer()) fail("'" + key + "' must be an integer, got " + brief(v));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
      fail("'" + key + "' = " + brief(v) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi)
      fail("'" + key + "' = " + std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " +
           std::to_string(hi) + "]");
    return x;
  }
  int64_t integer(const json& obj, const char* key, int64_t lo, int64_t hi) const {
    return int_value(get(obj, key), key, lo, hi);
  }
  const json& array(const json& obj, const char* key) const {
    const json& v = get(obj, key);
    if (!v.is_array()) fail(std::string("'") + key + "' must be a list, got " + brief(v));
    return v;
  }
  Ctx sub(const std::string& more) const { return Ctx{where + " " + more}; }
};

// A dimension name: a lowercase identifier, optionally "+k" / "-k" (k < 10^9).
bool valid_symbol(const std::string& s) {
  auto lower = [](char c) { return (c >= 'a' && c <= 'z') || c == '_'; };
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (s.empty() || !lower(s[0])) return false;
  size_t i = 0;
  while (i < s.size() && (lower(s[i]) || digit(s[i]))) ++i;
  if (i == s.size()) return s.size() <= 64;
  if ((s[i] != '+' && s[i] != '-') || i > 64) return false;
  const size_t digits = s.size() - i - 1;
  return digits >= 1 && digits <= 9 && std::all_of(s.begin() + static_cast<long>(i) + 1, s.end(), digit);
}

std::vector<Dim> parse_shape(const json& v, const Ctx& ctx) {
  if (!v.is_array()) ctx.fail("'shape' must be a list, got " + brief(v));
  if (v.size() > limits::kMaxRank)
    ctx.fail("'shape' has rank " + std::to_string(v.size()) + ", more than " + std::to_string(limits::kMaxRank));
  std::vector<Dim> shape;
  for (const json& d : v) {
    Dim dim;
    if (d.is_number_integer()) {
      dim.value = ctx.int_value(d, "shape entry", 1, limits::kMaxDim);
    } else if (d.is_string() && valid_symbol(d.get<std::string>())) {
      dim.symbol = d.get<std::string>();
    } else {
      ctx.fail("shape entries must be integers >= 1 or dimension names (like batch, time-1), got " + brief(d));
    }
    shape.push_back(dim);
  }
  return shape;
}

DType parse_dtype_at(const std::string& s, const Ctx& ctx) {
  try {
    return parse_dtype(s);
  } catch (const Error& e) {
    ctx.fail(e.what());
  }
}

TensorInfo parse_tensor(const json& t, const Ctx& outer, size_t index) {
  Ctx ctx = outer.sub(std::to_string(index));
  if (!t.is_object()) ctx.fail("must be an object, got " + brief(t));
  TensorInfo info;
  info.name = ctx.str(t, "name");
  ctx = outer.sub("'" + info.name + "'");
  info.role = ctx.str(t, "role");
  info.dtype = parse_dtype_at(ctx.str(t, "dtype"), ctx);
  info.shape = parse_shape(ctx.get(t, "shape"), ctx);
  return info;
}

// The initial value of a state must be finite and representable in the state's dtype.
double parse_init(const json& v, DType dtype, const Ctx& ctx) {
  if (!v.is_number()) ctx.fail("'init' must be a number, got " + brief(v));
  const double x = v.get<double>();
  double bound = 65504.0;  // float16 max
  if (dtype == DType::Float32) bound = 3.4028234663852886e38;
  if (dtype == DType::Float64) bound = 1.7976931348623157e308;
  if (dtype == DType::Int32) bound = 2147483647.0;
  if (dtype == DType::Int64) bound = 9.2e18;
  if (!std::isfinite(x) || std::fabs(x) > bound)
    ctx.fail("'init' = " + brief(v) + " is not a finite " + dtype_name(dtype) + " value");
  return x;
}

StateInfo parse_state(const json& s, const Ctx& outer, size_t index) {
  Ctx ctx = outer.sub(std::to_string(index));
  if (!s.is_object()) ctx.fail("must be an object, got " + brief(s));
  StateInfo st;
  st.input = ctx.str(s, "input");
  st.output = ctx.str(s, "output");
  st.dtype = parse_dtype_at(ctx.str(s, "dtype"), ctx);
  st.shape = parse_shape(ctx.get(s, "shape"), ctx);
  if (s.contains("init")) st.init = parse_init(s["init"], st.dtype, ctx);
  std::string update = s.contains("update") ? ctx.str(s, "update") : "replace";
  if (update == "replace") {
    st.update = StateUpdate::Replace;
  } else if (update == "ring") {
    st.update = StateUpdate::Ring;
    st.position = ctx.str(s, "position");
    const json& rings = ctx.array(s, "rings");
    if (rings.empty()) ctx.fail("'rings' is empty");
    if (static_cast<int64_t>(rings.size()) > limits::kMaxDim) ctx.fail("'rings' is too long");
    for (const json& r : rings) {
      if (!r.is_object()) ctx.fail("'rings' entries must be objects {offset, length}, got " + brief(r));
      Ring ring{ctx.integer(r, "offset", 0, limits::kMaxDim - 1), ctx.integer(r, "length", 1, limits::kMaxDim)};
      st.rings.push_back(ring);
    }
  } else {
    ctx.fail("unknown state update '" + update + "' (this host knows: replace, ring)");
  }
  return st;
}

int64_t model_int(const json& model, const char* key, int64_t fallback, int64_t lo, int64_t hi, const Ctx& ctx) {
  if (!model.contains(key) || model[key].is_null()) return fallback;
  return ctx.sub("model").int_value(model[key], key, lo, hi);
}

// manifest.json, bounded in size and nesting, parsed.
json parse_manifest_file(const std::string& path) {
  const std::vector<unsigned char> text = read_file(path, limits::kMaxManifestBytes);
  bool too_deep = false;
  json::parser_callback_t depth_guard = [&](int depth, json::parse_event_t, json&) {
    if (depth > limits::kMaxJsonDepth) too_deep = true;
    return !too_deep;  // discard everything once too deep: nothing deep is ever built
  };
  json data;
  try {
    data = json::parse(text.begin(), text.end(), depth_guard);
  } catch (const json::exception& e) {
    std::string what = e.what();
    throw Error(path + " is not valid JSON: " + (what.size() <= 200 ? what : what.substr(0, 200) + "…"));
  }
  if (too_deep)
    throw Error(path + " nests deeper than " + std::to_string(limits::kMaxJsonDepth) + " levels: not a wn-export manifest");
  return data;
}

}  // namespace

// ---- dtypes and shapes --------------------------------------------------------------------------------
DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::Float32;
  if (name == "float16") return DType::Float16;
  if (name == "float64") return DType::Float64;
  if (name == "int64") return DType::Int64;
  if (name == "int32") return DType::Int32;
  throw Error("unsupported dtype '" + name + "' (this host knows float32, float16, float64, int64, int32)");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
    case DType::Int32: return "int32";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float16: return 2;
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float64: case DType::Int64: return 8;
  }
  return 0;
}

std::vector<int64_t> resolve(const std::vector<Dim>& shape, const DimValues& dims) {
  std::vector<int64_t> out;
  for (const Dim& d : shape) {
    int64_t v = -1;
    bool known = true;
    if (!d.symbolic()) {
      v = d.value;
    } else if (auto it = dims.find(d.symbol); it != dims.end()) {
      v = it->second;
    } else {  // "name-k" / "name+k"
      known = false;
      auto pos = d.symbol.find_last_of("+-");
      if (pos != std::string::npos && pos > 0 && pos + 1 < d.symbol.size() && d.symbol.size() - pos - 1 <= 9) {
        auto base = dims.find(d.symbol.substr(0, pos));
        const std::string num = d.symbol.substr(pos + 1);
        if (base != dims.end() && std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; })) {
          const int64_t k = std::stoll(num);  // at most 9 digits
          v = checked_add(base->second, d.symbol[pos] == '-' ? -k : k, "dimension '" + d.symbol + "'");
          known = true;
        }
      }
      if (!known)
        throw Error("cannot resolve dimension '" + d.symbol + "' of shape " + shape_str(shape));
    }
    if (v < 0)
      throw Error("dimension " + (d.symbolic() ? "'" + d.symbol + "'" : std::to_string(d.value)) + " of shape " +
                  shape_str(shape) + " is negative (" + std::to_string(v) + ")");
    out.push_back(v);
  }
  return out;
}

std::string shape_str(const std::vector<Dim>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + (shape[i].symbolic() ? shape[i].symbol : std::to_string(shape[i].value));
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n = checked_mul(n, d, "the element count of shape " + shape_str(shape));
  return n;
}

// ---- graphs ---------------------------------------------------------------------------------------
const TensorInfo* GraphInfo::input(const std::string& role) const {
  for (const auto& t : inputs)
    if (t.role == role) return &t;
  return nullptr;
}

const TensorInfo* GraphInfo::output(const std::string& role) const {
  for (const auto& t : outputs)
    if (t.role == role) return &t;
  return nullptr;
}

const TensorInfo* GraphInfo::find(const std::string& name) const {
  for (const auto& t : inputs)
    if (t.name == name) return &t;
  for (const auto& t : outputs)
    if (t.name == name) return &t;
  return nullptr;
}

const GraphInfo& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it != graphs.end()) return it->second;
  std::string have;
  for (const auto& [n, g] : graphs) have += (have.empty() ? "" : ", ") + n;
  throw Error(directory + " has no '" + name + "' graph (it has: " + have + "); export it with `wn-export onnx" +
              (name.find("fp16") != std::string::npos ? " --fp16" : "") + "`");
}

const NativeInfo* Manifest::native_for(const std::string& graph_name) const {
  auto it = native.find(graph_name);
  return it == native.end() ? nullptr : &it->second;
}

const EngineInfo* Manifest::engine_for(const std::string& graph_name) const {
  auto it = engines.find(graph_name);
  if (it != engines.end()) return &it->second;
  for (const auto& [n, e] : engines)
    if (e.graph == graph_name) return &e;
  return nullptr;
}

// ---- reading ----------------------------------------------------------------------------------------
namespace {

GraphInfo parse_graph(const std::string& name, const json& g, const std::string& directory, bool verify,
                      const Ctx& ctx) {
  Ctx gctx = ctx.sub("graph '" + name + "'");
  if (name.empty() || name.size() > 256) ctx.fail("graph names must have 1 to 256 characters");
  if (!g.is_object()) gctx.fail("must be an object, got " + brief(g));
  for (const char* key : {"file", "kind", "precision", "sha256", "inputs", "outputs"})
    if (!g.contains(key)) ctx.fail("graph '" + name + "' lacks '" + key + "'");
  GraphInfo info;
  info.name = name;
  info.file = gctx.str(g, "file");
  info.path = confined_path(directory, info.file, gctx.where + " file");
  info.kind = gctx.str(g, "kind");
  info.precision = gctx.str(g, "precision");
  info.sha256 = gctx.str(g, "sha256");
  if (g.contains("layout") && !g["layout"].is_null()) info.layout = gctx.str(g, "layout");
  size_t i = 0;
  for (const json& t : gctx.array(g, "inputs")) info.inputs.push_back(parse_tensor(t, gctx.sub("input"), i++));
  i = 0;
  for (const json& t : gctx.array(g, "outputs")) info.outputs.push_back(parse_tensor(t, gctx.sub("output"), i++));
  if (g.contains("state") && !g["state"].is_null()) {
    i = 0;
    for (const json& s : gctx.array(g, "state")) info.state.push_back(parse_state(s, gctx.sub("state"), i++));
  }
  if (!is_file(info.path)) ctx.fail("graph '" + info.name + "' file " + info.file + " is missing");
  if (verify && sha256_file(info.path) != info.sha256)
    throw Error(base_name(info.path) +
                " does not match the manifest's sha256: the graph was modified or replaced after export; "
                "re-export the directory");
  return info;
}

EngineInfo parse_engine(const std::string& name, const json& e, const Manifest& m, const Ctx& ctx) {
  Ctx ectx = ctx.sub("engine '" + name + "'");
  if (!e.is_object()) ectx.fail("must be an object, got " + brief(e));
  EngineInfo info;
  info.name = name;
  for (const char* key : {"file", "engine", "path"}) {
    if (e.contains(key)) {
      info.file = ectx.str(e, key);
      break;
    }
  }
  if (info.file.empty()) ectx.fail("has no 'file'");
  info.path = confined_path(m.directory, info.file, ectx.where + " file");
  if (e.contains("sha256") && !e["sha256"].is_null()) info.sha256 = ectx.str(e, "sha256");
  if (e.contains("graph") && !e["graph"].is_null()) {
    info.graph = ectx.str(e, "graph");
  } else if (e.contains("onnx") && !e["onnx"].is_null()) {  // match the ONNX file it was built from
    std::string onnx = base_name(ectx.str(e, "onnx"));
    for (const auto& [n, g] : m.graphs)
      if (g.file == onnx) info.graph = n;
  }
  return info;
}

// A "native_loops" entry: the plan of a ring-layout step graph of this manifest, in a file confined to the
// directory (its contents are read and checked by read_native_plan when a host runs it).
NativeInfo parse_native(const std::string& name, const json& e, const Manifest& m, bool verify, const Ctx& ctx) {
  Ctx nctx = ctx.sub("native loop plan '" + name + "'");
  if (!e.is_object()) nctx.fail("must be an object, got " + brief(e));
  NativeInfo info;
  info.graph = nctx.str(e, "graph");
  if (info.graph != name) nctx.fail("names graph '" + info.graph + "': the entry of a graph's plan is keyed by the graph");
  auto g = m.graphs.find(name);
  if (g == m.graphs.end()) nctx.fail("is the plan of a graph the manifest does not have");
  if (g->second.kind != "step" || g->second.layout != "ring")
    nctx.fail("graph '" + name + "' is not a step graph with the ring state layout");
  info.format = nctx.str(e, "format");
  if (info.format != kNativeFormat)
    nctx.fail("unsupported plan format '" + info.format + "' (this host reads '" + kNativeFormat + "')");
  info.file = nctx.str(e, "file");
  info.path = confined_path(m.directory, info.file, nctx.where + " file");
  info.sha256 = nctx.str(e, "sha256");
  info.graph_sha256 = nctx.str(e, "graph_sha256");
  if (!is_file(info.path)) nctx.fail("file " + info.file + " is missing");
  const int64_t size = file_size(info.path);  // before hashing: a sparse file of terabytes would take hours
  if (size > limits::kMaxPlanBytes)
    nctx.fail("file " + info.file + ": it is " + human_bytes(size) + ", more than the host reads (" +
              human_bytes(limits::kMaxPlanBytes) + ", wn::limits::kMaxPlanBytes)");
  if (verify && sha256_file(info.path) != info.sha256)
    throw Error(base_name(info.path) +
                " does not match the manifest's sha256: the plan was modified or replaced after export; re-export "
                "the directory");
  if (verify && info.graph_sha256 != g->second.sha256)
    throw Error(base_name(info.path) + " was derived from another " + g->second.file +
                " than the manifest's; re-export the directory");
  return info;
}

}  // namespace

Manifest read_manifest(const std::string& directory, bool verify) {
  if (!is_dir(directory))
    throw Error("export directory " + directory + " does not exist (run `wn-export onnx -o " + directory + "`)");
  Manifest m;
  m.directory = directory;
  m.path = join(directory, "manifest.json");
  if (!is_file(m.path)) throw Error(directory + " has no manifest.json: not a wn-export directory");
  const json data = parse_manifest_file(m.path);
  Ctx ctx{m.path};
  if (!data.is_object() || !data.contains("format") || data["format"] != kFormat) {
    std::string got = data.is_object() && data.contains("format") ? brief(data["format"]) : "None";
    throw Error(m.path + ": unsupported manifest format " + got + " (expected '" + kFormat + "')");
  }
  for (const char* key : {"model", "graphs", "receptive_field"})
    if (!data.contains(key)) ctx.fail(std::string("missing key '") + key + "'");

  const json& model = data["model"];
  if (!model.is_object()) ctx.fail("'model' must be an object, got " + brief(model));
  auto top = [&](const char* key, int64_t fallback, int64_t lo, int64_t hi) {
    return data.contains(key) && !data[key].is_null() ? ctx.integer(data, key, lo, hi) : fallback;
  };
  m.model.quantization_channels = model_int(model, "quantization_channels",
                                            top("quantization_channels", 256, 2, limits::kMaxClasses), 2,
                                            limits::kMaxClasses, ctx);
  m.model.sample_rate = model_int(model, "sample_rate", top("sample_rate", 16000, 1, limits::kMaxSampleRate), 1,
                                  limits::kMaxSampleRate, ctx);
  m.model.local_channels = model_int(model, "local_channels", 0, 0, limits::kMaxDim, ctx);
  m.model.hop_size = model_int(model, "hop_size", 1, 1, limits::kMaxDim, ctx);
  m.model.speakers = model_int(model, "speakers", 0, 0, limits::kMaxDim, ctx);
  m.model.receptive_field = ctx.integer(data, "receptive_field", 1, limits::kMaxDim);

  const json& graphs = data["graphs"];
  if (!graphs.is_object()) ctx.fail("'graphs' must be an object, got " + brief(graphs));
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    GraphInfo g = parse_graph(it.key(), it.value(), directory, verify, ctx);
    const TensorInfo* logits = g.output("logits");  // (…, Q): the classes every host samples or scores
    if (logits && !logits->shape.empty() && !logits->shape.back().symbolic() &&
        logits->shape.back().value != m.model.quantization_channels)
      ctx.fail("graph '" + g.name + "' has " + std::to_string(logits->shape.back().value) +
               " logits per sample but quantization_channels is " + std::to_string(m.model.quantization_channels));
    m.graphs.emplace(g.name, std::move(g));
  }

  if (data.contains("engines") && !data["engines"].is_null()) {
    const json& engines = data["engines"];
    if (!engines.is_object()) ctx.fail("'engines' must be an object, got " + brief(engines));
    for (auto it = engines.begin(); it != engines.end(); ++it)
      m.engines.emplace(it.key(), parse_engine(it.key(), it.value(), m, ctx));
  }

  if (data.contains("native_loops") && !data["native_loops"].is_null()) {
    const json& loops = data["native_loops"];
    if (!loops.is_object()) ctx.fail("'native_loops' must be an object, got " + brief(loops));
    for (auto it = loops.begin(); it != loops.end(); ++it)
      m.native.emplace(it.key(), parse_native(it.key(), it.value(), m, verify, ctx));
  }
  return m;
}

}  // namespace wn
