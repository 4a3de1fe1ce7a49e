// manifest.json reader and validator (see include/wn/manifest.hpp).
#include "wn/manifest.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

namespace wn {

using json = nlohmann::json;

namespace {

const char* const kFormat = "wn-export/1";

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

// Field accessors with messages that say where the problem is.
struct Ctx {
  std::string where;  // e.g. "/x/manifest.json: graph 'step' input 'token'"
  [[noreturn]] void fail(const std::string& what) const { throw Error(where + ": " + what); }
  const json& get(const json& obj, const char* key) const {
    if (!obj.is_object()) fail("expected a JSON object");
    auto it = obj.find(key);
    if (it == obj.end()) fail(std::string("missing key '") + key + "'");
    return *it;
  }
  std::string str(const json& obj, const char* key) const {
    const json& v = get(obj, key);
    if (!v.is_string()) fail(std::string("'") + key + "' must be a string");
    return v.get<std::string>();
  }
  int64_t integer(const json& obj, const char* key) const {
    const json& v = get(obj, key);
    if (!v.is_number_integer()) fail(std::string("'") + key + "' must be an integer");
    return v.get<int64_t>();
  }
  const json& array(const json& obj, const char* key) const {
    const json& v = get(obj, key);
    if (!v.is_array()) fail(std::string("'") + key + "' must be a list");
    return v;
  }
  Ctx sub(const std::string& more) const { return Ctx{where + " " + more}; }
};

std::vector<Dim> parse_shape(const json& v, const Ctx& ctx) {
  if (!v.is_array()) ctx.fail("'shape' must be a list");
  std::vector<Dim> shape;
  for (const json& d : v) {
    Dim dim;
    if (d.is_number_integer() && d.get<int64_t>() >= 0) {
      dim.value = d.get<int64_t>();
    } else if (d.is_string() && !d.get<std::string>().empty()) {
      dim.symbol = d.get<std::string>();
    } else {
      ctx.fail("shape entries must be non-negative integers or dimension names, got " + d.dump());
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
  TensorInfo info;
  info.name = ctx.str(t, "name");
  ctx = outer.sub("'" + info.name + "'");
  info.role = ctx.str(t, "role");
  info.dtype = parse_dtype_at(ctx.str(t, "dtype"), ctx);
  info.shape = parse_shape(ctx.get(t, "shape"), ctx);
  return info;
}

StateInfo parse_state(const json& s, const Ctx& outer, size_t index) {
  Ctx ctx = outer.sub(std::to_string(index));
  StateInfo st;
  st.input = ctx.str(s, "input");
  st.output = ctx.str(s, "output");
  st.dtype = parse_dtype_at(ctx.str(s, "dtype"), ctx);
  st.shape = parse_shape(ctx.get(s, "shape"), ctx);
  if (s.contains("init")) {
    if (!s["init"].is_number()) ctx.fail("'init' must be a number");
    st.init = s["init"].get<double>();
  }
  std::string update = s.contains("update") ? ctx.str(s, "update") : "replace";
  if (update == "replace") {
    st.update = StateUpdate::Replace;
  } else if (update == "ring") {
    st.update = StateUpdate::Ring;
    st.position = ctx.str(s, "position");
    for (const json& r : ctx.array(s, "rings")) {
      Ring ring{ctx.integer(r, "offset"), ctx.integer(r, "length")};
      if (ring.offset < 0 || ring.length < 1) ctx.fail("ring offsets must be >= 0 and lengths >= 1");
      st.rings.push_back(ring);
    }
  } else {
    ctx.fail("unknown state update '" + update + "' (this host knows: replace, ring)");
  }
  return st;
}

int64_t model_int(const json& model, const char* key, int64_t fallback, const Ctx& ctx) {
  if (!model.contains(key) || model[key].is_null()) return fallback;
  if (!model[key].is_number_integer()) ctx.fail(std::string("model '") + key + "' must be an integer");
  return model[key].get<int64_t>();
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
    if (!d.symbolic()) {
      out.push_back(d.value);
      continue;
    }
    auto it = dims.find(d.symbol);
    if (it != dims.end()) {
      out.push_back(it->second);
      continue;
    }
    // "name-k" / "name+k"
    auto pos = d.symbol.find_last_of("+-");
    bool done = false;
    if (pos != std::string::npos && pos > 0 && pos + 1 < d.symbol.size()) {
      auto base = dims.find(d.symbol.substr(0, pos));
      const std::string num = d.symbol.substr(pos + 1);
      if (base != dims.end() && std::all_of(num.begin(), num.end(), ::isdigit)) {
        int64_t k = std::stoll(num);
        out.push_back(d.symbol[pos] == '-' ? base->second - k : base->second + k);
        done = true;
      }
    }
    if (!done) throw Error("cannot resolve dimension '" + d.symbol + "' of shape " + shape_str(shape));
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
  for (int64_t d : shape) n *= d;
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

const EngineInfo* Manifest::engine_for(const std::string& graph_name) const {
  auto it = engines.find(graph_name);
  if (it != engines.end()) return &it->second;
  for (const auto& [n, e] : engines)
    if (e.graph == graph_name) return &e;
  return nullptr;
}

// ---- reading ----------------------------------------------------------------------------------------
Manifest read_manifest(const std::string& directory, bool verify) {
  if (!is_dir(directory))
    throw Error("export directory " + directory + " does not exist (run `wn-export onnx -o " + directory + "`)");
  Manifest m;
  m.directory = directory;
  m.path = join(directory, "manifest.json");
  if (!is_file(m.path)) throw Error(directory + " has no manifest.json: not a wn-export directory");
  std::ifstream in(m.path, std::ios::binary);
  if (!in) throw Error("cannot read " + m.path + ": " + std::strerror(errno));
  json data;
  try {
    data = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(m.path + " is not valid JSON: " + e.what());
  }
  Ctx ctx{m.path};
  if (!data.is_object() || !data.contains("format") || data["format"] != kFormat) {
    std::string got = data.is_object() && data.contains("format") ? data["format"].dump() : "None";
    throw Error(m.path + ": unsupported manifest format " + got + " (expected '" + kFormat + "')");
  }
  for (const char* key : {"model", "graphs", "receptive_field"})
    if (!data.contains(key)) ctx.fail(std::string("missing key '") + key + "'");

  const json& model = data["model"];
  if (!model.is_object()) ctx.fail("'model' must be an object");
  m.model.quantization_channels =
      model_int(model, "quantization_channels", data.value("quantization_channels", int64_t(256)), ctx);
  m.model.sample_rate = model_int(model, "sample_rate", data.value("sample_rate", int64_t(16000)), ctx);
  m.model.local_channels = model_int(model, "local_channels", 0, ctx);
  m.model.hop_size = model_int(model, "hop_size", 1, ctx);
  m.model.speakers = model_int(model, "speakers", 0, ctx);
  m.model.receptive_field = ctx.integer(data, "receptive_field");

  const json& graphs = data["graphs"];
  if (!graphs.is_object()) ctx.fail("'graphs' must be an object");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    Ctx gctx = ctx.sub("graph '" + it.key() + "'");
    const json& g = it.value();
    if (!g.is_object()) gctx.fail("must be an object");
    for (const char* key : {"file", "kind", "precision", "sha256", "inputs", "outputs"})
      if (!g.contains(key)) ctx.fail("graph '" + it.key() + "' lacks '" + key + "'");
    GraphInfo info;
    info.name = it.key();
    info.file = gctx.str(g, "file");
    info.path = join(directory, info.file);
    info.kind = gctx.str(g, "kind");
    info.precision = gctx.str(g, "precision");
    info.sha256 = gctx.str(g, "sha256");
    if (g.contains("layout") && g["layout"].is_string()) info.layout = g["layout"].get<std::string>();
    size_t i = 0;
    for (const json& t : gctx.array(g, "inputs")) info.inputs.push_back(parse_tensor(t, gctx.sub("input"), i++));
    i = 0;
    for (const json& t : gctx.array(g, "outputs")) info.outputs.push_back(parse_tensor(t, gctx.sub("output"), i++));
    if (g.contains("state")) {
      i = 0;
      for (const json& s : gctx.array(g, "state")) info.state.push_back(parse_state(s, gctx.sub("state"), i++));
    }
    if (!is_file(info.path)) ctx.fail("graph '" + info.name + "' file " + info.file + " is missing");
    if (verify && sha256_file(info.path) != info.sha256)
      throw Error(base_name(info.path) +
                  " does not match the manifest's sha256: the graph was modified or replaced after export; "
                  "re-export the directory");
    m.graphs.emplace(info.name, std::move(info));
  }

  if (data.contains("engines") && data["engines"].is_object()) {
    for (auto it = data["engines"].begin(); it != data["engines"].end(); ++it) {
      const json& e = it.value();
      if (!e.is_object()) continue;
      EngineInfo info;
      info.name = it.key();
      for (const char* key : {"file", "engine", "path"})
        if (info.file.empty() && e.contains(key) && e[key].is_string()) info.file = e[key].get<std::string>();
      if (info.file.empty()) continue;
      info.path = join(directory, info.file);
      if (e.contains("sha256") && e["sha256"].is_string()) info.sha256 = e["sha256"].get<std::string>();
      if (e.contains("graph") && e["graph"].is_string()) {
        info.graph = e["graph"].get<std::string>();
      } else if (e.contains("onnx") && e["onnx"].is_string()) {  // match the ONNX file it was built from
        std::string onnx = base_name(e["onnx"].get<std::string>());
        for (const auto& [n, g] : m.graphs)
          if (g.file == onnx) info.graph = n;
      }
      m.engines.emplace(info.name, std::move(info));
    }
  }
  return m;
}

}  // namespace wn
