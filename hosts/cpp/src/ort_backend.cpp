// ONNX Runtime backend (C++ API over the C API): the same session settings and buffer handling as the
// Python host (wn_export/runners/ort.py), so both produce bit-identical logits with the same library.
//
// Step graphs: every input and output is a preallocated host buffer bound once with I/O binding.
// `ring` state: after each run the update rows are written into the ring buffers. `replace` state:
// two buffers per state tensor and two bindings (A→B, B→A) used alternately, so nothing is copied.
#include <algorithm>
#include <cstring>
#include <thread>

#include <onnxruntime_cxx_api.h>

#include "wn/backend.hpp"

namespace wn {
namespace {

std::string first_line(const std::string& s) {
  auto i = s.find('\n');
  return i == std::string::npos ? s : s.substr(0, i);
}

std::string base_name(const std::string& p) {
  auto i = p.find_last_of('/');
  return i == std::string::npos ? p : p.substr(i + 1);
}

std::string ort_dtype(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    default: return "tensor(" + std::to_string(static_cast<int>(t)) + ")";
  }
}

ONNXTensorElementDataType ort_type(DType t) {
  switch (t) {
    case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::Float16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::Float64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
    case DType::Int64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case DType::Int32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

Ort::Env& env() {
  static Ort::Env e(ORT_LOGGING_LEVEL_ERROR, "wn");
  return e;
}

const Ort::MemoryInfo& cpu() {
  static Ort::MemoryInfo m = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return m;
}

Ort::Value wrap(void* data, size_t bytes, const std::vector<int64_t>& shape, DType dtype) {
  return Ort::Value::CreateTensor(cpu(), data, bytes, shape.data(), shape.size(), ort_type(dtype));
}

// A session with the Python host's settings, checked against the manifest's I/O.
Ort::Session open_session(const GraphInfo& g, int threads) {
  Ort::SessionOptions opts;
  opts.SetIntraOpNumThreads(threads);
  opts.SetInterOpNumThreads(1);
  opts.SetExecutionMode(ORT_SEQUENTIAL);
  opts.SetGraphOptimizationLevel(ORT_ENABLE_ALL);
  opts.SetLogSeverityLevel(3);
  Ort::Session session{nullptr};
  try {
    session = Ort::Session(env(), g.path.c_str(), opts);
  } catch (const Ort::Exception& e) {
    throw Error("onnxruntime cannot load " + base_name(g.path) + ": " + first_line(e.what()));
  }
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<IoDesc> in, out;
  for (size_t i = 0; i < session.GetInputCount(); ++i) {
    Ort::TypeInfo type = session.GetInputTypeInfo(i);  // owns what `info` refers to
    auto info = type.GetTensorTypeAndShapeInfo();
    in.push_back({session.GetInputNameAllocated(i, alloc).get(), ort_dtype(info.GetElementType()),
                  info.GetDimensionsCount()});
  }
  for (size_t i = 0; i < session.GetOutputCount(); ++i) {
    Ort::TypeInfo type = session.GetOutputTypeInfo(i);  // owns what `info` refers to
    auto info = type.GetTensorTypeAndShapeInfo();
    out.push_back({session.GetOutputNameAllocated(i, alloc).get(), ort_dtype(info.GetElementType()),
                   info.GetDimensionsCount()});
  }
  check_io(g, base_name(g.path), in, out);
  return session;
}

class OrtStepRunner final : public StepRunner {
 public:
  OrtStepRunner(const GraphInfo& g, int threads) : graph_(g), session_(open_session(g, threads)) {}

  const StepPlan& plan() const override { return plan_; }

  void reset(int64_t batch, const std::vector<int64_t>& speakers) override {
    plan_ = plan_step(graph_, batch);
    bindings_.clear();
    values_.clear();
    buffers_.clear();
    spare_.clear();
    position_ = 0;
    for (const StepBuffer& b : plan_.buffers) {
      bool swapped_output = false;  // a replace output lives in its input's two buffers
      for (const StepSwap& s : plan_.swaps) swapped_output |= b.name == s.output;
      if (!swapped_output) buffers_.emplace(b.name, HostBuffer(b.bytes));
    }
    for (const StepSwap& s : plan_.swaps) spare_.emplace(s.input, HostBuffer(plan_.buffer(s.input).bytes));
    for (const StepInit& init : plan_.inits) {
      const StepBuffer& b = plan_.buffer(init.name);
      fill(buffers_.at(init.name).data(), b.dtype, b.bytes / dtype_size(b.dtype), init.value);
    }
    if (!plan_.speaker.empty()) {
      if (speakers.size() != static_cast<size_t>(batch))
        throw Error("this model needs one speaker id per stream (" + std::to_string(batch) + "), got " +
                    std::to_string(speakers.size()));
      std::memcpy(buffers_.at(plan_.speaker).data(), speakers.data(), speakers.size() * sizeof(int64_t));
    }
    // binding 0: state inputs in their buffers, outputs in the spares; binding 1 (replace only): swapped
    const int n = plan_.swaps.empty() ? 1 : 2;
    for (int k = 0; k < n; ++k) {
      Ort::IoBinding binding(session_);
      for (const StepBuffer& b : plan_.buffers) {
        void* data = nullptr;
        for (const StepSwap& s : plan_.swaps) {
          if (b.name == s.input) data = k == 0 ? buffers_.at(s.input).data() : spare_.at(s.input).data();
          if (b.name == s.output) data = k == 0 ? spare_.at(s.input).data() : buffers_.at(s.input).data();
        }
        if (!data) data = buffers_.at(b.name).data();
        values_.push_back(wrap(data, b.bytes, b.shape, b.dtype));
        if (b.input) binding.BindInput(b.name.c_str(), values_.back());
        else binding.BindOutput(b.name.c_str(), values_.back());
      }
      bindings_.push_back(std::move(binding));
    }
    logits_.assign(static_cast<size_t>(batch * plan_.classes), 0.0f);
    // raw pointers for the per-step work (no name lookups in the loop)
    token_ = static_cast<int64_t*>(buffers_.at(plan_.token).data());
    cond_ = plan_.cond.empty() ? nullptr : static_cast<float*>(buffers_.at(plan_.cond).data());
    logits_raw_ = buffers_.at(plan_.logits).data();
    positions_.clear();
    for (const std::string& p : plan_.positions) positions_.push_back(static_cast<int64_t*>(buffers_.at(p).data()));
    ring_ptrs_.clear();
    for (const StepRing& r : plan_.rings)
      ring_ptrs_.emplace_back(static_cast<unsigned char*>(buffers_.at(r.state).data()),
                              static_cast<const unsigned char*>(buffers_.at(r.update).data()));
  }

  const float* step(const int64_t* tokens, const float* cond_t) override {
    if (bindings_.empty()) throw Error("step runner used before reset");
    std::memcpy(token_, tokens, static_cast<size_t>(plan_.batch) * sizeof(int64_t));
    if (cond_) {
      if (!cond_t) throw Error("this model needs per-sample conditioning (cond_t)");
      std::memcpy(cond_, cond_t, static_cast<size_t>(plan_.batch * plan_.cond_channels) * sizeof(float));
    }
    for (int64_t* p : positions_) *p = position_;
    const Ort::IoBinding& binding = bindings_[static_cast<size_t>(position_ % static_cast<int64_t>(bindings_.size()))];
    try {
      session_.Run(Ort::RunOptions{nullptr}, binding);
    } catch (const Ort::Exception& e) {
      throw Error("onnxruntime failed to run " + base_name(graph_.path) + ": " + first_line(e.what()));
    }
    for (size_t i = 0; i < ring_ptrs_.size(); ++i)  // ring: write the update rows into the ring buffers
      ring_scatter(ring_ptrs_[i].first, ring_ptrs_[i].second, plan_.rings[i], plan_.batch, position_);
    ++position_;
    if (plan_.logits_dtype == DType::Float32) return static_cast<const float*>(logits_raw_);
    to_float(logits_raw_, plan_.logits_dtype, logits_.size(), logits_.data());
    return logits_.data();
  }

 private:
  GraphInfo graph_;
  Ort::Session session_;
  StepPlan plan_;
  std::map<std::string, HostBuffer> buffers_;  // by tensor name
  std::map<std::string, HostBuffer> spare_;    // replace: the second buffer, by state input name
  std::vector<Ort::Value> values_;
  std::vector<Ort::IoBinding> bindings_;
  std::vector<float> logits_;
  int64_t position_ = 0;
  int64_t* token_ = nullptr;
  float* cond_ = nullptr;
  const void* logits_raw_ = nullptr;
  std::vector<int64_t*> positions_;
  std::vector<std::pair<unsigned char*, const unsigned char*>> ring_ptrs_;  // (state, update) per ring state
};

class OrtGraphRunner final : public GraphRunner {
 public:
  OrtGraphRunner(const GraphInfo& g, int threads) : graph_(g), session_(open_session(g, threads)) {}

  Tensors run(const Tensors& inputs) override {
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names, out_names;
    for (const TensorInfo& t : graph_.inputs) {
      auto it = inputs.find(t.role);
      if (it == inputs.end())
        throw Error("the " + graph_.kind + " graph needs its '" + t.role + "' input (" + t.name + ")");
      const Tensor& x = it->second;
      if (x.dtype != t.dtype || x.shape.size() != t.shape.size())
        throw Error("input '" + t.name + "' must be " + dtype_name(t.dtype) + " of rank " +
                    std::to_string(t.shape.size()) + ", got " + dtype_name(x.dtype) + " " + shape_str(x.shape));
      for (size_t i = 0; i < t.shape.size(); ++i)
        if (!t.shape[i].symbolic() && t.shape[i].value != x.shape[i])
          throw Error("input '" + t.name + "' must have shape " + shape_str(t.shape) + ", got " + shape_str(x.shape));
      values.push_back(wrap(const_cast<unsigned char*>(x.data.data()), x.data.size(), x.shape, x.dtype));
      in_names.push_back(t.name.c_str());
    }
    for (const TensorInfo& t : graph_.outputs) out_names.push_back(t.name.c_str());
    std::vector<Ort::Value> outs;
    try {
      outs = session_.Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                          out_names.data(), out_names.size());
    } catch (const Ort::Exception& e) {
      throw Error("onnxruntime failed to run " + base_name(graph_.path) + ": " + first_line(e.what()));
    }
    Tensors result;
    for (size_t i = 0; i < outs.size(); ++i) {
      auto info = outs[i].GetTensorTypeAndShapeInfo();
      Tensor t = Tensor::zeros(graph_.outputs[i].dtype, info.GetShape());
      std::memcpy(t.data.data(), outs[i].GetTensorRawData(), t.data.size());
      result[graph_.outputs[i].role] = std::move(t);
    }
    return result;
  }

 private:
  GraphInfo graph_;
  Ort::Session session_;
};

class OrtBackend final : public Backend {
 public:
  explicit OrtBackend(const OrtOptions& o) {
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    threads_ = o.threads > 0 ? o.threads : static_cast<int>(std::min(2u, cores));
  }
  std::string name() const override { return "onnxruntime"; }
  std::unique_ptr<StepRunner> open_step(const GraphInfo& g) override {
    return std::make_unique<OrtStepRunner>(g, threads_);
  }
  std::unique_ptr<GraphRunner> open_graph(const GraphInfo& g) override {
    return std::make_unique<OrtGraphRunner>(g, threads_);
  }

 private:
  int threads_ = 1;
};

}  // namespace

std::unique_ptr<Backend> make_ort_backend(const OrtOptions& options) {
  try {
    return std::make_unique<OrtBackend>(options);
  } catch (const Ort::Exception& e) {
    throw Error(std::string("onnxruntime: ") + first_line(e.what()));
  }
}

}  // namespace wn
