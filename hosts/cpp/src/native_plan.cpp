// The native loop's plan file, read and checked against the manifest (see include/wn/native_plan.hpp).
#include "wn/native_plan.hpp"

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <set>

#include "wn/limits.hpp"
#include "wn/safetensors.hpp"

namespace wn {

namespace {

constexpr int64_t kPanel = 16;  // packed-panel width (plugins/ort/kernels.h kPanel)
const char* const kFormat = "wn-native-loop/1";

struct Expect {
  std::string name;
  std::vector<DType> dtypes;  // accepted
  std::vector<int64_t> shape;
  bool required = true;
};

int64_t panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

[[noreturn]] void invalid(const std::string& file, const std::string& what) {
  throw Error(file + " is not a valid native loop plan: " + what);
}

bool finite(const PlanArray& a) {
  const int64_t n = element_count(a.shape);
  switch (a.dtype) {
    case DType::Float32:
      for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(a.as<float>()[i])) return false;
      return true;
    case DType::Float64:
      for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(a.as<double>()[i])) return false;
      return true;
    case DType::Float16:
      for (int64_t i = 0; i < n; ++i)
        if ((a.as<uint16_t>()[i] & 0x7c00u) == 0x7c00u) return false;  // exponent all ones: inf or NaN
      return true;
    default:
      return true;
  }
}

}  // namespace

const PlanArray* NativePlan::find(const std::string& name) const {
  auto it = arrays.find(name);
  return it == arrays.end() ? nullptr : &it->second;
}

const PlanArray& NativePlan::at(const std::string& name) const {
  const PlanArray* a = find(name);
  if (!a) throw Error(file + " has no tensor '" + name + "'");
  return *a;
}

int64_t NativePlan::weight_bytes() const {
  int64_t n = 0;
  for (const char* k : {"w_gate", "w_out", "w_skip", "head_w1", "head_w2", "w_cond"})
    if (const PlanArray* a = find(k)) n += static_cast<int64_t>(a->data.bytes());
  return n;
}

NativePlan read_native_plan(const NativeInfo& info, const GraphInfo& graph, const ModelInfo& model) {
  SafetensorsFile st(info.path, limits::kMaxPlanBytes);
  NativePlan p;
  p.file = st.name();
  auto fail = [&p](const std::string& what) { invalid(p.file, what); };

  // ---- metadata: format, origin, weights, dimensions
  const auto& meta = st.metadata();
  auto field = [&](const char* key) -> std::string {
    auto it = meta.find(key);
    if (it == meta.end()) invalid(p.file, std::string("its metadata lacks '") + key + "'");
    return it->second;
  };
  if (field("format") != kFormat) fail("its format is not '" + std::string(kFormat) + "'");
  if (field("graph") != info.graph) fail("it was derived from another graph than '" + info.graph + "'");
  if (field("graph_sha256") != graph.sha256)
    fail("it was derived from another " + graph.file + " than the manifest's (re-export the directory)");
  p.weights = field("weights");
  if (p.weights != "fp32" && p.weights != "w16") fail("its weights are neither fp32 nor w16");
  auto dim = [&](const char* key, int64_t lo) -> int64_t {
    const std::string s = field(key);
    if (s.empty() || s.size() > 10 || s.find_first_not_of("0123456789") != std::string::npos)
      fail(std::string("its dimension ") + key + " is not a decimal integer");
    const int64_t v = std::stoll(s);
    if (v < lo || v > limits::kMaxDim)
      invalid(p.file, std::string("its dimension ") + key + " = " + s + " is outside [" + std::to_string(lo) + ", " +
           std::to_string(limits::kMaxDim) + "]");
    return v;
  };
  p.R = dim("R", 1), p.G = dim("G", 1), p.L = dim("L", 1), p.P = dim("P", 1), p.S = dim("S", 1), p.H = dim("H", 1);
  p.Q = dim("Q", 2), p.tokens = dim("tokens", 1), p.kernel = dim("kernel", 2), p.cond_channels = dim("cond_channels", 0);
  p.state_rows = dim("state_rows", 1);
  const std::string what = p.file + " dimensions";
  if (checked_mul(p.kernel - 1, p.R, what) != p.P) fail("P is not (kernel - 1) * R");
  const int64_t G2 = checked_mul(2, p.G, what), LG2 = checked_mul(p.L, G2, what), LR = checked_mul(p.L, p.R, what);
  const int64_t PR = checked_add(p.P, p.R, what);

  // ---- the dimensions against the manifest's graph
  const StepPlan step = plan_step(graph, 1);
  if (step.rings.size() != 1 || !step.swaps.empty()) fail("graph '" + graph.name + "' has no single ring state");
  const StepRing& ring = step.rings[0];
  const StepBuffer& state = step.buffer(ring.state);
  if (state.dtype != DType::Float32 || state.shape.size() != 3) fail("the graph's state is not float32 (batch, rows, channels)");
  if (p.Q != model.quantization_channels || p.Q != step.classes || p.tokens != p.Q)
    fail("its classes (Q = " + std::to_string(p.Q) + ", tokens = " + std::to_string(p.tokens) +
         ") are not the manifest's " + std::to_string(model.quantization_channels));
  if (p.L != static_cast<int64_t>(ring.rings.size()) || p.state_rows != state.shape[1] || p.R != state.shape[2])
    fail("its layers, state rows or channels (" + std::to_string(p.L) + ", " + std::to_string(p.state_rows) + ", " +
         std::to_string(p.R) + ") are not the graph's state " + shape_str(state.shape) + " with " +
         std::to_string(ring.rings.size()) + " rings");
  if (p.cond_channels != step.cond_channels)
    fail("it takes " + std::to_string(p.cond_channels) + " conditioning channels, the graph " +
         std::to_string(step.cond_channels));
  const bool speaker = !step.speaker.empty();
  p.speakers = speaker ? model.speakers : 0;
  if (speaker && p.speakers < 1) fail("the graph takes speaker ids but the manifest's model has no speakers");

  // ---- the tensors: exactly these, each of its dtype and shape
  const DType W = p.weights == "w16" ? DType::Float16 : DType::Float32;
  const std::vector<DType> f32{DType::Float32}, w{W}, i64{DType::Int64};
  const std::vector<Expect> expected = {
      {"ring_offset", i64, {p.L}},
      {"ring_length", i64, {p.L}},
      {"embed", f32, {p.tokens, p.R}},
      {"gate_bias", f32, {LG2}},
      {"speaker_gate", f32, {p.speakers, LG2}, speaker},
      {"input_bias", f32, {LR}},
      {"w_cond", {DType::Float32, DType::Float16}, {panels(LG2), p.cond_channels, kPanel}, p.cond_channels > 0},
      {"w_gate", w, {p.L, panels(G2), PR, kPanel}},
      {"w_out", w, {p.L - 1, panels(p.R), p.G, kPanel}},
      {"w_skip", w, {p.L, panels(p.S), p.G, kPanel}},
      {"b_skip", f32, {p.S}},
      {"alpha", f32, {p.L - 1}},
      {"beta", f32, {p.L - 1}},
      {"skip_scale", {DType::Float64}, {1}},
      {"head_w1", w, {panels(p.H), p.S, kPanel}},
      {"head_b1", f32, {p.H}},
      {"head_w2", w, {panels(p.Q), p.H, kPanel}},
      {"head_b2", f32, {p.Q}},
  };
  std::set<std::string> known;
  for (const Expect& e : expected) {
    known.insert(e.name);
    auto it = st.tensors().find(e.name);
    if (it == st.tensors().end()) {
      if (e.required) fail("it lacks the tensor '" + e.name + "'");
      continue;
    }
    const SafeTensor& t = it->second;
    if (!e.required) fail("it has a tensor '" + e.name + "' this graph does not take");
    bool dtype_ok = false;
    for (DType d : e.dtypes) dtype_ok |= d == t.dtype;
    if (!dtype_ok) fail("tensor '" + e.name + "' is " + dtype_name(t.dtype) + ", expected " + dtype_name(e.dtypes[0]));
    if (t.shape != e.shape)
      fail("tensor '" + e.name + "' has shape " + shape_str(t.shape) + ", expected " + shape_str(e.shape));
  }
  for (const auto& [name, t] : st.tensors())
    if (!known.count(name)) fail("it has an unknown tensor '" + name.substr(0, 64) + "'");

  // ---- read them (the sizes are the checked shapes'; together at most the file's size)
  for (const auto& [name, t] : st.tensors()) {
    PlanArray a;
    a.dtype = t.dtype;
    a.shape = t.shape;
    a.data = HostBuffer(static_cast<size_t>(t.bytes));
    st.read(t, a.data.data());
    if (!finite(a)) fail("tensor '" + name + "' holds a non-finite value");
    p.arrays.emplace(name, std::move(a));
  }
  p.skip_scale = p.at("skip_scale").as<double>()[0];
  const int64_t* offset = p.at("ring_offset").as<int64_t>();
  const int64_t* length = p.at("ring_length").as<int64_t>();
  for (int64_t l = 0; l < p.L; ++l) {
    if (offset[l] != ring.rings[l].offset || length[l] != ring.rings[l].length)
      fail("its ring " + std::to_string(l) + " (" + std::to_string(offset[l]) + ", " + std::to_string(length[l]) +
           ") is not the manifest's (" + std::to_string(ring.rings[l].offset) + ", " +
           std::to_string(ring.rings[l].length) + ")");
    if (length[l] % (p.kernel - 1) != 0)
      fail("its ring " + std::to_string(l) + " has a length that is not a multiple of kernel - 1");
  }
  return p;
}

// Every byte generate_native (native_loop.cpp) and wn_loop_generate allocate for B streams and chunks of `chunk`
// steps, in checked arithmetic: the state, the speaker gate rows, the logits, the chunk's uniforms, tokens and
// rows (+ step times), and loop.cc's scratch (its `scratch.resize` and cdf: keep this in step with
// wn_loop_generate). The plan's G, S and H are no dimensions of the manifest, only consistent with the plan's own
// tensors, so a plan of a few dozen MiB can ask for gigabytes of scratch per step at a large batch.
int64_t check_loop_bytes(const NativePlan& p, int64_t B, int64_t chunk, bool timed) {
  const std::string what = "the native loop's buffers";
  auto mul = [&what](int64_t a, int64_t b) { return checked_mul(a, b, what); };
  auto add = [&what](std::initializer_list<int64_t> xs) {
    int64_t s = 0;
    for (int64_t x : xs) s = checked_add(s, x, what);
    return s;
  };
  const int64_t C = p.cond_channels, G2 = mul(2, p.G), LG2 = mul(p.L, G2), LR = mul(p.L, p.R);
  const int64_t row = add({p.R, mul(p.L, p.P), C > 0 ? LG2 : 0, C, p.S, LR, mul(p.L, p.G), G2, p.R, LG2, p.S, p.H});
  const int64_t floats = add({mul(mul(B, p.state_rows), p.R), mul(B, LG2), mul(B, p.Q), mul(B, row)});
  const int64_t bytes = add({mul(floats, 4), mul(2 * 8, p.Q), mul(mul(chunk, B), 3 * 8), timed ? mul(chunk, 8) : 0});
  if (bytes > limits::kMaxTensorBytes)
    throw Error(what + " need " + human_bytes(bytes) + " for " + std::to_string(B) + " streams in chunks of " +
                std::to_string(chunk) + " samples, more than the host allocates (" +
                human_bytes(limits::kMaxTensorBytes) + ", wn::limits::kMaxTensorBytes; use a smaller --batch or --chunk)");
  return bytes;
}

}  // namespace wn
