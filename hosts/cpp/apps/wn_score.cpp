// wn_score: run the export's scoring graph on tokens and report the mean log-likelihood (log_prob output).
#include <cmath>
#include <cstdio>
#include <cstring>

#include "cli.hpp"
#include "wn/backend.hpp"
#include "wn/host.hpp"

namespace {

const char* kUsage = R"(usage: wn_score EXPORT_DIR (--tokens FILE | --wav FILE) [options]

Score token sequences with the export's scoring graph: prints the mean log-likelihood (nats per
predicted sample, the mean of the graph's log_prob output over batch x (time - 1) predictions).

      --tokens FILE       raw little-endian int64 tokens (batch, time), row-major
      --wav FILE          16-bit PCM WAV, μ-law encoded with the model's classes (one stream)
  -b, --batch B           streams in --tokens (default 1, at most 4096; time = size / (8 B))
      --graph NAME        scoring graph of the manifest (default: scoring; e.g. scoring.fp16)
      --speaker ID[,ID…]  global conditioning: a speaker id, or one per stream
      --cond FILE         local conditioning per sample: raw float32 (batch, C, time), row-major
      --backend NAME      onnxruntime (default) or tensorrt
      --engine FILE       TensorRT engine (default: the manifest's engine for the graph)
      --device N          TensorRT: CUDA device (default 0)
      --threads N         ONNX Runtime intra-op threads (default: min(2, cores))
      --json              print {"mean_log_likelihood", "per_stream", "batch", "time", "graph", "backend"}
      --no-verify         skip the sha256 check of the graph files
  -h, --help
)";

int run(int argc, char** argv) {
  cli::Args args(argc, argv,
                 {{"--tokens", "--tokens"}, {"--wav", "--wav"}, {"-b", "--batch"}, {"--batch", "--batch"},
                  {"--graph", "--graph"}, {"--speaker", "--speaker"}, {"--cond", "--cond"},
                  {"--backend", "--backend"}, {"--engine", "--engine"}, {"--device", "--device"},
                  {"--threads", "--threads"}, {"-h", "--help"}},
                 {"--json", "--no-verify", "--help"});
  if (args.has("--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (args.positional.size() != 1) throw cli::Usage("give exactly one EXPORT_DIR");
  if (args.has("--tokens") == args.has("--wav")) throw cli::Usage("give one of --tokens FILE or --wav FILE");
  const wn::Manifest manifest = wn::read_manifest(args.positional[0], !args.has("--no-verify"));
  const wn::GraphInfo& graph = manifest.graph(args.get("--graph", "scoring"));
  if (graph.kind != "scoring") throw wn::Error("graph '" + graph.name + "' is a " + graph.kind + " graph; pick a scoring graph with --graph");
  const int64_t Q = manifest.model.quantization_channels;
  if (!graph.input("tokens"))
    throw wn::Error("graph '" + graph.name + "' takes no tokens (a scalar-input model?); this host scores token "
                    "(one-hot input) models only");

  int64_t batch = args.integer("--batch", 1, 1, wn::limits::kMaxBatch);
  wn::Tensor tokens;
  if (args.has("--tokens")) {
    std::vector<unsigned char> raw = wn::read_file(args.get("--tokens"));
    const size_t row = static_cast<size_t>(batch) * sizeof(int64_t);
    if (raw.empty() || raw.size() % row)
      throw wn::Error("--tokens " + args.get("--tokens") + ": " + std::to_string(raw.size()) +
                      " bytes is not int64 (batch=" + std::to_string(batch) + ", time)");
    tokens = wn::Tensor::zeros(wn::DType::Int64, {batch, static_cast<int64_t>(raw.size() / row)});
    std::memcpy(tokens.data.data(), raw.data(), raw.size());
  } else {
    if (args.has("--batch") && batch != 1) throw cli::Usage("--wav scores one stream (no --batch)");
    int64_t rate = 0;
    std::vector<float> audio = wn::read_wav(args.get("--wav"), &rate);
    if (rate != manifest.model.sample_rate)
      throw wn::Error(args.get("--wav") + " is " + std::to_string(rate) + " Hz but the model expects " +
                      std::to_string(manifest.model.sample_rate) + " Hz");
    tokens = wn::Tensor::zeros(wn::DType::Int64, {1, static_cast<int64_t>(audio.size())});
    for (size_t i = 0; i < audio.size(); ++i) tokens.as<int64_t>()[i] = wn::mulaw_encode(audio[i], Q);
  }
  const int64_t T = tokens.shape[1];
  if (T < 2) throw wn::Error("scoring needs at least 2 tokens per stream (got " + std::to_string(T) + ")");
  // the scoring graph's logits (batch, time, Q) float32 are its largest tensor: bounded before running it
  const int64_t logits = wn::checked_mul(wn::checked_mul(wn::checked_mul(batch, T, "logits"), Q, "logits"), 4, "logits");
  if (logits > wn::limits::kMaxTensorBytes)
    throw wn::Error("scoring " + std::to_string(batch) + " x " + std::to_string(T) + " tokens needs " +
                    wn::human_bytes(logits) + " of logits, more than the host allocates (" +
                    wn::human_bytes(wn::limits::kMaxTensorBytes) + ", wn::limits::kMaxTensorBytes); score shorter pieces");
  for (int64_t i = 0; i < tokens.count(); ++i) {
    int64_t q = tokens.as<int64_t>()[i];
    if (q < 0 || q >= Q)
      throw wn::Error("token " + std::to_string(q) + " at index " + std::to_string(i) + " is outside [0, " +
                      std::to_string(Q) + ")");
  }

  std::vector<int64_t> speakers;
  if (graph.input("speaker") && !args.has("--speaker"))
    throw wn::Error("this model has " + std::to_string(manifest.model.speakers) +
                    " speakers (global conditioning): pass --speaker ID");
  if (!graph.input("speaker") && args.has("--speaker")) throw wn::Error("--speaker: this model has no global conditioning");
  if (args.has("--speaker")) speakers = cli::speakers(args.get("--speaker"), batch, manifest.model.speakers);

  wn::Tensor cond;
  if (graph.input("cond")) {
    const int64_t C = manifest.model.local_channels;
    if (C < 1) throw wn::Error("graph '" + graph.name + "' takes conditioning but the manifest's local_channels is 0");
    if (!args.has("--cond"))
      throw wn::Error("conditioned models need --cond FILE (per-sample raw float32 (batch, " + std::to_string(C) +
                      ", " + std::to_string(T) + "))");
    const int64_t want = wn::checked_mul(wn::checked_mul(wn::checked_mul(batch, C, "--cond"), T, "--cond"), 4, "--cond");
    const int64_t size = wn::file_size(args.get("--cond"));
    std::vector<unsigned char> raw;
    if (size < 0 || size == want) raw = wn::read_file(args.get("--cond"), std::min(want, wn::limits::kMaxInputBytes));
    if (static_cast<int64_t>(raw.size()) != want)
      throw wn::Error("--cond " + args.get("--cond") + ": " + std::to_string(size < 0 ? static_cast<int64_t>(raw.size()) : size) + " bytes, expected float32 (" +
                      std::to_string(batch) + ", " + std::to_string(C) + ", " + std::to_string(T) + ") = " +
                      std::to_string(want) + " bytes");
    cond = wn::Tensor::zeros(wn::DType::Float32, {batch, C, T});
    std::memcpy(cond.data.data(), raw.data(), raw.size());
    cli::check_finite(cond.as<float>(), static_cast<size_t>(cond.count()), "--cond " + args.get("--cond"));
  } else if (args.has("--cond")) {
    throw wn::Error("--cond: this model has no local conditioning");
  }

  std::unique_ptr<wn::Backend> backend = cli::backend(args, manifest);
  auto runner = backend->open_graph(graph);
  wn::ScoreResult r = wn::score(*runner, graph, tokens, cond.data.empty() ? nullptr : &cond, speakers);

  if (args.has("--json")) {
    std::printf("{\"mean_log_likelihood\": %.17g, \"per_stream\": [", r.mean);
    for (size_t i = 0; i < r.per_stream.size(); ++i) std::printf("%s%.17g", i ? ", " : "", r.per_stream[i]);
    std::printf("], \"batch\": %lld, \"time\": %lld, \"graph\": \"%s\", \"backend\": \"%s\"}\n", (long long)r.batch,
                (long long)r.time, graph.name.c_str(), backend->name().c_str());
  } else {
    std::printf("mean log-likelihood: %.9g nats/sample (%.4f bits) over %lld x %lld predictions [%s, %s]\n", r.mean,
                r.mean / std::log(2.0), (long long)r.batch, (long long)(r.time - 1), graph.name.c_str(),
                backend->name().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::guarded("wn_score", kUsage, [&] { return run(argc, argv); });
}
