// The host loop on top of a StepRunner / GraphRunner: seeded sampling identical to the Python host
// (reference_model/sampling.py), generation that streams token chunks, scoring, μ-law and WAV I/O.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "wn/backend.hpp"
#include "wn/files.hpp"
#include "wn/manifest.hpp"

namespace wn {

// ---- sampling (bit-exact with reference_model.sampling) ---------------------------------------------
// SplitMix64 draw k (k = 1, 2, …; at step t, stream b of `batch`: k = t·batch + b + 1) → u in [0, 1).
double uniform(uint64_t seed, uint64_t k);
// Inverse CDF in float64: z = l / T, p = exp(z − max z), c = cumsum(p), sample = #{i : c_i ≤ u·c_{Q−1}},
// clamped to Q − 1. `scratch` needs Q doubles.
int64_t inverse_cdf(const float* logits, int64_t classes, double u, double temperature, double* scratch);
int64_t greedy(const float* logits, int64_t classes);  // first index of the maximum
// wn::Error unless `temperature` is a usable sampling temperature: finite and large enough that
// logits / temperature stays finite for every float32 logit (>= FLT_MAX / DBL_MAX, about 1.9e-270).
void check_temperature(double temperature);

// ---- μ-law (reference_model/mulaw.py) ---------------------------------------------------------------
float mulaw_decode(int64_t token, int64_t channels);   // float64 formula, rounded to float32
int64_t mulaw_encode(double x, int64_t channels);
int16_t to_pcm16(float x);  // clip to [−1, 1], ·32767, round half to even (wn_export.audio.write_wav)

// ---- generation -------------------------------------------------------------------------------------
struct GenerateOptions {
  int64_t samples = 16000;  // per stream
  int64_t batch = 1;
  uint64_t seed = 0;
  bool greedy = false;
  double temperature = 1.0;
  int64_t quantization_channels = 256;
  std::vector<int64_t> speakers;  // one per stream, when the model has a speaker input
  // per-sample conditioning (batch, C, cond_time) float32, row-major, cond_time >= samples; null if none
  const float* cond = nullptr;
  int64_t cond_channels = 0, cond_time = 0;
  int64_t chunk = 4000;  // samples per stream per callback
};

// chunk(tokens, count): tokens (batch, count) row-major int64, stream-major within the chunk.
using ChunkSink = std::function<void(const int64_t* tokens, int64_t count)>;

// Run the step loop: first input Q/2 ("silence"), then each drawn token. Streams chunks to `sink`.
// Checks first: samples in [1, limits::kMaxSamples], the temperature, the graph's classes against
// quantization_channels, the conditioning's shape; logits with NaN or +inf stop it with a wn::Error.
void generate(StepRunner& runner, const GenerateOptions& options, const ChunkSink& sink);

// Bytes of generate's chunk buffer (batch, width) int64; a wn::Error naming limits::kMaxTensorBytes beyond it
// (generate checks it before allocating; a caller may check it before creating its outputs).
int64_t check_chunk_bytes(int64_t batch, int64_t width);

// ---- scoring ----------------------------------------------------------------------------------------
struct ScoreResult {
  double mean = 0.0;                 // mean log-likelihood over batch × (time − 1) predictions (nats)
  std::vector<double> per_stream;    // mean per stream
  int64_t batch = 0, time = 0;
};
// tokens (batch, time) int64; cond (batch, C, time) float32 or empty; speakers one per stream or empty.
ScoreResult score(GraphRunner& runner, const GraphInfo& graph, const Tensor& tokens, const Tensor* cond,
                  const std::vector<int64_t>& speakers);

// ---- WAV (16-bit PCM mono) --------------------------------------------------------------------------
// Streams samples to a temporary file next to `path` (header sizes kept current after every write),
// renamed over `path` by commit(); the destructor removes the temporary file unless committed.
class WavWriter {
 public:
  WavWriter(const std::string& path, int64_t sample_rate);
  void write(const int16_t* pcm, size_t count);
  void close();   // finalise the header; the file keeps its temporary name
  void commit();  // close(), then rename into place
  int64_t frames() const { return frames_; }

 private:
  void header();
  OutputFile file_;
  int64_t sample_rate_ = 0, frames_ = 0;
};

// 16-bit PCM WAV → float32 samples (x / 32768, channels averaged) and its sample rate. Strict: a
// truncated chunk, a data size that is not whole frames, or more than limits::kMaxSamples frames is a
// wn::Error; the file is refused before it is read when it is larger than limits::kMaxInputBytes.
std::vector<float> read_wav(const std::string& path, int64_t* sample_rate);

}  // namespace wn
