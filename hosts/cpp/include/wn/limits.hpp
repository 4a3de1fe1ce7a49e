// The host's resource limits and overflow-checked arithmetic.
//
// Every number that reaches an allocation or an index (manifest shapes, ring offsets, batch, samples,
// file sizes) is checked against these limits first. They are far above what a real WaveNet needs; a
// message that hits one names the constant here, which is where to raise it.
#pragma once

#include <cstdint>
#include <string>

namespace wn {
namespace limits {

constexpr int64_t kMaxBatch = 4096;                        // streams per run (wn_generate, wn_score)
constexpr int64_t kMaxSamples = (int64_t{1} << 31) - 32;   // samples per stream: a 16-bit WAV's data size is 32-bit
constexpr int64_t kMaxClasses = 65536;                     // quantization channels (μ-law classes)
constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;        // one numeric manifest dimension; also receptive_field
constexpr int64_t kMaxSampleRate = (int64_t{1} << 31) - 1; // WAV byte rate (2 · rate) is 32-bit
constexpr size_t kMaxRank = 8;                             // tensor rank in a manifest shape
constexpr int64_t kMaxTensorBytes = int64_t{8} << 30;      // all buffers of a step plan; one scoring run's logits
constexpr int64_t kMaxInputBytes = int64_t{1} << 30;       // a tokens / conditioning / WAV file read whole
constexpr int64_t kMaxManifestBytes = int64_t{16} << 20;   // manifest.json
constexpr int kMaxJsonDepth = 32;                          // nesting of manifest.json (it needs 6)
constexpr int64_t kMaxPlanBytes = int64_t{4} << 30;        // a native loop plan file (safetensors): its weights
constexpr int64_t kMaxPlanHeaderBytes = int64_t{1} << 20;  // its JSON header (a real one is ~2 KiB)
constexpr int64_t kMaxPlanTensors = 64;                    // tensors in it (a plan has at most 20)
constexpr int64_t kMaxThreads = 1024;                      // --threads
constexpr int64_t kMaxDevice = 1024;                       // --device

}  // namespace limits

// "1.5 GiB" / "512 bytes": a size for messages.
std::string human_bytes(int64_t bytes);

// a · b, or a wn::Error naming `what` when the product overflows int64 or a factor is negative.
int64_t checked_mul(int64_t a, int64_t b, const std::string& what);
// a + b, likewise.
int64_t checked_add(int64_t a, int64_t b, const std::string& what);

}  // namespace wn
