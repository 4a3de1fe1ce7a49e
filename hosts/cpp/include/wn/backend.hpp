// One interface for every inference backend (ONNX Runtime, TensorRT), driven by the manifest alone.
//
// StepRunner: reset(batch, speakers) starts `batch` streams from the graph's initial state;
// step(tokens, cond_t) feeds one token per stream and returns the logits (batch, Q). The state is
// kept by the runner and updated per the manifest: `ring` (write the update rows into the ring
// buffers at offset + position mod length) or `replace` (the outputs become the next inputs: two
// buffers swapped, never copied).
// GraphRunner: one-shot graphs (scoring, upsample): inputs by role → outputs by role.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "wn/manifest.hpp"

namespace wn {

// A host tensor: dtype, shape and bytes.
struct Tensor {
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> data;

  static Tensor zeros(DType dtype, std::vector<int64_t> shape);
  template <class T> T* as() { return reinterpret_cast<T*>(data.data()); }
  template <class T> const T* as() const { return reinterpret_cast<const T*>(data.data()); }
  int64_t count() const { return element_count(shape); }
};
using Tensors = std::map<std::string, Tensor>;  // by role

// 64-byte aligned, zero-initialised host memory.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes);
  HostBuffer(HostBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() { std::free(ptr_); }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---- the step graph's buffers, derived from the manifest and validated ---------------------------------
struct StepBuffer {
  std::string name, role;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  size_t bytes = 0;
  bool input = true;
};

struct StepRing {  // state (batch, rows, …) ← update (batch, L, …): row l goes to offset_l + position mod length_l
  std::string state, update;
  std::vector<Ring> rings;
  int64_t rows = 0;
  size_t row_bytes = 0;
};

struct StepSwap {  // replace: the output buffer is the next step's input buffer
  std::string input, output;
};

struct StepInit {
  std::string name;
  DType dtype = DType::Float32;
  double value = 0.0;
};

struct StepPlan {
  int64_t batch = 0, classes = 0, cond_channels = 0;
  std::vector<StepBuffer> buffers;            // every input, then every output (manifest order)
  std::string token, cond, speaker, logits;   // tensor names; "" when the graph has no such input
  DType logits_dtype = DType::Float32;
  std::vector<std::string> positions;         // int64 (1,) inputs holding the samples consumed so far
  std::vector<StepRing> rings;
  std::vector<StepSwap> swaps;
  std::vector<StepInit> inits;                // state inputs and their initial value

  const StepBuffer& buffer(const std::string& name) const;
};

// Validate a step graph's manifest entry and lay out its buffers for `batch` streams (wn::Error if invalid).
StepPlan plan_step(const GraphInfo& graph, int64_t batch);

// Shared helpers for backends.
void fill(void* dst, DType dtype, size_t count, double value);
void ring_scatter(unsigned char* state, const unsigned char* update, const StepRing& ring, int64_t batch,
                  int64_t position);
void to_float(const void* src, DType dtype, size_t count, float* dst);  // float32 / float16 → float
uint16_t float_to_half(float f);
float half_bits_to_float(uint16_t h);  // IEEE half bits → float (exact)

// A graph file's actual I/O as (name, dtype name, rank); compared with the manifest by check_io.
struct IoDesc {
  std::string name, dtype;
  size_t rank = 0;
};
// Throws "manifest/graph mismatch in FILE: its inputs are [...], the manifest declares [...]".
void check_io(const GraphInfo& graph, const std::string& file, std::vector<IoDesc> inputs,
              std::vector<IoDesc> outputs);

// ---- the interface --------------------------------------------------------------------------------------
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Start `batch` streams from the initial state; speakers: one id per stream when the graph has a speaker input.
  virtual void reset(int64_t batch, const std::vector<int64_t>& speakers) = 0;
  // tokens (batch,), cond_t (batch, C) or null → logits (batch, classes), valid until the next call.
  virtual const float* step(const int64_t* tokens, const float* cond_t) = 0;
  virtual const StepPlan& plan() const = 0;
};

class GraphRunner {
 public:
  virtual ~GraphRunner() = default;
  virtual Tensors run(const Tensors& inputs) = 0;  // by role
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual std::unique_ptr<StepRunner> open_step(const GraphInfo& graph) = 0;
  virtual std::unique_ptr<GraphRunner> open_graph(const GraphInfo& graph) = 0;
};

struct OrtOptions {
  int threads = 0;  // intra-op threads; 0: min(2, cores), like the Python host
};
std::unique_ptr<Backend> make_ort_backend(const OrtOptions& options = {});

struct TrtOptions {
  const Manifest* manifest = nullptr;  // to find engines ("engines" section) when `engine` is empty
  std::string engine;                  // explicit engine file for the graph that is opened
  bool verify = true;                  // check a manifest engine's sha256 before loading it
  int device = 0;                      // CUDA device
  bool cuda_graph = false;             // capture each step (enqueueV3 + state update) in a CUDA graph
};
bool have_tensorrt();  // false when this build was made without linking TensorRT
std::unique_ptr<Backend> make_trt_backend(const TrtOptions& options);

}  // namespace wn
