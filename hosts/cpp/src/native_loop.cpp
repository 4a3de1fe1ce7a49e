// Generation with plugins/ort's native loop (see include/wn/native_loop.hpp).
//
// loop.cc is compiled into this translation unit as it is: its structs WnLoopModel / WnLoopRun are the ones
// wn_loop_generate reads (one definition, no mirror to keep in step), and kernels.cc / sampler.cc are compiled
// into the same library with the flags of the Python host's build (hosts/cpp/CMakeLists.txt, wn_native).
#include "loop.cc"  // plugins/ort: wn_loop_generate, WnLoopModel, WnLoopRun (and kernels.h)

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sched.h>

#include "wn/limits.hpp"
#include "wn/native_loop.hpp"

namespace wn {

const char* split_name(LoopSplit split) {
  switch (split) {
    case LoopSplit::Alone: return "alone";
    case LoopSplit::Pipeline: return "pipeline";
    case LoopSplit::Rows: return "rows";
  }
  return "?";
}

LoopSplit parse_split(const std::string& name) {
  for (LoopSplit s : {LoopSplit::Alone, LoopSplit::Pipeline, LoopSplit::Rows})
    if (name == split_name(s)) return s;
  throw Error("unknown thread split '" + name.substr(0, 40) + "' (alone, pipeline or rows)");
}

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

LoopSplit default_split(int64_t batch) {
  if (usable_cores() < 2) return LoopSplit::Alone;
  return batch <= kPipelineMaxBatch ? LoopSplit::Pipeline : LoopSplit::Rows;
}

namespace {

WnLoopModel loop_model(const NativePlan& p) {
  WnLoopModel m{};
  m.R = p.R, m.G = p.G, m.L = p.L, m.P = p.P, m.S = p.S, m.H = p.H, m.Q = p.Q, m.tokens = p.tokens;
  m.kernel = p.kernel, m.cond_channels = p.cond_channels, m.state_rows = p.state_rows;
  m.ring_offset = p.at("ring_offset").as<int64_t>();
  m.ring_length = p.at("ring_length").as<int64_t>();
  m.embed = p.at("embed").as<float>();
  const PlanArray* w_cond = p.find("w_cond");
  m.w_cond = w_cond ? w_cond->data.data() : nullptr;
  m.cond_half = w_cond && w_cond->dtype == DType::Float16;
  m.w_gate = p.at("w_gate").data.data();
  m.w_out = p.at("w_out").data.data();
  m.w_skip = p.at("w_skip").data.data();
  m.weights_half = p.weights == "w16";
  m.b_skip = p.at("b_skip").as<float>();
  m.alpha = p.at("alpha").as<float>();
  m.beta = p.at("beta").as<float>();
  m.skip_scale = p.skip_scale;
  m.head_w1 = p.at("head_w1").data.data();
  m.head_b1 = p.at("head_b1").as<float>();
  m.head_w2 = p.at("head_w2").data.data();
  m.head_b2 = p.at("head_b2").as<float>();
  m.input_bias = p.at("input_bias").as<float>();
  return m;
}

bool finite_row(const float* l, int64_t n) {  // no NaN, no +inf (−inf is a zero probability)
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(l[i]) || l[i] == std::numeric_limits<float>::infinity()) return false;
  return true;
}

}  // namespace

void generate_native(const NativePlan& plan, const StepPlan& step, const GenerateOptions& o, LoopSplit split,
                     const ChunkSink& sink, NativeRunStats* stats) {
  if (o.samples < 1 || o.samples > limits::kMaxSamples || o.batch < 1 || o.batch > limits::kMaxBatch)
    throw Error("need 1 to " + std::to_string(limits::kMaxSamples) + " samples and 1 to " +
                std::to_string(limits::kMaxBatch) + " streams (got n=" + std::to_string(o.samples) + ", batch=" +
                std::to_string(o.batch) + ")");
  if (!o.greedy) check_temperature(o.temperature);
  if (o.chunk < 1) throw Error("chunk must be >= 1");
  const int64_t B = o.batch, Q = plan.Q, C = plan.cond_channels, LG2 = plan.L * 2 * plan.G;
  if (step.batch != B) throw Error("the step graph was planned for another batch");
  if (Q != o.quantization_channels)
    throw Error("the plan's logits have " + std::to_string(Q) + " classes but quantization_channels is " +
                std::to_string(o.quantization_channels));
  if (C > 0 && (!o.cond || o.cond_channels != C || o.cond_time < o.samples))
    throw Error("conditioning must be (batch=" + std::to_string(B) + ", " + std::to_string(C) + ", >= " +
                std::to_string(o.samples) + " samples)");
  const PlanArray* table = plan.find("speaker_gate");
  if (table && o.speakers.size() != static_cast<size_t>(B)) throw Error("this model needs one speaker id per stream");

  // ---- state (B, rows, R) at the manifest's initial value, the gate base, the first tokens
  const std::string what = "the native loop's buffers";
  const int64_t state_count = checked_mul(checked_mul(B, plan.state_rows, what), plan.R, what);
  const int64_t chunk = std::min(o.chunk, o.samples);
  check_loop_bytes(plan, B, chunk, stats != nullptr);
  HostBuffer state(static_cast<size_t>(state_count) * sizeof(float));
  for (const StepInit& init : step.inits)
    if (init.name == step.rings[0].state) fill(state.data(), DType::Float32, static_cast<size_t>(state_count), init.value);
  std::vector<float> gate_rows;
  if (table) {
    gate_rows.resize(static_cast<size_t>(B * LG2));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t s = o.speakers[b];
      if (s < 0 || s >= table->shape[0]) throw Error("speaker " + std::to_string(s) + " is out of range");
      std::memcpy(&gate_rows[b * LG2], table->as<float>() + s * LG2, static_cast<size_t>(LG2) * sizeof(float));
    }
  }
  std::vector<int64_t> first(static_cast<size_t>(B), Q / 2);
  std::vector<int64_t> tokens(static_cast<size_t>(chunk * B)), rows(static_cast<size_t>(chunk * B));
  std::vector<double> u(o.greedy ? 0 : static_cast<size_t>(chunk * B));
  std::vector<float> logits(static_cast<size_t>(B * Q));
  std::vector<int64_t> step_ns(stats ? static_cast<size_t>(chunk) : 0);

  const WnLoopModel model = loop_model(plan);
  for (int64_t t0 = 0; t0 < o.samples; t0 += chunk) {
    const int64_t steps = std::min(chunk, o.samples - t0);
    if (!o.greedy)
      for (int64_t i = 0; i < steps; ++i)
        for (int64_t b = 0; b < B; ++b)
          u[i * B + b] = uniform(o.seed, static_cast<uint64_t>((t0 + i) * B + b + 1));
    WnLoopRun run{};  // zero-initialised: fields this host does not set stay null / 0
    run.batch = B;
    run.steps = steps;
    run.position = t0;
    run.split = static_cast<int64_t>(split);
    run.state = static_cast<float*>(state.data());
    run.first = first.data();
    run.gate_base = table ? gate_rows.data() : plan.at("gate_bias").as<float>();
    run.gate_base_ld = table ? LG2 : 0;
    if (C > 0) {  // cond (B, C, cond_time) row-major, from sample t0
      run.cond = o.cond + t0;
      run.cond_sb = C * o.cond_time;
      run.cond_sc = o.cond_time;
      run.cond_st = 1;
    }
    run.u = o.greedy ? nullptr : u.data();
    run.temperature = o.temperature;
    run.tokens = tokens.data();
    run.logits = logits.data();
    run.step_ns = stats ? step_ns.data() : nullptr;
    const int rc = wn_loop_generate(&model, &run);
    if (rc != 0)
      throw Error(rc == 2 ? "the native loop's first tokens are outside the classes"
                          : "the native loop refused its arguments (an inconsistent plan)");
    for (int64_t b = 0; b < B; ++b)
      if (!finite_row(logits.data() + b * Q, Q))
        throw Error("the native loop produced NaN or infinite logits by sample " + std::to_string(t0 + steps - 1) +
                    " of stream " + std::to_string(b) + " (non-finite conditioning or weights that overflow?)");
    for (int64_t b = 0; b < B; ++b)  // (steps, B) → (B, steps)
      for (int64_t i = 0; i < steps; ++i) rows[b * steps + i] = tokens[i * B + b];
    std::memcpy(first.data(), tokens.data() + (steps - 1) * B, static_cast<size_t>(B) * sizeof(int64_t));
    if (stats) stats->step_ns.insert(stats->step_ns.end(), step_ns.begin(), step_ns.begin() + steps);
    sink(rows.data(), steps);
  }
}

}  // namespace wn
