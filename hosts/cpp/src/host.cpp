// Sampling, generation, scoring, μ-law and WAV: the host side shared by every backend.
#include "wn/host.hpp"

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "wn/limits.hpp"

namespace wn {

// ---- sampling ---------------------------------------------------------------------------------------
double uniform(uint64_t seed, uint64_t k) {
  uint64_t z = seed + k * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1p-53;
}

int64_t inverse_cdf(const float* logits, int64_t classes, double u, double temperature, double* c) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < classes; ++i) {
    c[i] = static_cast<double>(logits[i]) / temperature;
    if (std::isnan(c[i]) || std::isnan(m)) m = std::numeric_limits<double>::quiet_NaN();
    else if (c[i] > m) m = c[i];
  }
  double sum = 0.0;
  for (int64_t i = 0; i < classes; ++i) {
    sum += std::exp(c[i] - m);
    c[i] = sum;
  }
  const double target = u * c[classes - 1];
  int64_t idx = 0;
  for (int64_t i = 0; i < classes; ++i) idx += c[i] <= target;
  return std::min(idx, classes - 1);
}

int64_t greedy(const float* logits, int64_t classes) {
  int64_t best = 0;
  for (int64_t i = 0; i < classes; ++i) {
    if (std::isnan(logits[i])) return i;  // numpy's argmax: the first nan wins
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

void check_temperature(double temperature) {
  if (!std::isfinite(temperature) || !(temperature >= static_cast<double>(FLT_MAX) / DBL_MAX)) {
    char got[64];
    std::snprintf(got, sizeof got, "%g", temperature);
    throw Error(std::string("temperature must be > 0, finite and at least 1.9e-270 (got ") + got +
                "); for the most likely sample use greedy sampling (--greedy)");
  }
}

namespace {
bool finite_logits(const float* logits, int64_t classes) {  // no NaN, no +inf (-inf is a zero probability)
  for (int64_t i = 0; i < classes; ++i)
    if (std::isnan(logits[i]) || logits[i] == std::numeric_limits<float>::infinity()) return false;
  return true;
}
}  // namespace

// ---- μ-law --------------------------------------------------------------------------------------------
float mulaw_decode(int64_t token, int64_t channels) {
  const double mu = static_cast<double>(channels - 1);
  const double f = 2.0 * static_cast<double>(token) / mu - 1.0;
  const double sign = f > 0 ? 1.0 : (f < 0 ? -1.0 : 0.0);
  return static_cast<float>(sign * std::expm1(std::fabs(f) * std::log1p(mu)) / mu);
}

int64_t mulaw_encode(double x, int64_t channels) {
  const double mu = static_cast<double>(channels - 1);
  x = std::clamp(x, -1.0, 1.0);
  const double sign = x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
  const double f = sign * std::log1p(mu * std::fabs(x)) / std::log1p(mu);
  return static_cast<int64_t>(std::floor((f + 1.0) / 2.0 * mu + 0.5));
}

int16_t to_pcm16(float x) {
  const double v = std::clamp(static_cast<double>(x), -1.0, 1.0) * 32767.0;
  return static_cast<int16_t>(std::nearbyint(v));  // default rounding: half to even, like numpy's round
}

// ---- generation -------------------------------------------------------------------------------------
int64_t check_chunk_bytes(int64_t batch, int64_t width) {
  const std::string what = "the chunk buffer";
  const int64_t bytes = checked_mul(checked_mul(batch, width, what), 8, what);  // (batch, width) int64
  if (bytes > limits::kMaxTensorBytes)
    throw Error(what + " of " + std::to_string(batch) + " streams x " + std::to_string(width) + " samples needs " +
                human_bytes(bytes) + ", more than the host allocates (" + human_bytes(limits::kMaxTensorBytes) +
                ", wn::limits::kMaxTensorBytes; use a smaller --chunk)");
  return bytes;
}

void generate(StepRunner& runner, const GenerateOptions& o, const ChunkSink& sink) {
  if (o.samples < 1 || o.samples > limits::kMaxSamples || o.batch < 1 || o.batch > limits::kMaxBatch)
    throw Error("need 1 to " + std::to_string(limits::kMaxSamples) + " samples and 1 to " +
                std::to_string(limits::kMaxBatch) + " streams (got n=" + std::to_string(o.samples) +
                ", batch=" + std::to_string(o.batch) + ")");
  if (!o.greedy) check_temperature(o.temperature);
  if (o.chunk < 1) throw Error("chunk must be >= 1");
  runner.reset(o.batch, o.speakers);
  const StepPlan& plan = runner.plan();
  const int64_t B = o.batch, Q = plan.classes, C = plan.cond_channels;
  if (Q != o.quantization_channels)
    throw Error("the step graph's logits have " + std::to_string(Q) + " classes but quantization_channels is " +
                std::to_string(o.quantization_channels));
  if (!plan.cond.empty()) {
    if (!o.cond) throw Error("this model needs per-sample conditioning (batch, " + std::to_string(C) + ", samples)");
    if (o.cond_channels != C || o.cond_time < o.samples)
      throw Error("conditioning must be (batch=" + std::to_string(B) + ", " + std::to_string(C) + ", >= " +
                  std::to_string(o.samples) + " samples), got (" + std::to_string(B) + ", " +
                  std::to_string(o.cond_channels) + ", " + std::to_string(o.cond_time) + ")");
  }
  std::vector<int64_t> token(B, o.quantization_channels / 2);
  std::vector<float> cond_t(static_cast<size_t>(B * std::max<int64_t>(C, 1)));
  std::vector<double> scratch(static_cast<size_t>(Q));
  const int64_t width = std::min(o.chunk, o.samples);
  check_chunk_bytes(B, width);
  std::vector<int64_t> out(static_cast<size_t>(B * width));
  int64_t filled = 0;
  for (int64_t t = 0; t < o.samples; ++t) {
    const float* cond = nullptr;
    if (!plan.cond.empty()) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) cond_t[b * C + c] = o.cond[(b * C + c) * o.cond_time + t];
      cond = cond_t.data();
    }
    const float* logits = runner.step(token.data(), cond);
    for (int64_t b = 0; b < B; ++b) {
      const float* l = logits + b * Q;
      if (!finite_logits(l, Q))
        throw Error("the step graph produced NaN or infinite logits at sample " + std::to_string(t) + " of stream " +
                    std::to_string(b) + " (non-finite weights or conditioning?)");
      token[b] = o.greedy ? greedy(l, Q)
                          : inverse_cdf(l, Q, uniform(o.seed, static_cast<uint64_t>(t * B + b + 1)), o.temperature,
                                        scratch.data());
      out[b * width + filled] = token[b];
    }
    ++filled;
    if (filled == width || t == o.samples - 1) {
      if (filled < width)  // last, short chunk: make the rows contiguous (batch, filled)
        for (int64_t b = 1; b < B; ++b)
          std::memmove(&out[b * filled], &out[b * width], static_cast<size_t>(filled) * sizeof(int64_t));
      sink(out.data(), filled);
      filled = 0;
    }
  }
}

// ---- scoring ----------------------------------------------------------------------------------------
ScoreResult score(GraphRunner& runner, const GraphInfo& graph, const Tensor& tokens, const Tensor* cond,
                  const std::vector<int64_t>& speakers) {
  if (tokens.shape.size() != 2 || tokens.shape[1] < 2)
    throw Error("scoring needs tokens (batch, time) with time >= 2, got " + shape_str(tokens.shape));
  const int64_t B = tokens.shape[0], T = tokens.shape[1];
  Tensors inputs;
  inputs["tokens"] = tokens;
  if (graph.input("cond")) {
    if (!cond) throw Error("conditioned models need --cond FILE (per-sample float32 features)");
    inputs["cond"] = *cond;
  }
  if (graph.input("speaker")) {
    if (speakers.size() != static_cast<size_t>(B))
      throw Error("this model needs one speaker id per stream (--speaker N)");
    Tensor s = Tensor::zeros(DType::Int64, {B});
    std::copy(speakers.begin(), speakers.end(), s.as<int64_t>());
    inputs["speaker"] = std::move(s);
  }
  Tensors out = runner.run(inputs);
  auto it = out.find("log_prob");
  if (it == out.end()) throw Error("graph '" + graph.name + "' has no log_prob output");
  const Tensor& lp = it->second;
  if (lp.shape != std::vector<int64_t>{B, T - 1})
    throw Error("log_prob has shape " + shape_str(lp.shape) + ", expected " + shape_str(std::vector<int64_t>{B, T - 1}));
  std::vector<float> values(static_cast<size_t>(lp.count()));
  to_float(lp.data.data(), lp.dtype, values.size(), values.data());
  ScoreResult r;
  r.batch = B;
  r.time = T;
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    double s = 0.0;
    for (int64_t t = 0; t < T - 1; ++t) s += values[b * (T - 1) + t];
    r.per_stream.push_back(s / static_cast<double>(T - 1));
    total += s;
  }
  r.mean = total / static_cast<double>(B * (T - 1));
  return r;
}

// ---- WAV --------------------------------------------------------------------------------------------
namespace {
void put_u32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void put_u16(unsigned char* p, uint16_t v) {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
}
uint32_t get_u32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24; }
uint16_t get_u16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
std::string cli_safe(const std::string& id) {  // a chunk id for a message: printable characters only
  std::string s;
  for (char c : id) s += (c >= 0x20 && c < 0x7f) ? c : '?';
  return s;
}

void wav_header(unsigned char* h, int64_t sample_rate, uint32_t data_bytes) {
  std::memcpy(h, "RIFF", 4);
  put_u32(h + 4, 36 + data_bytes);
  std::memcpy(h + 8, "WAVEfmt ", 8);
  put_u32(h + 16, 16);
  put_u16(h + 20, 1);  // PCM
  put_u16(h + 22, 1);  // mono
  put_u32(h + 24, static_cast<uint32_t>(sample_rate));
  put_u32(h + 28, static_cast<uint32_t>(sample_rate * 2));
  put_u16(h + 32, 2);
  put_u16(h + 34, 16);
  std::memcpy(h + 36, "data", 4);
  put_u32(h + 40, data_bytes);
}
}  // namespace

WavWriter::WavWriter(const std::string& path, int64_t sample_rate) : file_(path), sample_rate_(sample_rate) {
  if (sample_rate < 1 || sample_rate > limits::kMaxSampleRate)
    throw Error("cannot write " + path + ": sample rate " + std::to_string(sample_rate) + " is out of range");
  header();
}

void WavWriter::header() {
  unsigned char h[44];
  wav_header(h, sample_rate_, static_cast<uint32_t>(frames_ * 2));
  file_.write_at(h, sizeof h, 0);
}

void WavWriter::write(const int16_t* pcm, size_t count) {
  if (frames_ + static_cast<int64_t>(count) > limits::kMaxSamples)
    throw Error("cannot write " + file_.path() + ": more than " + std::to_string(limits::kMaxSamples) +
                " samples do not fit a WAV file");
  std::vector<unsigned char> bytes(count * 2);
  for (size_t i = 0; i < count; ++i) put_u16(&bytes[2 * i], static_cast<uint16_t>(pcm[i]));
  file_.write_at(bytes.data(), bytes.size(), 44 + 2 * frames_);
  frames_ += static_cast<int64_t>(count);
  header();  // a reader of the stream (or of a file left by SIGKILL) sees a valid WAV
}

void WavWriter::close() { file_.close(); }

void WavWriter::commit() { file_.commit(); }

std::vector<float> read_wav(const std::string& path, int64_t* sample_rate) {
  const std::vector<unsigned char> d = read_file(path, limits::kMaxInputBytes);
  auto bad = [&](const std::string& why) { return Error("cannot read WAV " + path + ": " + why); };
  if (d.size() < 12 || std::memcmp(d.data(), "RIFF", 4) || std::memcmp(d.data() + 8, "WAVE", 4))
    throw bad("not a RIFF/WAVE file");
  size_t pos = 12;
  int64_t channels = 0, bits = 0, align = 0;
  uint32_t rate = 0;
  const unsigned char* data = nullptr;
  size_t data_bytes = 0;
  while (pos + 8 <= d.size()) {
    const unsigned char* c = d.data() + pos;
    const size_t size = get_u32(c + 4);
    const size_t avail = d.size() - pos - 8;
    const std::string id(reinterpret_cast<const char*>(c), 4);
    if (size > avail)
      throw bad("truncated: chunk '" + cli_safe(id) + "' declares " + std::to_string(size) + " bytes, " +
                std::to_string(avail) + " follow");
    if (id == "fmt ") {
      if (size < 16) throw bad("fmt chunk of " + std::to_string(size) + " bytes (needs 16)");
      const uint16_t format = get_u16(c + 8);
      if (format != 1 && format != 0xFFFE) throw bad("only PCM WAV is supported (format " + std::to_string(format) + ")");
      channels = get_u16(c + 10);
      if (!channels) throw bad("the fmt chunk declares 0 channels");
      rate = get_u32(c + 12);
      align = get_u16(c + 20);
      bits = get_u16(c + 22);
    } else if (id == "data") {
      if (!channels) throw bad("data chunk before the fmt chunk");
      data = c + 8;
      data_bytes = size;
      break;
    }
    pos += 8 + size + (size & 1);
  }
  if (!channels || !data) throw bad("missing fmt or data chunk");
  if (bits != 16)
    throw Error(path + ": only 16-bit PCM WAV is supported (sample width " + std::to_string(bits / 8) + " bytes)");
  if (align != 2 * channels)
    throw bad("block align " + std::to_string(align) + " does not match " + std::to_string(channels) +
              " 16-bit channels");
  if (rate < 1 || rate > limits::kMaxSampleRate) throw bad("sample rate " + std::to_string(rate) + " is out of range");
  if (data_bytes % static_cast<size_t>(align)) throw bad("the data chunk is not a whole number of frames");
  const size_t frames = data_bytes / static_cast<size_t>(align);
  if (static_cast<int64_t>(frames) > limits::kMaxSamples)
    throw bad("more than " + std::to_string(limits::kMaxSamples) + " frames");
  std::vector<float> audio(frames);  // (frames,)
  const size_t C = static_cast<size_t>(channels);
  for (size_t i = 0; i < frames; ++i) {
    float s = 0.0f;
    for (size_t ch = 0; ch < C; ++ch) s += static_cast<float>(static_cast<int16_t>(get_u16(data + 2 * (i * C + ch)))) / 32768.0f;
    audio[i] = s / static_cast<float>(channels);
  }
  if (sample_rate) *sample_rate = rate;
  return audio;
}

}  // namespace wn
