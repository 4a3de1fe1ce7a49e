// wn_export::WaveNetStep as a TensorRT IPluginV3 for C++ programs: the fused WaveNet step kernel's PTX
// (carried by the fused step graph's node, `wn-export onnx --fused-step`) loaded with cuModuleLoadData
// and launched with cuLaunchKernel.
//
// Contract (wn_export/contract/specs.py: WAVENET_STEP_PLUGIN; plugins/triton/README.md):
//   inputs   0 token (B) int64 | 1 cond (B, C) float32 | 2 speaker (B) int64 | 3 state (B, N, R) fp16/fp32 |
//            4 position (1) int64 | 5 weights (size) state dtype | 6 layer_table (L, 3) int32 |
//            7 speaker_table float32   (absent conditioning: 1-element stand-ins the kernel never reads)
//   outputs  0 logits (B, Q) float32 | 1 state_update (B, L, R) state dtype
//   fields   ptx, kernel (strings), num_warps, shared_bytes, layers, classes (int32)
//   launch   grid (B, 1, 1), block (32 * num_warps, 1, 1), shared_bytes of dynamic shared memory,
//            parameters: the 8 input pointers, int32 layers, int32 N, the 2 output pointers.
// The state input is only read: the host writes state_update into the ring (manifest rule "ring").
//
// Loading: the library exports setLoggerFinder / getCreators (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins), or link it and call wn_trt_plugin_creator(). The engine serializes the fields, so
// a runtime that loads this library deserializes engines built with it.
#include "wn_trt_plugin.hpp"

#include <cuda.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace wn {
namespace {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IExprBuilder;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginResourceContext;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

constexpr char const* kName = "WaveNetStep";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "wn_export";
constexpr int32_t kInputs = 8;
constexpr int32_t kOutputs = 2;
enum Slot : int32_t { kToken, kCond, kSpeaker, kState, kPosition, kWeights, kLayerTable, kSpeakerTable, kLogits, kUpdate };

nvinfer1::ILogger* gLogger = nullptr;

void log_error(std::string const& msg) noexcept {
  if (gLogger) gLogger->log(nvinfer1::ILogger::Severity::kERROR, (std::string("wn_export::WaveNetStep: ") + msg).c_str());
}

struct Fields {
  std::string ptx, kernel;
  int32_t num_warps = 0, shared_bytes = 0, layers = 0, classes = 0;

  bool valid() const { return !ptx.empty() && !kernel.empty() && num_warps > 0 && shared_bytes >= 0 && layers > 0 && classes > 0; }
};

std::string text(PluginField const& f) {  // ONNX string attributes arrive NUL-terminated
  std::string s(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

bool read_fields(PluginFieldCollection const* fc, Fields& out) {
  if (!fc) return false;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (!f.name || !f.data) continue;
    std::string const name = f.name;
    bool const is_int = f.type == PluginFieldType::kINT32 && f.length == 1;
    int32_t const value = is_int ? *static_cast<int32_t const*>(f.data) : 0;
    if (name == "ptx" && f.type == PluginFieldType::kCHAR) out.ptx = text(f);
    else if (name == "kernel" && f.type == PluginFieldType::kCHAR) out.kernel = text(f);
    else if (name == "num_warps" && is_int) out.num_warps = value;
    else if (name == "shared_bytes" && is_int) out.shared_bytes = value;
    else if (name == "layers" && is_int) out.layers = value;
    else if (name == "classes" && is_int) out.classes = value;
  }
  return out.valid();
}

bool is_float(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }

class WaveNetStepPlugin final : public IPluginV3,
                                public nvinfer1::IPluginV3OneCore,
                                public nvinfer1::IPluginV3OneBuild,
                                public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit WaveNetStepPlugin(Fields f) : f_(std::move(f)) { refresh_serialized(); }
  WaveNetStepPlugin(WaveNetStepPlugin const& o) : f_(o.f_) { refresh_serialized(); }
  WaveNetStepPlugin& operator=(WaveNetStepPlugin const&) = delete;
  ~WaveNetStepPlugin() override {
    if (module_) cuModuleUnload(module_);
  }

  // IPluginV3
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override {
    try {
      return new WaveNetStepPlugin(*this);
    } catch (...) {
      return nullptr;
    }
  }

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kName; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return kOutputs; }

  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in, int32_t nbInputs) const noexcept override {
    if (nbInputs != kInputs || nbOutputs != kOutputs) return -1;
    out[0] = DataType::kFLOAT;  // logits
    out[1] = in[kState];         // state_update: the state's dtype
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder& b) noexcept override {
    if (nbInputs != kInputs || nbOutputs != kOutputs || in[kToken].nbDims != 1 || in[kState].nbDims != 3) return -1;
    out[0].nbDims = 2;  // (B, Q)
    out[0].d[0] = in[kToken].d[0];
    out[0].d[1] = b.constant(f_.classes);
    out[1].nbDims = 3;  // (B, L, R)
    out[1].d[0] = in[kState].d[0];
    out[1].d[1] = b.constant(f_.layers);
    out[1].d[2] = in[kState].d[2];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != kInputs || nbOutputs != kOutputs || pos < 0 || pos >= kInputs + kOutputs) return false;
    PluginTensorDesc const& d = io[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    switch (pos) {
      case kToken: case kSpeaker: case kPosition: return d.type == DataType::kINT64;
      case kCond: case kSpeakerTable: case kLogits: return d.type == DataType::kFLOAT;
      case kLayerTable: return d.type == DataType::kINT32;
      case kState: return is_float(d.type);
      default: return d.type == io[kState].desc.type;  // weights, state_update: the state's dtype
    }
  }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                          int32_t nbOutputs) noexcept override {
    return nbInputs == kInputs && nbOutputs == kOutputs && in[kState].desc.dims.nbDims == 3 ? 0 : -1;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept override {
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept override {
    return nbInputs == kInputs && nbOutputs == kOutputs && in[kToken].dims.nbDims == 1 && in[kState].dims.nbDims == 3 ? 0 : -1;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    if (!load()) return -1;
    auto const batch = static_cast<unsigned>(inputDesc[kToken].dims.d[0]);  // one CTA per stream
    auto rows = static_cast<int32_t>(inputDesc[kState].dims.d[1]);          // N
    int32_t layers = f_.layers;
    void* pointers[kInputs + kOutputs];
    for (int32_t i = 0; i < kInputs; ++i) pointers[i] = const_cast<void*>(inputs[i]);
    for (int32_t i = 0; i < kOutputs; ++i) pointers[kInputs + i] = outputs[i];
    void* args[kInputs + 2 + kOutputs];
    for (int32_t i = 0; i < kInputs; ++i) args[i] = &pointers[i];
    args[kInputs] = &layers;
    args[kInputs + 1] = &rows;
    for (int32_t i = 0; i < kOutputs; ++i) args[kInputs + 2 + i] = &pointers[kInputs + i];
    CUresult r = cuLaunchKernel(function_, batch, 1, 1, static_cast<unsigned>(32 * f_.num_warps), 1, 1,
                                static_cast<unsigned>(f_.shared_bytes), reinterpret_cast<CUstream>(stream), args, nullptr);
    return check(r, "cuLaunchKernel") ? 0 : -1;
  }

  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &collection_; }

 private:
  bool check(CUresult r, char const* what) const noexcept {
    if (r == CUDA_SUCCESS) return true;
    char const* msg = nullptr;
    cuGetErrorString(r, &msg);
    log_error(std::string(what) + " failed: " + (msg ? msg : "unknown error"));
    return false;
  }

  bool load() noexcept {  // once per plugin object, in the context TensorRT runs it in
    if (function_) return true;
    if (!check(cuModuleLoadData(&module_, f_.ptx.c_str()), "cuModuleLoadData")) return false;
    return check(cuModuleGetFunction(&function_, module_, f_.kernel.c_str()), "cuModuleGetFunction");
  }

  void refresh_serialized() {
    fields_ = {PluginField("ptx", f_.ptx.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(f_.ptx.size() + 1)),
               PluginField("kernel", f_.kernel.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(f_.kernel.size() + 1)),
               PluginField("num_warps", &f_.num_warps, PluginFieldType::kINT32, 1),
               PluginField("shared_bytes", &f_.shared_bytes, PluginFieldType::kINT32, 1),
               PluginField("layers", &f_.layers, PluginFieldType::kINT32, 1),
               PluginField("classes", &f_.classes, PluginFieldType::kINT32, 1)};
    collection_.nbFields = static_cast<int32_t>(fields_.size());
    collection_.fields = fields_.data();
  }

  Fields f_;
  CUmodule module_ = nullptr;
  CUfunction function_ = nullptr;
  std::vector<PluginField> fields_;
  PluginFieldCollection collection_{};
};

class WaveNetStepCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  WaveNetStepCreator() {
    names_ = {PluginField("ptx", nullptr, PluginFieldType::kCHAR, 0), PluginField("kernel", nullptr, PluginFieldType::kCHAR, 0),
              PluginField("num_warps", nullptr, PluginFieldType::kINT32, 1),
              PluginField("shared_bytes", nullptr, PluginFieldType::kINT32, 1),
              PluginField("layers", nullptr, PluginFieldType::kINT32, 1),
              PluginField("classes", nullptr, PluginFieldType::kINT32, 1)};
    collection_.nbFields = static_cast<int32_t>(names_.size());
    collection_.fields = names_.data();
  }

  IPluginV3* createPlugin(char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase) noexcept override {
    try {
      Fields f;
      if (!read_fields(fc, f)) {
        log_error(std::string("node ") + (name ? name : "?") + " lacks ptx, kernel, num_warps, shared_bytes, layers or classes");
        return nullptr;
      }
      return new WaveNetStepPlugin(std::move(f));
    } catch (...) {
      return nullptr;
    }
  }

  PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
  char const* getPluginName() const noexcept override { return kName; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  std::vector<PluginField> names_;
  PluginFieldCollection collection_{};
};

}  // namespace

nvinfer1::IPluginCreatorV3One* wn_trt_plugin_creator() {
  static WaveNetStepCreator creator;
  return &creator;
}

}  // namespace wn

extern "C" {

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  wn::gLogger = finder ? finder->findLogger() : nullptr;
}

nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {wn::wn_trt_plugin_creator()};
  nbCreators = 1;
  return creators;
}

}  // extern "C"
