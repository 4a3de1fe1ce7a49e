// wn_loop_generate: the ONNX Runtime host's generation loop in native code. K steps per call: the token's
// embedding, the ring taps, the gate pre-activation (bias, speaker, per-sample conditioning), the layer
// chain and head of kernels.cc (the kernels of the fused WaveNetLayers / WaveNetHead ops, on the same
// packed weights), the ring-state update and the draw (sampler.cc: the float64 inverse CDF of
// reference_model.sampling, from the caller's SplitMix64 uniforms, or greedy). Python calls it through
// ctypes (wn_export/backends/onnxruntime/native_loop.py builds the plan from the fused step graph); no
// Python runs per sample. Contract: plugins/ort/README.md.
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

extern "C" {

// The model: shapes, and pointers into arrays the caller keeps alive (mirrored by native_loop.WnLoopModel).
struct WnLoopModel {
  int64_t R, G, L, P, S, H, Q, tokens, kernel, cond_channels, state_rows;
  const int64_t* ring_offset;  // (L) first row of layer l's ring in the state
  const int64_t* ring_length;  // (L) its length (K − 1)·d_l
  const float* embed;          // (tokens, R)
  const void* w_cond;          // packed C × L·2G (or null: no local conditioning)
  int64_t cond_half;
  const void *w_gate, *w_out, *w_skip;  // packed stacks, as the WaveNetLayers op takes them
  int64_t weights_half;                 // also the head's
  const float *b_skip, *alpha, *beta;
  double skip_scale;
  const void* head_w1;
  const float* head_b1;
  const void* head_w2;
  const float* head_b2;
  const float* input_bias;  // (L·R): added to the chain's x_l for the ring update
};

// One call: `steps` samples of `batch` streams (mirrored by native_loop.WnLoopRun).
struct WnLoopRun {
  int64_t batch, steps, position, split;  // split: wn::Split (0 alone, 1 pipeline, 2 rows)
  float* state;                            // (B, state_rows, R), updated in place
  const int64_t* first;                    // (B) the first step's input tokens
  const float* gate_base;                  // (B, L·2G) rows, stride gate_base_ld (0: shared): bias + speaker
  int64_t gate_base_ld;
  const float* cond;  // per-sample conditioning (B, C, steps) with element strides cond_sb, cond_sc, cond_st
  int64_t cond_sb, cond_sc, cond_st;
  const double* u;  // (steps, B) uniforms, or null: greedy
  double temperature;
  int64_t* tokens;   // (steps, B) out
  float* logits;     // (B, Q) out: the last step's logits
  int64_t* step_ns;  // (steps) out, or null: wall time of each step
  // (B) per-row temperatures, or null: `temperature` for every row. A row at 0 is greedy (its uniforms
  // unread), so streams with different settings share one batch.
  const double* temperatures;
};
}

namespace {

struct Loop {
  const WnLoopModel& m;
  const WnLoopRun& run;
  wn::LayersArgs layers;
  wn::HeadArgs head;
  float *x0, *taps, *gate_in, *cond_t;  // gate_in: with local conditioning only
  double* cdf;  // (2, cdf_ld): the sampler's scratch, one row per batch half
  int64_t cdf_ld;
  std::vector<int64_t> dilation;
  int64_t* phase;  // (2, L): (position + t) mod length_l for the current step t, then for step t + 1
  mutable int64_t now = 0;  // the current step (block() sets it between steps)

  // The first step's phases, then one step on (block() between steps: no other thread reads them then).
  void start_phases() const {
    for (int64_t l = 0; l < m.L; ++l) {
      phase[l] = run.position % m.ring_length[l];
      phase[m.L + l] = phase[l] + 1 == m.ring_length[l] ? 0 : phase[l] + 1;
    }
  }
  void next_phases() const {
    for (int64_t l = 0; l < m.L; ++l) {
      phase[l] = phase[m.L + l];
      phase[m.L + l] = phase[l] + 1 == m.ring_length[l] ? 0 : phase[l] + 1;
    }
  }

  // Layer l's ring taps of a step of streams [r0, r1) (ph: the step's phases).
  void layer_taps(int64_t l, const int64_t* ph, int64_t r0, int64_t r1) const {
    const int64_t R = m.R, L = m.L, P = m.P, K1 = m.kernel - 1;
    for (int64_t b = r0; b < r1; ++b) {
      const float* state = run.state + b * m.state_rows * R;
      for (int64_t j = 0; j < K1; ++j) {  // the sample of time t − (K−1)d + j·d: offset + (t + j·d) mod (K−1)d
        const int64_t i = ph[l] + j * dilation[l], n = m.ring_length[l];  // i < 2n: j·d < (K−1)·d = n
        std::memcpy(taps + (b * L + l) * P + j * R, state + (m.ring_offset[l] + (i < n ? i : i - n)) * R,
                    R * sizeof(float));
      }
    }
  }

  // The gate pre-activation's conditioning of step t of streams [r0, r1).
  void conditioning(int64_t t, int64_t r0, int64_t r1) const {
    const int64_t L = m.L, G2 = 2 * m.G, C = m.cond_channels;
    for (int64_t b = r0; b < r1; ++b)
      for (int64_t k = 0; k < C; ++k) cond_t[b * C + k] = run.cond[b * run.cond_sb + k * run.cond_sc + t * run.cond_st];
    if (C > 0)  // gate_in = gate_base + cond_t · W_cond
      wn::gemm_from(r1 - r0, 0, L * G2, cond_t + r0 * C, C, wn::Packed(m.w_cond, C, m.cond_half != 0),
                    run.gate_base + r0 * run.gate_base_ld, run.gate_base_ld, gate_in + r0 * L * G2, L * G2);
  }

  // Layer l's part of step `now`'s ring-state update (x_l + input_bias_l into row offset_l + t mod length_l of its
  // ring), then its taps of the next step (the ring rows are read again only by those). Alone, with layer l's skip
  // projection (LayersArgs::after_layer), where its cache misses overlap the weight stream; in the pipeline, for
  // every layer once the chain is done, on the calling thread while the helper finishes the skip sum.
  static void after_layer(const void* ctx, int64_t l, int64_t r0, int64_t r1) {
    const Loop& lp = *static_cast<const Loop*>(ctx);
    const WnLoopModel& m = lp.m;
    const int64_t R = m.R, L = m.L;
    for (int64_t b = r0; b < r1; ++b) {
      float* row = lp.run.state + (b * m.state_rows + m.ring_offset[l] + lp.phase[l]) * R;
      const float* x = lp.layers.X + (b * L + l) * R;
      for (int64_t i = 0; i < R; ++i) row[i] = x[i] + m.input_bias[l * R + i];
    }
    if (lp.now + 1 < lp.run.steps) lp.layer_taps(l, lp.phase + L, r0, r1);
  }

  // Once the layer chain is done (it has read this step's inputs), before the head: the ring update and next taps
  // in the pipeline, and the next step's conditioning.
  struct AfterChain {
    const Loop* loop;
    int64_t t;
    bool ring;
    static void run(const void* ctx, int64_t r0, int64_t r1) {
      const AfterChain& a = *static_cast<const AfterChain*>(ctx);
      if (a.ring)
        for (int64_t l = 0; l < a.loop->m.L; ++l) after_layer(a.loop, l, r0, r1);
      if (a.t + 1 < a.loop->run.steps && a.loop->m.cond_channels > 0) a.loop->conditioning(a.t + 1, r0, r1);
    }
  };

  // Step t of streams [r0, r1): everything from the input token to the drawn one (its inputs() are ready).
  void step(int64_t t, int64_t r0, int64_t r1, wn::Split split) const {
    const int64_t B = run.batch, R = m.R, Q = m.Q;
    const int64_t* prev = t == 0 ? run.first : run.tokens + (t - 1) * B;
    for (int64_t b = r0; b < r1; ++b) std::memcpy(x0 + b * R, m.embed + prev[b] * R, R * sizeof(float));
    const AfterChain after{this, t, layers.after_layer == nullptr};
    const wn::StepHook hook{AfterChain::run, &after};
    wn::run_step(layers, head, r0, r1, split, &hook);
    int64_t* out = run.tokens + t * B;
    double* c = cdf + (r0 == 0 ? 0 : cdf_ld);  // one row per thread
    for (int64_t b = r0; b < r1; ++b) {
      const float* logits = run.logits + b * Q;
      const double temperature = run.temperatures ? run.temperatures[b] : run.temperature;
      out[b] = run.u && temperature > 0 ? wn::sample_row(logits, Q, run.u[t * B + b], temperature, c)
                                         : wn::argmax_row(logits, Q);
    }
  }

  // Every step of the block. kRows splits each step's streams in two halves (one hand-over per step: a helper
  // that is descheduled stalls one step, then the caller works alone a while).
  void block(wn::Split split) const {
    struct Half {
      const Loop* loop;
      int64_t t;
    };
    for (int64_t t = 0; t < run.steps; ++t) {
      const auto t0 = std::chrono::steady_clock::now();
      now = t;
      if (t == 0) {  // then each step prepares the next one's
        start_phases();
        for (int64_t l = 0; l < m.L; ++l) layer_taps(l, phase, 0, run.batch);
        conditioning(0, 0, run.batch);
      } else {
        next_phases();
      }
      if (split == wn::kRows && run.batch > 1) {
        const Half half{this, t};
        wn::split_rows(run.batch, [](const void* c, int64_t r0, int64_t r1) {
          const Half& h = *static_cast<const Half*>(c);
          h.loop->step(h.t, r0, r1, wn::kAlone);
        }, &half);
      } else {
        step(t, 0, run.batch, split);
      }
      if (run.step_ns)
        run.step_ns[t] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    }
  }
};

}  // namespace

extern "C" {

// → 0, or 1 for inconsistent arguments, 2 for a first token outside [0, tokens).
__attribute__((visibility("default"))) int wn_loop_generate(const WnLoopModel* model, const WnLoopRun* run) {
  if (model == nullptr || run == nullptr) return 1;
  const WnLoopModel& m = *model;
  const WnLoopRun& r = *run;
  const int64_t B = r.batch, R = m.R, G = m.G, L = m.L, P = m.P, S = m.S, Q = m.Q;
  if (B < 1 || r.steps < 0 || r.position < 0 || L < 1 || m.kernel < 2 || P != (m.kernel - 1) * R || Q < 1 ||
      (r.u != nullptr && r.temperatures == nullptr && !(r.temperature > 0)) || (m.cond_channels > 0 && r.cond == nullptr) || r.split < 0 ||
      r.split > wn::kRows)
    return 1;
  for (int64_t b = 0; b < B; ++b)
    if (r.first[b] < 0 || r.first[b] >= m.tokens) return 2;
  if (r.temperatures != nullptr)
    for (int64_t b = 0; b < B; ++b)
      if (!(r.temperatures[b] >= 0) || (r.temperatures[b] > 0 && r.u == nullptr)) return 1;
  for (int64_t l = 0; l < L; ++l)
    if (m.ring_length[l] < 1 || m.ring_length[l] % (m.kernel - 1) != 0) return 1;
  if (r.steps == 0) return 0;
  thread_local std::vector<float> scratch;
  const int64_t C = m.cond_channels, line = wn::kAlign / static_cast<int64_t>(sizeof(float));
  scratch.resize(static_cast<size_t>(B * (R + L * P + (C > 0 ? L * 2 * G : 0) + C + S + L * R + L * G + 2 * G + R +
                                          L * 2 * G + S + m.H) + 12 * line));
  float* p = wn::align_up(scratch.data());
  auto take = [&p, line](int64_t n) {  // each on a cache line
    float* q = p;
    p += (n + line - 1) / line * line;
    return q;
  };
  float *x0 = take(B * R), *taps = take(B * L * P), *gate_in = take(C > 0 ? B * L * 2 * G : 0), *cond_t = take(B * C);
  float *skip = take(B * S), *X = take(B * L * R), *H = take(B * L * G), *acc = take(B * 2 * G), *res = take(B * R);
  float* pre = take(B * L * 2 * G);
  float* hidden = take(B * (S + m.H));
  thread_local std::vector<double> cdf;
  const int64_t cdf_ld = wn::sample_scratch(Q);
  cdf.resize(static_cast<size_t>(2 * cdf_ld));
  const bool half = m.weights_half != 0;
  Loop loop{m, r,
            // without local conditioning the gate's pre-activation is gate_base itself, read in place
            wn::LayersArgs{B, R, G, L, P, S, x0, taps, C > 0 ? gate_in : r.gate_base, C > 0 ? L * 2 * G : r.gate_base_ld,
                           wn::Packed(m.w_gate, P + R, half),
                           wn::Packed(m.w_out, G, half), wn::Packed(m.w_skip, G, half), m.b_skip, m.alpha, m.beta,
                           static_cast<float>(m.skip_scale), skip, X, H, acc, res, pre},
            wn::HeadArgs{B, S, m.H, Q, skip, wn::Packed(m.head_w1, S, half), m.head_b1, wn::Packed(m.head_w2, m.H, half),
                         m.head_b2, r.logits, hidden},
            x0, taps, gate_in, cond_t, cdf.data(), cdf_ld, {}, nullptr};
  for (int64_t l = 0; l < L; ++l) loop.dilation.push_back(m.ring_length[l] / (m.kernel - 1));
  std::vector<int64_t> phases(static_cast<size_t>(2 * L));
  loop.phase = phases.data();
  if (r.split != wn::kPipeline) {
    loop.layers.after_layer = Loop::after_layer;
    loop.layers.after_ctx = &loop;
  }
  loop.block(static_cast<wn::Split>(r.split));
  return 0;
}
}
