// Backend-independent parts of the runner interface: step-graph planning from the manifest, the ring
// update, dtype helpers and the graph-vs-manifest I/O check.
#include <algorithm>
#include <cstring>
#include <new>
#include <set>
#include <tuple>

#include "wn/backend.hpp"
#include "wn/limits.hpp"

namespace wn {

namespace {
// Bytes of a tensor, checked for overflow and against limits::kMaxTensorBytes.
int64_t tensor_bytes(const std::vector<int64_t>& shape, DType dtype, const std::string& what) {
  int64_t bytes = 0;
  const bool overflow = __builtin_mul_overflow(element_count(shape), static_cast<int64_t>(dtype_size(dtype)), &bytes);
  if (overflow || bytes > limits::kMaxTensorBytes)
    throw Error(what + " " + shape_str(shape) + " needs " + (overflow ? "over 8 EiB" : human_bytes(bytes)) +
                ", more than the host allocates (" + human_bytes(limits::kMaxTensorBytes) +
                ", wn::limits::kMaxTensorBytes)");
  return bytes;
}
}  // namespace

Tensor Tensor::zeros(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data.assign(static_cast<size_t>(tensor_bytes(t.shape, dtype, "a tensor")), 0);
  return t;
}

HostBuffer::HostBuffer(size_t bytes) : bytes_(bytes) {
  // 128 bytes: kAlign of plugins/ort/kernels.h (the native loop streams its weights from these buffers; a vector
  // that straddles two cache lines costs ~10% of the streaming rate)
  size_t rounded = (std::max<size_t>(bytes, 1) + 127) / 128 * 128;
  ptr_ = std::aligned_alloc(128, rounded);
  if (!ptr_) throw std::bad_alloc();
  std::memset(ptr_, 0, rounded);
}

HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    std::free(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

// ---- float16 --------------------------------------------------------------------------------------------
uint16_t float_to_half(float f) {  // round to nearest even, with subnormals, inf and nan
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mag = x & 0x7fffffffu;
  if (mag >= 0x7f800000u) return static_cast<uint16_t>(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (mag >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to ≥ 65520 → inf
  if (mag < 0x38800000u) {  // subnormal half (or zero)
    if (mag < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exp = mag >> 23;
    uint32_t mant = (mag & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 14 + (113 - exp) … mantissa bits to drop
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = ((mag - 0x38000000u) >> 13);
  uint32_t rem = mag & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

float half_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; mant <<= 1; } while (!(mant & 0x400u));
      x = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    x = sign | 0x7f800000u | mant << 13;
  } else {
    x = sign | (exp + 112) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

void fill(void* dst, DType dtype, size_t count, double value) {
  switch (dtype) {
    case DType::Float32: std::fill_n(static_cast<float*>(dst), count, static_cast<float>(value)); break;
    case DType::Float64: std::fill_n(static_cast<double*>(dst), count, value); break;
    case DType::Float16: std::fill_n(static_cast<uint16_t*>(dst), count, float_to_half(static_cast<float>(value))); break;
    case DType::Int64: std::fill_n(static_cast<int64_t*>(dst), count, static_cast<int64_t>(value)); break;
    case DType::Int32: std::fill_n(static_cast<int32_t*>(dst), count, static_cast<int32_t>(value)); break;
  }
}

void to_float(const void* src, DType dtype, size_t count, float* dst) {
  if (dtype == DType::Float32) {
    std::memcpy(dst, src, count * 4);
  } else if (dtype == DType::Float16) {
    const auto* h = static_cast<const uint16_t*>(src);
    for (size_t i = 0; i < count; ++i) dst[i] = half_bits_to_float(h[i]);
  } else {
    throw Error(std::string("cannot read ") + dtype_name(dtype) + " logits");
  }
}

void ring_scatter(unsigned char* state, const unsigned char* update, const StepRing& ring, int64_t batch,
                  int64_t position) {
  const int64_t layers = static_cast<int64_t>(ring.rings.size());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t l = 0; l < layers; ++l) {
      const Ring& r = ring.rings[l];
      const int64_t row = r.offset + position % r.length;
      std::memcpy(state + (b * ring.rows + row) * ring.row_bytes, update + (b * layers + l) * ring.row_bytes,
                  ring.row_bytes);
    }
  }
}

// ---- step plan ----------------------------------------------------------------------------------------
const StepBuffer& StepPlan::buffer(const std::string& name) const {
  for (const auto& b : buffers)
    if (b.name == name) return b;
  throw Error("step graph has no tensor '" + name + "'");
}

StepPlan plan_step(const GraphInfo& g, int64_t batch) {
  auto fail = [&](const std::string& what) -> void { throw Error("graph '" + g.name + "' (" + g.file + "): " + what); };
  if (g.kind != "step") fail("is a " + g.kind + " graph, not a step graph");
  if (batch < 1 || batch > limits::kMaxBatch)
    throw Error("batch must be in [1, " + std::to_string(limits::kMaxBatch) + "] (got " + std::to_string(batch) + ")");
  StepPlan p;
  p.batch = batch;
  const DimValues dims{{"batch", batch}};
  int64_t total = 0;  // bytes of every buffer
  for (const auto* list : {&g.inputs, &g.outputs}) {
    for (const TensorInfo& t : *list) {
      StepBuffer b;
      b.name = t.name;
      b.role = t.role;
      b.dtype = t.dtype;
      b.input = list == &g.inputs;
      try {
        b.shape = resolve(t.shape, dims);
        for (int64_t d : b.shape)
          if (d < 1) throw Error("shape " + shape_str(b.shape) + " has a dimension < 1");
        b.bytes = static_cast<size_t>(tensor_bytes(b.shape, t.dtype, "tensor"));
        total = checked_add(total, static_cast<int64_t>(b.bytes), "the step buffers' size");
      } catch (const Error& e) {
        fail(std::string("tensor '") + t.name + "': " + e.what());
      }
      p.buffers.push_back(std::move(b));
    }
  }
  if (total > limits::kMaxTensorBytes)
    fail("its buffers need " + human_bytes(total) + " for batch " + std::to_string(batch) +
         ", more than the host allocates (" + human_bytes(limits::kMaxTensorBytes) + ", wn::limits::kMaxTensorBytes)");
  std::set<std::string> seen;
  for (const auto& b : p.buffers)
    if (!seen.insert(b.name).second) fail("tensor name '" + b.name + "' is used twice");

  for (const TensorInfo& t : g.inputs) {
    const StepBuffer& b = p.buffer(t.name);
    if (t.role == "token") {
      if (!p.token.empty()) fail("has two token inputs");
      if (t.dtype != DType::Int64 || b.shape != std::vector<int64_t>{batch})
        fail("token input '" + t.name + "' must be int64 (batch,)");
      p.token = t.name;
    } else if (t.role == "cond") {
      if (t.dtype != DType::Float32 || b.shape.size() != 2 || b.shape[0] != batch)
        fail("cond input '" + t.name + "' must be float32 (batch, channels)");
      p.cond = t.name;
      p.cond_channels = b.shape[1];
    } else if (t.role == "speaker") {
      if (t.dtype != DType::Int64 || b.shape != std::vector<int64_t>{batch})
        fail("speaker input '" + t.name + "' must be int64 (batch,)");
      p.speaker = t.name;
    } else if (t.role == "position") {
      if (t.dtype != DType::Int64 || b.shape != std::vector<int64_t>{1})
        fail("position input '" + t.name + "' must be int64 (1,)");
    } else if (t.role == "sample") {
      fail("takes float samples (a scalar-input model); this host runs token (one-hot input) models only");
    } else if (t.role != "state") {
      fail("input '" + t.name + "' has role '" + t.role + "', which a step host cannot feed");
    }
  }
  if (p.token.empty()) fail("has no input with role 'token'");
  const TensorInfo* logits = g.output("logits");
  if (!logits && g.output("mol_params"))
    fail("outputs mixture-of-logistics parameters; this host samples categorical logits only");
  if (!logits) fail("has no output with role 'logits'");
  const StepBuffer& lb = p.buffer(logits->name);
  if ((logits->dtype != DType::Float32 && logits->dtype != DType::Float16) || lb.shape.size() != 2 || lb.shape[0] != batch)
    fail("logits output '" + logits->name + "' must be float32 (batch, classes)");
  p.logits = logits->name;
  p.logits_dtype = logits->dtype;
  p.classes = lb.shape[1];

  std::set<std::string> state_inputs, state_outputs;
  for (const StateInfo& s : g.state) {
    if (state_inputs.count(s.input) || state_outputs.count(s.input) || state_inputs.count(s.output) ||
        state_outputs.count(s.output) || s.input == s.output)
      fail("state '" + s.input + "' -> '" + s.output + "' reuses a tensor of another state entry");
    const TensorInfo* in = g.find(s.input);
    const TensorInfo* out = g.find(s.output);
    if (!in || p.buffer(s.input).input == false || in->role != "state")
      fail("state input '" + s.input + "' is not an input with role 'state'");
    if (!out || p.buffer(s.output).input || out->role != "state")
      fail("state output '" + s.output + "' is not an output with role 'state'");
    if (in->dtype != s.dtype || out->dtype != s.dtype)
      fail("state '" + s.input + "' dtype differs between the state entry and its tensors");
    const StepBuffer& ib = p.buffer(s.input);
    const StepBuffer& ob = p.buffer(s.output);
    state_inputs.insert(s.input);
    state_outputs.insert(s.output);
    p.inits.push_back({s.input, s.dtype, s.init});
    if (s.update == StateUpdate::Replace) {
      if (ib.shape != ob.shape)
        fail("replace state '" + s.input + "' " + shape_str(ib.shape) + " and its output '" + s.output + "' " +
             shape_str(ob.shape) + " differ in shape");
      p.swaps.push_back({s.input, s.output});
    } else {
      const TensorInfo* pos = g.find(s.position);
      if (!pos || pos->role != "position" || !p.buffer(s.position).input)
        fail("ring state '" + s.input + "' names position '" + s.position + "', which is not a position input");
      if (ib.shape.size() < 2 || ob.shape.size() != ib.shape.size() || ib.shape[0] != batch || ob.shape[0] != batch ||
          !std::equal(ib.shape.begin() + 2, ib.shape.end(), ob.shape.begin() + 2))
        fail("ring state '" + s.input + "' " + shape_str(ib.shape) + " and its update '" + s.output + "' " +
             shape_str(ob.shape) + " must be (batch, rows, …) and (batch, layers, …)");
      if (static_cast<int64_t>(s.rings.size()) != ob.shape[1])
        fail("ring state '" + s.input + "' lists " + std::to_string(s.rings.size()) + " rings but its update has " +
             std::to_string(ob.shape[1]) + " rows");
      StepRing r;
      r.state = s.input;
      r.update = s.output;
      r.rings = s.rings;
      r.rows = ib.shape[1];
      r.row_bytes = ib.bytes / static_cast<size_t>(batch * r.rows);
      for (const Ring& ring : s.rings)  // offset + length <= rows, without overflow
        if (ring.offset < 0 || ring.length < 1 || ring.length > r.rows || ring.offset > r.rows - ring.length)
          fail("ring (offset " + std::to_string(ring.offset) + ", length " + std::to_string(ring.length) +
               ") lies outside state '" + s.input + "' (" + std::to_string(r.rows) + " rows)");
      p.rings.push_back(std::move(r));
      if (std::find(p.positions.begin(), p.positions.end(), s.position) == p.positions.end())
        p.positions.push_back(s.position);
    }
  }
  for (const TensorInfo& t : g.inputs)
    if (t.role == "state" && !state_inputs.count(t.name)) fail("state input '" + t.name + "' has no state entry");
  for (const TensorInfo& t : g.inputs)
    if (t.role == "position" && std::find(p.positions.begin(), p.positions.end(), t.name) == p.positions.end())
      fail("position input '" + t.name + "' belongs to no ring state");
  return p;
}

// ---- I/O check --------------------------------------------------------------------------------------------
namespace {
std::string io_list(std::vector<IoDesc> v) {
  std::sort(v.begin(), v.end(), [](const IoDesc& a, const IoDesc& b) {
    return std::tie(a.name, a.dtype, a.rank) < std::tie(b.name, b.dtype, b.rank);
  });
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i)
    s += (i ? ", " : "") + std::string("('") + v[i].name + "', '" + v[i].dtype + "', " + std::to_string(v[i].rank) + ")";
  return s + "]";
}
}  // namespace

void check_io(const GraphInfo& graph, const std::string& file, std::vector<IoDesc> inputs,
              std::vector<IoDesc> outputs) {
  const std::pair<const char*, const std::vector<TensorInfo>*> declared[] = {{"inputs", &graph.inputs},
                                                                           {"outputs", &graph.outputs}};
  const std::vector<IoDesc>* got[] = {&inputs, &outputs};
  for (int k = 0; k < 2; ++k) {
    std::vector<IoDesc> want;
    for (const TensorInfo& t : *declared[k].second) want.push_back({t.name, dtype_name(t.dtype), t.shape.size()});
    std::string a = io_list(*got[k]), b = io_list(want);
    if (a != b)
      throw Error("manifest/graph mismatch in " + file + ": its " + declared[k].first + " are " + a +
                  ", the manifest declares " + b);
  }
}

}  // namespace wn
