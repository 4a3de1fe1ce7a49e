// TensorRT backend: IRuntime → ICudaEngine → IExecutionContext::enqueueV3, driven by the manifest's
// description of the graph the engine was built from (names, roles, dtypes, state update rule).
//
// Step graphs keep all state on the device:
// - `replace`: two device buffers per state tensor (ping-pong); the tensor addresses are swapped
//   every step, nothing is copied.
// - `ring`: the engine outputs the update rows; a tiny kernel (trt_kernels.cu) scatters them into the
//   ring buffers at offset + position mod length and increments the device-side position. Without
//   nvcc (WN_TRT_NO_KERNELS) one cudaMemcpy2DAsync per layer does the scatter instead.
// Per step only the tokens (and conditioning) go up and the logits come down, through pinned memory.
// With cuda_graph, each step (copies, enqueueV3, state update) is captured once per buffer parity
// and replayed with cudaGraphLaunch.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include "wn/backend.hpp"
#ifndef WN_TRT_NO_KERNELS
#include "trt_kernels.hpp"
#endif

namespace wn {
namespace {

std::string base_name(const std::string& p) {
  auto i = p.find_last_of('/');
  return i == std::string::npos ? p : p.substr(i + 1);
}

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}
#define WN_CUDA(expr) cuda_check((expr), #expr)

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
    if (severity <= Severity::kWARNING && verbose) std::fprintf(stderr, "[TensorRT] %s\n", msg);
  }
  std::string last_error;
  bool verbose = false;
};

std::string trt_dtype(nvinfer1::DataType t) {
  using nvinfer1::DataType;
  switch (t) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT64: return "int64";
    case DataType::kINT32: return "int32";
    case DataType::kINT8: return "int8";
    case DataType::kUINT8: return "uint8";
    case DataType::kBOOL: return "bool";
    case DataType::kBF16: return "bfloat16";
    case DataType::kFP8: return "float8";
    default: return "trt(" + std::to_string(static_cast<int>(t)) + ")";
  }
}

nvinfer1::Dims to_dims(const std::vector<int64_t>& shape) {
  nvinfer1::Dims d{};
  if (shape.size() > static_cast<size_t>(nvinfer1::Dims::MAX_DIMS)) throw Error("tensor rank exceeds TensorRT's maximum");
  d.nbDims = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) d.d[i] = shape[i];
  return d;
}

std::vector<int64_t> from_dims(const nvinfer1::Dims& d) {
  return std::vector<int64_t>(d.d, d.d + std::max<int32_t>(d.nbDims, 0));
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : bytes(n) { WN_CUDA(cudaMalloc(&ptr, std::max<size_t>(n, 1))); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  unsigned char* bytes_ptr() const { return static_cast<unsigned char*>(ptr); }
};

struct PinnedBuffer {
  void* ptr = nullptr;
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t n) { WN_CUDA(cudaMallocHost(&ptr, std::max<size_t>(n, 1))); }
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr(o.ptr) { o.ptr = nullptr; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    return *this;
  }
  ~PinnedBuffer() {
    if (ptr) cudaFreeHost(ptr);
  }
};

// One deserialized engine with one execution context, checked against the manifest graph.
class Engine {
 public:
  Engine(const std::string& path, const GraphInfo& graph, int device) : path_(path), graph_(graph) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) throw Error("cannot read TensorRT engine " + path);
    if (blob.empty()) throw Error("TensorRT engine " + path + " is missing or empty (build it with `wn-export trt`)");
    WN_CUDA(cudaSetDevice(device));
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error("TensorRT: cannot create a runtime: " + logger_.last_error);
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
      throw Error("TensorRT cannot deserialize " + base_name(path) + ": " +
                  (logger_.last_error.empty() ? "no error logged" : logger_.last_error));
    std::vector<IoDesc> ins, outs;
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      IoDesc d{name, trt_dtype(engine_->getTensorDataType(name)),
               static_cast<size_t>(std::max<int32_t>(engine_->getTensorShape(name).nbDims, 0))};
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? ins : outs).push_back(d);
    }
    check_io(graph, base_name(path) + " (built from " + graph.file + ")", ins, outs);
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT cannot create an execution context: " + logger_.last_error);
  }

  // Set every input's shape; a shape outside the optimization profile is a clear error.
  void set_input_shape(const std::string& name, const std::vector<int64_t>& shape) {
    if (!context_->setInputShape(name.c_str(), to_dims(shape))) {
      auto lo = from_dims(engine_->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMIN));
      auto hi = from_dims(engine_->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX));
      throw Error("input '" + name + "' shape " + shape_str(shape) + " is outside engine " + base_name(path_) +
                  "'s optimization profile (min " + shape_str(lo) + ", max " + shape_str(hi) + ")");
    }
  }

  std::vector<int64_t> shape(const std::string& name) const {
    auto s = from_dims(context_->getTensorShape(name.c_str()));
    for (int64_t d : s)
      if (d < 0) throw Error("TensorRT cannot infer the shape of '" + name + "': " + logger_.last_error);
    return s;
  }

  void set_address(const std::string& name, void* ptr) {
    if (!context_->setTensorAddress(name.c_str(), ptr))
      throw Error("TensorRT rejected the address of '" + name + "': " + logger_.last_error);
  }

  void enqueue(cudaStream_t stream) {
    if (!context_->enqueueV3(stream))
      throw Error("TensorRT enqueueV3 failed for " + base_name(path_) + ": " + logger_.last_error);
  }

  const GraphInfo& graph() const { return graph_; }

 private:
  std::string path_;
  GraphInfo graph_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
};

class Stream {
 public:
  Stream() { WN_CUDA(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class TrtStepRunner final : public StepRunner {
 public:
  TrtStepRunner(const std::string& engine, const GraphInfo& graph, const TrtOptions& o)
      : engine_(engine, graph, o.device), use_graphs_(o.cuda_graph) {}

  ~TrtStepRunner() override {
    cudaStreamSynchronize(stream_.get());
    drop_graphs();
  }

  const StepPlan& plan() const override { return plan_; }

  void reset(int64_t batch, const std::vector<int64_t>& speakers) override {
    WN_CUDA(cudaStreamSynchronize(stream_.get()));
    drop_graphs();
    plan_ = plan_step(engine_.graph(), batch);
#ifdef WN_TRT_NO_KERNELS
    if (use_graphs_ && !plan_.rings.empty())
      throw Error("CUDA graphs with ring state need the ring-update kernel: rebuild with nvcc (CMake CUDA language)");
#endif
    dev_.clear();
    spare_.clear();
    for (const StepBuffer& b : plan_.buffers)
      if (b.input) engine_.set_input_shape(b.name, b.shape);
    if (!plan_.speaker.empty() && speakers.size() != static_cast<size_t>(batch))
      throw Error("this model needs one speaker id per stream (" + std::to_string(batch) + "), got " +
                  std::to_string(speakers.size()));
    swap_outputs_.clear();
    for (const StepSwap& s : plan_.swaps) swap_outputs_.insert(s.output);
    for (const StepBuffer& b : plan_.buffers) {
      if (!b.input && engine_.shape(b.name) != b.shape)
        throw Error("engine output '" + b.name + "' has shape " + shape_str(engine_.shape(b.name)) +
                    ", the manifest says " + shape_str(b.shape));
      if (!swap_outputs_.count(b.name)) dev_.emplace(b.name, DeviceBuffer(b.bytes));  // those use the spares
    }
    for (const StepSwap& s : plan_.swaps) spare_.emplace(s.input, DeviceBuffer(plan_.buffer(s.input).bytes));
    // initial values: asynchronous copies on our (non-blocking) stream, staged until the sync below
    cudaStream_t st = stream_.get();
    std::vector<HostBuffer> staging;
    for (const StepInit& init : plan_.inits) {
      const StepBuffer& b = plan_.buffer(init.name);
      staging.emplace_back(b.bytes);
      fill(staging.back().data(), b.dtype, b.bytes / dtype_size(b.dtype), init.value);
      WN_CUDA(cudaMemcpyAsync(dev_.at(init.name).ptr, staging.back().data(), b.bytes, cudaMemcpyHostToDevice, st));
    }
    for (const std::string& p : plan_.positions) WN_CUDA(cudaMemsetAsync(dev_.at(p).ptr, 0, sizeof(int64_t), st));
    if (!plan_.speaker.empty()) {
      staging.emplace_back(speakers.size() * sizeof(int64_t));
      std::memcpy(staging.back().data(), speakers.data(), speakers.size() * sizeof(int64_t));
      WN_CUDA(cudaMemcpyAsync(dev_.at(plan_.speaker).ptr, staging.back().data(), speakers.size() * sizeof(int64_t),
                              cudaMemcpyHostToDevice, st));
    }
    rings_.clear();
    for (const StepRing& r : plan_.rings) {
      staging.emplace_back(r.rings.size() * 2 * sizeof(int64_t));
      auto* table = static_cast<int64_t*>(staging.back().data());
      for (size_t l = 0; l < r.rings.size(); ++l) {
        table[2 * l] = r.rings[l].offset;
        table[2 * l + 1] = r.rings[l].length;
      }
      rings_.emplace_back(staging.back().bytes());
      WN_CUDA(cudaMemcpyAsync(rings_.back().ptr, table, staging.back().bytes(), cudaMemcpyHostToDevice, st));
    }
    WN_CUDA(cudaStreamSynchronize(st));
    position_ptrs_.clear();
    for (const std::string& p : plan_.positions) position_ptrs_.push_back(static_cast<int64_t*>(dev_.at(p).ptr));
    if (position_ptrs_.size() > 8) throw Error("more than 8 position inputs");
    token_ = PinnedBuffer(static_cast<size_t>(batch) * sizeof(int64_t));
    cond_ = PinnedBuffer(static_cast<size_t>(batch * std::max<int64_t>(plan_.cond_channels, 1)) * sizeof(float));
    logits_bytes_ = plan_.buffer(plan_.logits).bytes;
    logits_host_ = PinnedBuffer(logits_bytes_);
    host_position_ = PinnedBuffer(sizeof(int64_t));
    logits_.assign(static_cast<size_t>(batch * plan_.classes), 0.0f);
    position_ = 0;
    bind(0);
  }

  const float* step(const int64_t* tokens, const float* cond_t) override {
    if (dev_.empty()) throw Error("step runner used before reset");
    std::memcpy(token_.ptr, tokens, static_cast<size_t>(plan_.batch) * sizeof(int64_t));
    if (!plan_.cond.empty()) {
      if (!cond_t) throw Error("this model needs per-sample conditioning (cond_t)");
      std::memcpy(cond_.ptr, cond_t, static_cast<size_t>(plan_.batch * plan_.cond_channels) * sizeof(float));
    }
    *static_cast<int64_t*>(host_position_.ptr) = position_;
    const int parity = plan_.swaps.empty() ? 0 : static_cast<int>(position_ % 2);
    if (use_graphs_ && graphs_[parity]) {
      WN_CUDA(cudaGraphLaunch(graphs_[parity], stream_.get()));
    } else {
      bind(parity);
      enqueue_step(parity);
      if (use_graphs_) capture(parity);  // the eager step above was the warm-up TensorRT needs
    }
    WN_CUDA(cudaStreamSynchronize(stream_.get()));
    ++position_;
    if (plan_.logits_dtype == DType::Float32) return static_cast<const float*>(logits_host_.ptr);
    to_float(logits_host_.ptr, plan_.logits_dtype, logits_.size(), logits_.data());
    return logits_.data();
  }

 private:
  void* input_buffer(const std::string& state_input, int parity) {
    return parity == 0 ? dev_.at(state_input).ptr : spare_.at(state_input).ptr;
  }

  void bind(int parity) {
    for (const StepBuffer& b : plan_.buffers)
      if (!swap_outputs_.count(b.name)) engine_.set_address(b.name, dev_.at(b.name).ptr);
    for (const StepSwap& s : plan_.swaps) {  // parity 0: A → B; parity 1: B → A
      engine_.set_address(s.input, input_buffer(s.input, parity));
      engine_.set_address(s.output, input_buffer(s.input, 1 - parity));
    }
  }

  // Everything one step does on the stream (capturable: fixed addresses, device-side position).
  void enqueue_step(int /*parity*/) {
    cudaStream_t s = stream_.get();
    const size_t B = static_cast<size_t>(plan_.batch);
    WN_CUDA(cudaMemcpyAsync(dev_.at(plan_.token).ptr, token_.ptr, B * sizeof(int64_t), cudaMemcpyHostToDevice, s));
    if (!plan_.cond.empty())
      WN_CUDA(cudaMemcpyAsync(dev_.at(plan_.cond).ptr, cond_.ptr, B * plan_.cond_channels * sizeof(float),
                              cudaMemcpyHostToDevice, s));
#ifdef WN_TRT_NO_KERNELS
    for (int64_t* p : position_ptrs_)
      WN_CUDA(cudaMemcpyAsync(p, host_position_.ptr, sizeof(int64_t), cudaMemcpyHostToDevice, s));
#endif
    engine_.enqueue(s);
    for (size_t i = 0; i < plan_.rings.size(); ++i) {
      const StepRing& r = plan_.rings[i];
      unsigned char* state = dev_.at(r.state).bytes_ptr();
      const unsigned char* update = dev_.at(r.update).bytes_ptr();
      const int64_t layers = static_cast<int64_t>(r.rings.size());
#ifdef WN_TRT_NO_KERNELS
      for (int64_t l = 0; l < layers; ++l) {  // one strided copy per layer: `batch` rows of row_bytes
        const int64_t row = r.rings[l].offset + position_ % r.rings[l].length;
        WN_CUDA(cudaMemcpy2DAsync(state + row * r.row_bytes, r.rows * r.row_bytes, update + l * r.row_bytes,
                                  layers * r.row_bytes, r.row_bytes, B, cudaMemcpyDeviceToDevice, s));
      }
#else
      WN_CUDA(launch_ring_scatter(state, update, static_cast<const int64_t*>(rings_[i].ptr), position_ptrs_.front(),
                                  plan_.batch, layers, r.rows, static_cast<int64_t>(r.row_bytes), s));
#endif
    }
#ifndef WN_TRT_NO_KERNELS
    if (!position_ptrs_.empty())
      WN_CUDA(launch_increment(position_ptrs_.data(), static_cast<int>(position_ptrs_.size()), s));
#endif
    WN_CUDA(cudaMemcpyAsync(logits_host_.ptr, dev_.at(plan_.logits).ptr, logits_bytes_, cudaMemcpyDeviceToHost, s));
  }

  void capture(int parity) {
    WN_CUDA(cudaStreamSynchronize(stream_.get()));
    cudaGraph_t graph = nullptr;
    WN_CUDA(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
    try {
      bind(parity);
      enqueue_step(parity);
    } catch (...) {
      cudaStreamEndCapture(stream_.get(), &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    WN_CUDA(cudaStreamEndCapture(stream_.get(), &graph));
    cudaError_t e = cudaGraphInstantiate(&graphs_[parity], graph, 0);
    cudaGraphDestroy(graph);
    cuda_check(e, "cudaGraphInstantiate (run without --cuda-graph)");
  }

  void drop_graphs() {
    for (auto& g : graphs_) {
      if (g) cudaGraphExecDestroy(g);
      g = nullptr;
    }
  }

  Engine engine_;
  bool use_graphs_ = false;
  Stream stream_;
  StepPlan plan_;
  std::map<std::string, DeviceBuffer> dev_;    // every I/O tensor, by name
  std::map<std::string, DeviceBuffer> spare_;  // replace: the ping-pong partner, by state input name
  std::set<std::string> swap_outputs_;         // replace outputs: bound to a state input's buffers
  std::vector<DeviceBuffer> rings_;            // per ring state: (offset, length) × layers, int64
  std::vector<int64_t*> position_ptrs_;
  PinnedBuffer token_, cond_, logits_host_, host_position_;
  size_t logits_bytes_ = 0;
  std::vector<float> logits_;
  int64_t position_ = 0;
  cudaGraphExec_t graphs_[2] = {nullptr, nullptr};
};

class TrtGraphRunner final : public GraphRunner {
 public:
  TrtGraphRunner(const std::string& engine, const GraphInfo& graph, const TrtOptions& o) : engine_(engine, graph, o.device) {}

  Tensors run(const Tensors& inputs) override {
    const GraphInfo& g = engine_.graph();
    std::vector<DeviceBuffer> bufs;
    for (const TensorInfo& t : g.inputs) {
      auto it = inputs.find(t.role);
      if (it == inputs.end()) throw Error("the " + g.kind + " graph needs its '" + t.role + "' input (" + t.name + ")");
      const Tensor& x = it->second;
      if (x.dtype != t.dtype || x.shape.size() != t.shape.size())
        throw Error("input '" + t.name + "' must be " + dtype_name(t.dtype) + " of rank " + std::to_string(t.shape.size()));
      engine_.set_input_shape(t.name, x.shape);
      bufs.emplace_back(x.data.size());
      WN_CUDA(cudaMemcpyAsync(bufs.back().ptr, x.data.data(), x.data.size(), cudaMemcpyHostToDevice, stream_.get()));
      engine_.set_address(t.name, bufs.back().ptr);
    }
    Tensors out;
    std::vector<std::pair<const TensorInfo*, size_t>> outs;
    for (const TensorInfo& t : g.outputs) {
      Tensor y = Tensor::zeros(t.dtype, engine_.shape(t.name));
      bufs.emplace_back(y.data.size());
      engine_.set_address(t.name, bufs.back().ptr);
      outs.emplace_back(&t, bufs.size() - 1);
      out[t.role] = std::move(y);
    }
    engine_.enqueue(stream_.get());
    for (auto& [t, i] : outs) {
      Tensor& y = out[t->role];
      WN_CUDA(cudaMemcpyAsync(y.data.data(), bufs[i].ptr, y.data.size(), cudaMemcpyDeviceToHost, stream_.get()));
    }
    WN_CUDA(cudaStreamSynchronize(stream_.get()));
    return out;
  }

 private:
  Engine engine_;
  Stream stream_;
};

class TrtBackend final : public Backend {
 public:
  explicit TrtBackend(const TrtOptions& o) : options_(o) {}
  std::string name() const override { return "tensorrt"; }
  std::unique_ptr<StepRunner> open_step(const GraphInfo& g) override {
    return std::make_unique<TrtStepRunner>(engine_for(g), g, options_);
  }
  std::unique_ptr<GraphRunner> open_graph(const GraphInfo& g) override {
    return std::make_unique<TrtGraphRunner>(engine_for(g), g, options_);
  }

 private:
  std::string engine_for(const GraphInfo& g) const {
    if (!options_.engine.empty()) return options_.engine;
    const EngineInfo* e = options_.manifest ? options_.manifest->engine_for(g.name) : nullptr;
    if (!e) {
      std::string dir = options_.manifest ? options_.manifest->directory : "DIR";
      throw Error(dir + " has no TensorRT engine for '" + g.name + "'; build it with `wn-export trt " + dir +
                  (g.precision == "fp16" ? " --fp16" : "") + "` or pass --engine FILE");
    }
    std::ifstream probe(e->path, std::ios::binary);
    if (!probe) throw Error("engine file " + base_name(e->path) + " is missing");
    if (options_.verify && !e->sha256.empty() && sha256_file(e->path) != e->sha256)
      throw Error(base_name(e->path) + " does not match the manifest's sha256; rebuild with `wn-export trt`");
    return e->path;
  }
  TrtOptions options_;
};

}  // namespace

bool have_tensorrt() { return true; }

std::unique_ptr<Backend> make_trt_backend(const TrtOptions& options) { return std::make_unique<TrtBackend>(options); }

}  // namespace wn
