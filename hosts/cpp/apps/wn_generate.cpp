// wn_generate: sample audio from an exported WaveNet (manifest + step graph) and write 16-bit PCM WAV.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.hpp"
#include "wn/backend.hpp"
#include "wn/host.hpp"
#include "wn/native_loop.hpp"
#include "wn/native_plan.hpp"

namespace {

const char* kUsage = R"(usage: wn_generate EXPORT_DIR -o OUT.wav [options]

Generate audio sample by sample with the export's step graph, seeded exactly like the Python host
(`wn-export generate`): the same seed gives the same samples. Writes μ-law decoded 16-bit PCM mono WAV,
streamed to disk as it is generated.

When the manifest records the graph's native loop plan (`native_loops`: STEP.native.safetensors, written by
`wn-export onnx` for ring-layout FP32 and w16 step graphs), the ONNX Runtime backend runs the native loop of
the Python host (plugins/ort: the fused layer chain and head, whole chunks of steps per call) on the plan's
packed weights, drawing the Python host's tokens; otherwise it steps the graph through ONNX Runtime. The first
line on stderr says which path runs.

  -o, --output FILE       WAV to write; with --batch B > 1 one file per stream: OUT_0.wav … OUT_<B-1>.wav
                          (written under a temporary name and renamed when complete; never inside EXPORT_DIR)
  -n, --samples N         samples per stream (default: one second at the model's sample rate; at most 2^31-32)
      --seconds S         duration instead of --samples
  -b, --batch B           independent streams (default 1, at most 4096)
  -s, --seed S            sampling seed, 0 … 2^64-1 (default 0)
  -t, --temperature T     sampling temperature (default 1.0)
      --greedy            argmax instead of sampling
      --graph NAME        step graph of the manifest (default: step; e.g. step.fp16)
      --backend NAME      onnxruntime (default) or tensorrt
      --engine FILE       TensorRT engine (default: the manifest's engine for the graph)
      --cuda-graph        TensorRT: replay every step as a captured CUDA graph
      --device N          TensorRT: CUDA device (default 0)
      --speaker ID[,ID…]  global conditioning: a speaker id, or one per stream
      --cond FILE         local conditioning per sample: raw little-endian float32 (batch, C, >= N), row-major
      --cond-frames FILE  local conditioning per frame: raw float32 (batch, C, frames), upsampled by the
                          export's upsample graph (ONNX Runtime)
      --tokens FILE       also write the tokens: raw int64 (batch, N), row-major
      --threads N         ONNX Runtime intra-op threads (default: min(2, cores), as the Python host)
      --no-native         step the graph through ONNX Runtime even when the manifest has a native loop plan
      --split WAY         native loop: how a step is shared with the helper thread: alone, pipeline, rows or
                          auto (default: one usable core → alone; batch <= 16 → pipeline; else rows); a
                          usage error when the native loop does not run
      --json              print one JSON line on stdout: the path, the split, samples/s, step time p50/p99
      --chunk N           samples per stream per write (default 4000)
      --no-verify         skip the sha256 check of the graph files
  -q, --quiet             no progress on stderr
  -h, --help
)";

std::string stream_path(const std::string& out, int64_t b, int64_t batch) {
  if (batch == 1) return out;
  auto dot = out.find_last_of('.');
  auto slash = out.find_last_of('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return out + "_" + std::to_string(b);
  return out.substr(0, dot) + "_" + std::to_string(b) + out.substr(dot);
}

// raw float32 file (batch, C, T) → data, T; sizes checked before reading, values checked finite.
std::vector<float> read_features(const std::string& path, int64_t batch, int64_t channels, int64_t* time,
                                 const char* option) {
  const int64_t row = wn::checked_mul(wn::checked_mul(batch, channels, option), sizeof(float), option);
  std::vector<unsigned char> raw = wn::read_file(path);
  if (raw.empty() || raw.size() % static_cast<size_t>(row))
    throw wn::Error(std::string(option) + " " + path + ": " + std::to_string(raw.size()) +
                    " bytes is not a whole number of float32 (batch=" + std::to_string(batch) + ", channels=" +
                    std::to_string(channels) + ", time) frames");
  std::vector<float> data(raw.size() / sizeof(float));
  std::memcpy(data.data(), raw.data(), raw.size());
  cli::check_finite(data.data(), data.size(), std::string(option) + " " + path);
  *time = static_cast<int64_t>(raw.size()) / row;
  return data;
}

// Every stream's WAV and the tokens file need a descriptor at once: raise the soft limit if it is too low.
void ensure_open_files(int64_t batch) {
  const rlim_t needed = static_cast<rlim_t>(batch) + 256;  // + ONNX Runtime, standard streams, tokens
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= needed) return;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < needed)
    throw wn::Error("--batch " + std::to_string(batch) + " writes " + std::to_string(batch) +
                    " files at once, but this process may open only " + std::to_string(rl.rlim_max) +
                    " (ulimit -n); use a smaller --batch");
  rl.rlim_cur = needed;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0)
    throw wn::Error("--batch " + std::to_string(batch) + ": cannot raise the open-file limit (ulimit -n)");
}

// --json: one line on stdout for scripts (the bench): what ran, and how fast (step times: native loop only).
void print_json(const std::string& path, const std::string& setup, const std::string& split, int64_t batch,
                int64_t samples, double seconds, std::vector<int64_t> step_ns) {
  auto quoted = [](const std::string& s) {
    std::string q = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') q += '\\';
      if (static_cast<unsigned char>(c) >= 0x20) q += c;
    }
    return q + "\"";
  };
  auto percentile = [&step_ns](double p) -> std::string {
    if (step_ns.empty()) return "null";
    const size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(step_ns.size() - 1) + 0.5);
    std::nth_element(step_ns.begin(), step_ns.begin() + static_cast<long>(i), step_ns.end());
    return std::to_string(static_cast<double>(step_ns[i]) * 1e-6);
  };
  std::printf("{\"path\": %s, \"setup\": %s, \"split\": %s, \"batch\": %lld, \"samples\": %lld, "
              "\"seconds\": %.6f, \"samples_per_s\": %.3f, \"step_ms_p50\": %s, \"step_ms_p99\": %s}\n",
              quoted(path).c_str(), quoted(setup).c_str(), split.empty() ? "null" : quoted(split).c_str(),
              (long long)batch, (long long)samples, seconds, static_cast<double>(samples) / std::max(seconds, 1e-9),
              percentile(50).c_str(), percentile(99).c_str());
}

int run(int argc, char** argv) {
  cli::Args args(argc, argv,
                 {{"-o", "--output"}, {"--output", "--output"}, {"-n", "--samples"}, {"--samples", "--samples"},
                  {"--seconds", "--seconds"}, {"-b", "--batch"}, {"--batch", "--batch"}, {"-s", "--seed"},
                  {"--seed", "--seed"}, {"-t", "--temperature"}, {"--temperature", "--temperature"},
                  {"--graph", "--graph"}, {"--backend", "--backend"}, {"--engine", "--engine"},
                  {"--device", "--device"}, {"--speaker", "--speaker"}, {"--cond", "--cond"},
                  {"--cond-frames", "--cond-frames"}, {"--tokens", "--tokens"}, {"--threads", "--threads"},
                  {"--chunk", "--chunk"}, {"--split", "--split"}, {"-q", "--quiet"}, {"-h", "--help"}},
                 {"--greedy", "--cuda-graph", "--no-verify", "--no-native", "--json", "--quiet", "--help"});
  if (args.has("--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  // ---- arguments and limits: checked before anything is read or created
  if (args.positional.size() != 1) throw cli::Usage("give exactly one EXPORT_DIR");
  if (!args.has("--output")) throw cli::Usage("-o/--output OUT.wav is required");
  const bool quiet = args.has("--quiet");
  const bool tty = !quiet && ::isatty(STDERR_FILENO);
  const std::string out = args.get("--output");
  const int64_t batch = args.integer("--batch", 1, 1, wn::limits::kMaxBatch);
  uint64_t seed = 0;
  if (args.has("--seed")) {
    const std::string s = args.get("--seed");
    char* end = nullptr;
    errno = 0;
    seed = std::strtoull(s.c_str(), &end, 10);
    if (s.empty() || *end || errno || s[0] == '-') throw cli::Usage("--seed must be an integer in [0, 2^64) (got '" + s + "')");
  }
  wn::GenerateOptions opt;
  opt.batch = batch;
  opt.seed = seed;
  opt.greedy = args.has("--greedy");
  opt.temperature = args.number("--temperature", 1.0);
  opt.chunk = args.integer("--chunk", 4000, 1, wn::limits::kMaxSamples);
  if (!opt.greedy) wn::check_temperature(opt.temperature);
  const std::string split_arg = args.get("--split", "auto");
  if (split_arg != "auto" && split_arg != "alone" && split_arg != "pipeline" && split_arg != "rows")
    throw cli::Usage("--split must be auto, alone, pipeline or rows (got '" + split_arg + "')");
  const std::string backend_name = args.get("--backend", "onnxruntime");
  if (backend_name != "tensorrt")
    for (const char* option : {"--engine", "--cuda-graph", "--device"})
      if (args.has(option))
        throw cli::Usage(std::string(option) + " is a TensorRT option; it needs --backend tensorrt");
  args.integer("--threads", 0, 0, wn::limits::kMaxThreads);  // checked here too: the native loop never reads it

  // ---- the manifest, validated for this batch
  const wn::Manifest manifest = wn::read_manifest(args.positional[0], !args.has("--no-verify"));
  const wn::GraphInfo& graph = manifest.graph(args.get("--graph", "step"));
  if (graph.kind != "step") throw wn::Error("graph '" + graph.name + "' is a " + graph.kind + " graph; pick a step graph with --graph");
  const wn::StepPlan plan = wn::plan_step(graph, batch);
  const int64_t rate = manifest.model.sample_rate;
  opt.quantization_channels = manifest.model.quantization_channels;
  if (plan.classes != opt.quantization_channels)
    throw wn::Error("graph '" + graph.name + "' has " + std::to_string(plan.classes) +
                    " logits per sample but the manifest's quantization_channels is " +
                    std::to_string(opt.quantization_channels));
  int64_t samples = rate;
  if (args.has("--seconds")) {
    const double seconds = args.number("--seconds", 1.0);
    if (!(seconds > 0) || !(seconds * static_cast<double>(rate) < static_cast<double>(wn::limits::kMaxSamples)))
      throw cli::Usage("--seconds must be > 0 and at most " +
                       std::to_string(wn::limits::kMaxSamples / rate) + " at " + std::to_string(rate) + " Hz");
    samples = std::max<int64_t>(1, static_cast<int64_t>(seconds * static_cast<double>(rate) + 0.5));
  }
  samples = args.integer("--samples", samples, 1, wn::limits::kMaxSamples);
  opt.samples = samples;

  // ---- conditioning, checked against what the graph takes
  const wn::TensorInfo* speaker = graph.input("speaker");
  if (speaker && !args.has("--speaker"))
    throw wn::Error("this model has " + std::to_string(manifest.model.speakers) +
                    " speakers (global conditioning): pass --speaker ID (0.." +
                    std::to_string(manifest.model.speakers - 1) + ")");
  if (!speaker && args.has("--speaker")) throw wn::Error("--speaker: this model has no global conditioning");
  if (speaker) opt.speakers = cli::speakers(args.get("--speaker"), batch, manifest.model.speakers);
  const bool conditioned = !plan.cond.empty();
  if (conditioned && plan.cond_channels != manifest.model.local_channels)
    throw wn::Error("graph '" + graph.name + "' takes " + std::to_string(plan.cond_channels) +
                    " conditioning channels but the manifest's local_channels is " +
                    std::to_string(manifest.model.local_channels));
  if (!conditioned && (args.has("--cond") || args.has("--cond-frames")))
    throw wn::Error("--cond: this model has no local conditioning");
  if (conditioned && !args.has("--cond") && !args.has("--cond-frames"))
    throw wn::Error("conditioned models need --cond FILE (per-sample raw float32 (batch, " +
                    std::to_string(plan.cond_channels) + ", >= " + std::to_string(samples) + ")) or --cond-frames FILE");

  // ---- outputs: never an input of this run, never inside the export; checked before any is created
  std::vector<std::string> outputs, inputs{manifest.path};
  for (int64_t b = 0; b < batch; ++b) outputs.push_back(stream_path(out, b, batch));
  if (args.has("--tokens")) outputs.push_back(args.get("--tokens"));
  for (const auto& [name, g] : manifest.graphs) inputs.push_back(g.path);
  for (const auto& [name, e] : manifest.engines) inputs.push_back(e.path);
  for (const char* option : {"--cond", "--cond-frames", "--engine"})
    if (args.has(option)) inputs.push_back(args.get(option));
  wn::check_outputs(outputs, inputs, manifest.directory);
  ensure_open_files(batch);

  std::vector<float> features;
  if (conditioned) {
    const int64_t C = plan.cond_channels;
    int64_t time = 0;
    if (args.has("--cond")) {
      features = read_features(args.get("--cond"), batch, C, &time, "--cond");
    } else {
      std::vector<float> frames = read_features(args.get("--cond-frames"), batch, C, &time, "--cond-frames");
      wn::Tensor x = wn::Tensor::zeros(wn::DType::Float32, {batch, C, time});
      std::memcpy(x.data.data(), frames.data(), x.data.size());
      auto upsampler = wn::make_ort_backend({static_cast<int>(args.integer("--threads", 0, 0, wn::limits::kMaxThreads))})
                           ->open_graph(manifest.graph("upsample"));
      wn::Tensors y = upsampler->run({{"cond", x}});
      const wn::Tensor& s = y.at("cond_samples");
      if (s.shape.size() != 3 || s.shape[0] != batch || s.shape[1] != C || s.dtype != wn::DType::Float32)
        throw wn::Error("the upsample graph returned shape " + wn::shape_str(s.shape));
      time = s.shape[2];
      features.resize(static_cast<size_t>(s.count()));
      std::memcpy(features.data(), s.data.data(), s.data.size());
      cli::check_finite(features.data(), features.size(), "the upsampled conditioning");
    }
    if (time < samples)
      throw wn::Error("the conditioning covers " + std::to_string(time) + " samples but " + std::to_string(samples) +
                      " are to be generated");
    opt.cond = features.data();
    opt.cond_channels = C;
    opt.cond_time = time;
  }

  // ---- the path: the native loop on the manifest's plan, or the graph stepped by the backend
  const wn::NativeInfo* native = manifest.native_for(graph.name);
  const bool ort = backend_name == "onnxruntime" || backend_name == "ort";
  std::string setup, why;
  if (!ort) why = "the " + backend_name + " backend";
  else if (args.has("--no-native")) why = "--no-native";
  else if (!native) why = "the manifest has no native loop plan for graph '" + graph.name + "'";
  if (!why.empty() && split_arg != "auto")  // never ignored: the run would not be the one asked for
    throw cli::Usage("--split " + split_arg + " shares the native loop's steps, but it does not run here (" + why + ")");
  std::unique_ptr<wn::NativePlan> loop;
  wn::LoopSplit split = wn::LoopSplit::Alone;
  if (why.empty()) {
    loop = std::make_unique<wn::NativePlan>(wn::read_native_plan(*native, graph, manifest.model));
    split = split_arg == "auto" ? wn::default_split(batch) : wn::parse_split(split_arg);
    setup = "fused layer chain and head (" + loop->weights + " weights), native loop, " + wn::split_name(split) +
            " split (" + loop->file + ")";
  }
  std::unique_ptr<wn::Backend> backend;
  std::unique_ptr<wn::StepRunner> runner;
  if (!loop) {
    backend = cli::backend(args, manifest);
    runner = backend->open_step(graph);
    setup = backend->name() + " per step (" + why + ")";
  }
  const int64_t width = std::min(opt.chunk, samples);  // the buffers of a chunk, checked before any file is created
  if (loop) wn::check_loop_bytes(*loop, batch, width, args.has("--json"));
  else wn::check_chunk_bytes(batch, width);
  if (!quiet) std::fprintf(stderr, "wn_generate: %s\n", setup.c_str());

  // ---- stream to one WAV per stream (+ tokens), each under a temporary name until the end
  std::vector<std::unique_ptr<wn::WavWriter>> wavs;
  for (int64_t b = 0; b < batch; ++b) wavs.push_back(std::make_unique<wn::WavWriter>(outputs[b], rate));
  std::unique_ptr<wn::OutputFile> tokens;
  if (args.has("--tokens")) tokens = std::make_unique<wn::OutputFile>(args.get("--tokens"));
  std::vector<float> table(static_cast<size_t>(opt.quantization_channels));
  for (int64_t q = 0; q < opt.quantization_channels; ++q) table[q] = wn::mulaw_decode(q, opt.quantization_channels);
  std::vector<int16_t> pcm;
  int64_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  wn::NativeRunStats stats;
  const wn::ChunkSink sink = [&](const int64_t* chunk, int64_t count) {
    pcm.resize(static_cast<size_t>(count));
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t* row = chunk + b * count;  // (batch, count)
      for (int64_t i = 0; i < count; ++i) {
        const int64_t q = row[i];
        pcm[i] = wn::to_pcm16(q >= 0 && q < opt.quantization_channels ? table[q] : wn::mulaw_decode(q, opt.quantization_channels));
      }
      wavs[b]->write(pcm.data(), pcm.size());
      if (tokens)  // (batch, samples) row-major: this chunk's row b goes to [b, done : done + count)
        tokens->write_at(row, static_cast<size_t>(count) * sizeof(int64_t), (b * samples + done) * 8);
    }
    done += count;
    if (tty) std::fprintf(stderr, "\rwn_generate: %lld/%lld samples", (long long)done, (long long)samples);
  };
  if (loop)
    wn::generate_native(*loop, plan, opt, split, sink, args.has("--json") ? &stats : nullptr);
  else
    wn::generate(*runner, opt, sink);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto& w : wavs) w->close();
  if (tokens) tokens->close();
  for (auto& w : wavs) w->commit();  // every output is complete: move them into place
  if (tokens) tokens->commit();
  if (!quiet)
    std::fprintf(stderr, "%swn_generate: wrote %s%s (%lld samples x %lld streams, %.2f s of audio at %lld Hz) "
                         "with %s in %.2f s (%.0f samples/s per stream)\n",
                 tty ? "\r" : "", out.c_str(), batch > 1 ? " (one file per stream)" : "", (long long)samples, (long long)batch,
                 static_cast<double>(samples) / static_cast<double>(rate), (long long)rate,
                 loop ? "the native loop" : backend->name().c_str(), seconds,
                 static_cast<double>(samples) / std::max(seconds, 1e-9));
  if (args.has("--json")) print_json(loop ? "native" : backend->name(), setup, loop ? wn::split_name(split) : "",
                                     batch, samples, seconds, stats.step_ns);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::guarded("wn_generate", kUsage, [&] { return run(argc, argv); });
}
