// Generation with the native loop: plugins/ort/loop.cc's wn_loop_generate (with kernels.cc and sampler.cc,
// the sources of the Python ONNX Runtime host's library, compiled into this build with the same flags) on a
// step graph's plan (native_plan.hpp). The same draws as wn::generate: the first input Q/2, the reference
// contract's SplitMix64 uniforms (k = t·batch + b + 1) and float64 inverse CDF, or greedy; one native call per
// chunk, streamed to the sink.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "wn/host.hpp"
#include "wn/native_plan.hpp"

namespace wn {

// How a step's work is shared with the library's helper thread (wn::Split in plugins/ort/kernels.h).
enum class LoopSplit : int { Alone = 0, Pipeline = 1, Rows = 2 };

const char* split_name(LoopSplit split);
LoopSplit parse_split(const std::string& name);  // alone | pipeline | rows; a wn::Error otherwise
int usable_cores();                              // CPUs this process may run on
// The host's rule without a measurement: one usable core → alone; up to kPipelineMaxBatch streams → pipeline
// (the two threads stream different weights of every step); more → rows (each thread half of the streams).
constexpr int64_t kPipelineMaxBatch = 16;
LoopSplit default_split(int64_t batch);

struct NativeRunStats {
  std::vector<int64_t> step_ns;  // each step's wall time, when collected
};

// Run `options.samples` steps of `options.batch` streams on `plan` (whose graph `step` was planned for that
// batch), streaming (batch, ≤ chunk) token chunks to `sink`. Checks what wn::generate checks; a block whose last
// logits are NaN or +inf stops it with a wn::Error (the plan's weights were checked finite when read).
void generate_native(const NativePlan& plan, const StepPlan& step, const GenerateOptions& options, LoopSplit split,
                     const ChunkSink& sink, NativeRunStats* stats = nullptr);

}  // namespace wn
