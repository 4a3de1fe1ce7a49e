// wn-export manifest ("wn-export/1"): the I/O contract between an export directory and this host.
//
// read_manifest(dir) parses DIR/manifest.json, validates it the way the Python host does
// (format, required keys, graph files present, sha256 of every graph file and native loop plan unless
// verify=false) and returns the graphs' I/O descriptions by name. Every problem is a wn::Error with a one-line message.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace wn {

// The one exception type of the library: its message is one line meant for the user.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType { Float32, Float16, Float64, Int64, Int32 };
DType parse_dtype(const std::string& name);  // numpy names: float32, float16, float64, int64, int32
const char* dtype_name(DType t);
size_t dtype_size(DType t);

// One dimension of a manifest shape: a number, or a symbol ("batch", "time", "time-1", "frames" …).
struct Dim {
  int64_t value = -1;
  std::string symbol;  // non-empty: symbolic
  bool symbolic() const { return !symbol.empty(); }
};
using DimValues = std::map<std::string, int64_t>;  // symbol → value
// Resolve a shape with `dims`; "name-k" / "name+k" symbols are understood. Throws wn::Error.
std::vector<int64_t> resolve(const std::vector<Dim>& shape, const DimValues& dims);
std::string shape_str(const std::vector<Dim>& shape);
std::string shape_str(const std::vector<int64_t>& shape);
int64_t element_count(const std::vector<int64_t>& shape);

struct TensorInfo {
  std::string name, role;  // roles: tokens token cond speaker state position logits log_prob cond_samples
  DType dtype = DType::Float32;
  std::vector<Dim> shape;
};

enum class StateUpdate { Replace, Ring };

struct Ring {
  int64_t offset = 0, length = 0;
};

struct StateInfo {
  std::string input, output;
  DType dtype = DType::Float32;
  std::vector<Dim> shape;
  double init = 0.0;
  StateUpdate update = StateUpdate::Replace;
  std::string position;     // ring: the position input
  std::vector<Ring> rings;  // ring: per output row l, where its ring lives along the state's axis 1
};

struct GraphInfo {
  std::string name, file, path, kind, precision, sha256, layout;  // path = directory / file
  std::vector<TensorInfo> inputs, outputs;
  std::vector<StateInfo> state;

  const TensorInfo* input(const std::string& role) const;   // first input with this role, or null
  const TensorInfo* output(const std::string& role) const;  // first output with this role, or null
  const TensorInfo* find(const std::string& name) const;    // input or output by name, or null
};

// An engine entry ("engines" section, added by `wn-export trt`): only what a host needs to find it.
struct EngineInfo {
  std::string name, file, path, graph;  // graph: the manifest graph it was built from ("" if unknown)
  std::string sha256;                   // "" if the entry has none
};

// A step graph's native loop plan ("native_loops" section, written by the export when the graph has one):
// the file (safetensors), its format and sha256, and the graph it was derived from. Read by native_plan.hpp.
struct NativeInfo {
  std::string graph, file, path, format, sha256, graph_sha256;  // graph: the manifest graph (and the entry's key)
};

struct ModelInfo {
  int64_t quantization_channels = 256, receptive_field = 0, sample_rate = 16000;
  int64_t local_channels = 0, hop_size = 1, speakers = 0;
};

struct Manifest {
  std::string directory, path;
  ModelInfo model;
  std::map<std::string, GraphInfo> graphs;
  std::map<std::string, EngineInfo> engines;
  std::map<std::string, NativeInfo> native;  // by graph name

  // The native loop plan derived from `graph`, or null when the manifest records none.
  const NativeInfo* native_for(const std::string& graph) const;

  // The named graph, or a wn::Error listing the graphs there are.
  const GraphInfo& graph(const std::string& name) const;
  // The engine built from `graph` (entry keyed by the graph's name, or whose "graph"/"onnx" names it);
  // null when the manifest lists none.
  const EngineInfo* engine_for(const std::string& graph) const;
};

Manifest read_manifest(const std::string& directory, bool verify = true);

std::string sha256_file(const std::string& path);  // hex digest; throws wn::Error if unreadable

}  // namespace wn
