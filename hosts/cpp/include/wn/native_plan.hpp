// The native generation loop's plan of a step graph: the export's `<graph>.native.safetensors` (format
// "wn-native-loop/1", wn_export/backends/onnxruntime/native_plan.py), recorded in the manifest's
// "native_loops" section. It holds the packed weights of the fused layer chain and head and everything else
// plugins/ort/loop.cc's wn_loop_generate needs (ring offsets and lengths, embedding, gate bias, speaker
// table, conditioning projection, input bias, dimensions, skip scale), exactly as the Python ONNX Runtime
// host derives them from the graph.
//
// read_native_plan reads it the hardened way (include/wn/safetensors.hpp) and checks, before the loop may
// index anything with it: the format and the graph it was derived from; every dimension (a decimal integer in
// range, P = (kernel − 1)·R); the exact set of tensors, each one's dtype and shape against the dimensions; the
// dimensions against the manifest (classes, rings = the graph's state rings, state rows and channels,
// conditioning channels, speakers); ring lengths that are multiples of kernel − 1; and every float finite.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "wn/backend.hpp"
#include "wn/manifest.hpp"

namespace wn {

struct PlanArray {
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  HostBuffer data;  // 64-byte aligned
  template <class T> const T* as() const { return static_cast<const T*>(data.data()); }
};

struct NativePlan {
  std::string file, weights;  // weights: "fp32" or "w16" (the layer chain's and the head's)
  int64_t R = 0, G = 0, L = 0, P = 0, S = 0, H = 0, Q = 0, tokens = 0, kernel = 0, cond_channels = 0,
          state_rows = 0, speakers = 0;  // speakers: rows of speaker_gate (0: no global conditioning)
  double skip_scale = 1.0;
  std::map<std::string, PlanArray> arrays;  // the tensors present in the file

  const PlanArray* find(const std::string& name) const;  // null when absent (speaker_gate, w_cond)
  const PlanArray& at(const std::string& name) const;
  int64_t weight_bytes() const;  // streamed per step: the packed matrices
};

NativePlan read_native_plan(const NativeInfo& info, const GraphInfo& graph, const ModelInfo& model);

// Bytes the native loop (native_loop.hpp generate_native) allocates for `batch` streams in chunks of `chunk`
// steps (with step times: `timed`), its per-step scratch included; a wn::Error naming limits::kMaxTensorBytes
// when they exceed it (generate_native checks it before allocating; a caller may check it before creating its
// outputs, wn_manifest_check for --batch).
int64_t check_loop_bytes(const NativePlan& plan, int64_t batch, int64_t chunk, bool timed);

}  // namespace wn
