// wn_manifest_check: validate an export directory's manifest.json the way wn_generate / wn_score do,
// without loading any graph: types, numbers and limits, confined file paths, sha256, and every step
// graph's buffer plan for a batch. Fast enough to run on every deployment (and under a fuzzer).
#include <cstdio>

#include "cli.hpp"
#include "wn/backend.hpp"
#include "wn/limits.hpp"
#include "wn/manifest.hpp"
#include "wn/native_plan.hpp"

namespace {

const char* kUsage = R"(usage: wn_manifest_check EXPORT_DIR [options]

Check EXPORT_DIR/manifest.json as wn_generate and wn_score read it, without loading any graph: JSON
types, every number against the graph layout and the host's limits, graph, engine and native loop plan
files confined to EXPORT_DIR, sha256 of the graph and plan files, each step graph's buffers for --batch
streams, and each native loop plan as wn_generate reads it (every tensor's dtype and shape, the dimensions
against the graph, finite values, its loop's buffers for --batch streams). Prints one line per graph and plan; exit 0 when valid, 1 with one error
line otherwise.

  -b, --batch B    streams to plan the step graphs for (default 1, at most 4096)
      --no-verify  skip the sha256 check of the graph files
  -q, --quiet      print nothing when valid
  -h, --help
)";

int run(int argc, char** argv) {
  cli::Args args(argc, argv, {{"-b", "--batch"}, {"--batch", "--batch"}, {"-q", "--quiet"}, {"-h", "--help"}},
                 {"--no-verify", "--quiet", "--help"});
  if (args.has("--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (args.positional.size() != 1) throw cli::Usage("give exactly one EXPORT_DIR");
  const int64_t batch = args.integer("--batch", 1, 1, wn::limits::kMaxBatch);
  const wn::Manifest m = wn::read_manifest(args.positional[0], !args.has("--no-verify"));
  for (const auto& [name, g] : m.graphs) {
    std::string what = g.kind;
    if (g.kind == "step") {
      const wn::StepPlan plan = wn::plan_step(g, batch);
      if (plan.classes != m.model.quantization_channels)
        throw wn::Error("graph '" + name + "' has " + std::to_string(plan.classes) +
                        " logits per sample but the manifest's quantization_channels is " +
                        std::to_string(m.model.quantization_channels));
      if (!plan.cond.empty() && plan.cond_channels != m.model.local_channels)
        throw wn::Error("graph '" + name + "' takes " + std::to_string(plan.cond_channels) +
                        " conditioning channels but the manifest's local_channels is " +
                        std::to_string(m.model.local_channels));
      int64_t bytes = 0;
      for (const wn::StepBuffer& b : plan.buffers) bytes += static_cast<int64_t>(b.bytes);
      what += ", " + std::to_string(plan.buffers.size()) + " buffers, " + wn::human_bytes(bytes) + " at batch " +
              std::to_string(batch);
    }
    if (!args.has("--quiet")) std::printf("%s: %s (%s)\n", name.c_str(), g.file.c_str(), what.c_str());
  }
  for (const auto& [name, e] : m.engines)
    if (!args.has("--quiet")) std::printf("engine %s: %s\n", name.c_str(), e.file.c_str());
  for (const auto& [name, info] : m.native) {
    const wn::NativePlan plan = wn::read_native_plan(info, m.graph(name), m.model);
    const int64_t bytes = wn::check_loop_bytes(plan, batch, 1, false);  // as wn_generate --batch B checks it
    if (!args.has("--quiet"))
      std::printf("native loop %s: %s (%s weights, %s streamed per step, %s of buffers at batch %lld)\n",
                  name.c_str(), info.file.c_str(), plan.weights.c_str(), wn::human_bytes(plan.weight_bytes()).c_str(),
                  wn::human_bytes(bytes).c_str(), static_cast<long long>(batch));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::guarded("wn_manifest_check", kUsage, [&] { return run(argc, argv); });
}
