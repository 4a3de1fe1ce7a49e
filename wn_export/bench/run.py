"""`wn-export bench`: the generation step loop and the scoring graph, against the baselines and the machine's
weight-streaming floor, in one run.

Step loop (one generated sample per stream: a step plus sampling), for each batch size, per backend:
- `onnxruntime`: our host as users get it (`OrtStepRunner` + `generation.StepLoop`) on the exported step graph:
  the layer chain and head fused, and whole blocks of steps run by the native loop (no Python per sample);
  `onnxruntime (w16)` is the same host on `step.w16` (16-bit weights); `onnxruntime (fused, per step)` steps the
  fused graph from Python once per sample; `onnxruntime (standard ops)` is the graph with standard ONNX Runtime
  kernels only;
- `torch reference`: our PyTorch reference `WaveNet.step` (`TorchStepRunner`, FP32, one thread) with the
  same sampler;
- `eager incremental`: the baseline everybody starts from, r9y9 wavenet_vocoder's `incremental_forward`
  re-implemented faithfully (`baseline_r9y9.R9y9Incremental`: its modules, calls and sampler); with
  torch's default threads (what users get) and again with one thread;
- `wavenet_vocoder package` (batch 1, when the PyPI package is installed, e.g. by the `dev` extra): the
  package's own `incremental_forward` on a randomly initialised model of the same architecture, as a
  check that the re-implementation costs what the original costs;
- `C++ wn_generate` / `C++ wn_generate (w16)` (when the C++ host is built: `cpp`, else $WN_CPP_HOST, else the
  source tree's hosts/cpp/build/wn_generate): the C++ host's native loop on the export's plan of `step` /
  `step.w16`, one process per round (`--json`: its own generation time, so process start and loading are not
  counted; WAV writing is), with the thread split the Python host's calibration chose for that batch.
Floor (`floor`): per batch size, one GEMM pass over as many weights as the model streams per step, float32
and float16, one and two threads, measured at the start of every round, just before the host rows. A round's
floor is the faster of one and two threads; each host row shows the median of the rounds' floors of its
weights and achieved ÷ floor paired by round (the row's rate in round i ÷ the floor of round i, median over
rounds), so both sides of a ratio saw the same load.
Scoring: the exported scoring graph on ONNX Runtime vs PyTorch eager `forward` (+ log-softmax), FP32.

Measurements are interleaved: each round runs every backend once per batch size, so load changes on a
shared machine hit all of them alike; samples/s is the median over rounds (spread = min–max). Latency
percentiles pool the per-step times of all rounds (native rows: each step's time as the loop measures it).
Without DIR the 30-layer target model is built (random init) and exported into a temporary directory. The
machine (CPU model, vector instructions, cache sizes, load) is printed with the results.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from reference_model.limits import check
from wn_export.errors import InputError

TARGET = dict(layers=30, stacks=3, residual_channels=64, gate_channels=128, skip_channels=256, kernel_size=2,
              quantization_channels=256)  # 3 cycles of dilations 1…512, receptive field 3070
TARGET_SAMPLES_PER_S = 16000  # batch 1, the best ONNX Runtime host row: real time at 16 kHz
TARGET_RATIO = 45  # × the eager-incremental baseline
TARGET_FLOOR_SHARE = 0.8  # FP32 weights at batch 1: achieved ÷ the measured fp32 floor
TARGET_AGGREGATE = {64: 30000}  # batch → aggregate samples/s
BASELINE = "eager incremental"
HOST = "onnxruntime"  # our host as users get it (the default step graph)
W16 = "onnxruntime (w16)"  # the same host on step.w16 (16-bit weights)
STANDARD = "onnxruntime (standard ops)"
CPP = "C++ wn_generate"  # the C++ host (hosts/cpp) on the same export: its native loop
CPP_TIMEOUT, CPP_SLACK, CPP_MIN_RATE = 120.0, 10.0, 100.0  # a run's limit: 120 s + 10x its expected length (at
# the rate its warm-up run measured; for the warm-up itself, at least 100 samples/s per stream)


from wn_export.bench.baseline_r9y9 import R9y9Incremental  # noqa: E402 - the baseline (its own module)


# ---- measurement ---------------------------------------------------------------------------------
@dataclass
class Result:
    kind: str  # step | scoring
    backend: str
    batch: int
    samples_per_s: float  # median over rounds
    spread: tuple[float, float]  # min, max over rounds
    rounds: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    steps: int = 0
    time_steps: int | None = None  # scoring: sequence length
    note: str = ""
    weights: str | None = None  # host rows: "fp32" | "w16", whose floor they are judged against


@dataclass
class Floor:
    """One floor measurement (`floor`): passes over the model's weights at `batch` rows."""

    batch: int
    weights: str  # fp32 | w16
    threads: int
    pass_us: float  # median pass time
    samples_per_s: float  # batch / mean pass time: a wall-clock rate, as the rows' samples/s
    p50_samples_per_s: float  # batch / median pass time: as the rows' "at p50"
    round: int = 0  # the bench round it was measured in
    round_trip_ns: float | None = None  # 2 threads: one hand-over's round trip between them, measured beside it


def _median_floor(floors: list[Floor]) -> Floor | None:
    """The median (lower middle) of these measurements by rate."""
    rows = sorted(floors, key=lambda f: f.samples_per_s)
    return rows[(len(rows) - 1) // 2] if rows else None


class _Timer:
    """Runs `fn` (one call) for ≥ `seconds` and ≥ `min_steps` calls, recording each call's duration."""

    def __init__(self, seconds: float, min_steps: int, warmup: int):
        self.seconds, self.min_steps, self.warmup = seconds, min_steps, warmup

    def __call__(self, fn, warmup: int | None = None) -> np.ndarray:
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        times = []
        clock = time.perf_counter_ns
        start = clock()
        budget = self.seconds * 1e9
        while True:
            t0 = clock()
            fn()
            t1 = clock()
            times.append(t1 - t0)
            if len(times) >= self.min_steps and t1 - start >= budget:
                return np.asarray(times, dtype=np.float64) * 1e-9


def _summarise(kind, backend, batch, rounds: list[np.ndarray], per_call: int, note="", time_steps=None,
               latencies: np.ndarray | None = None, weights=None):
    """Rate per round (per_call samples per call) and latency percentiles (of `latencies` when the calls are
    blocks of steps, else of the calls)."""
    rates = [per_call * len(r) / r.sum() for r in rounds]
    pooled = np.concatenate(rounds) if latencies is None else latencies
    return Result(kind, backend, batch, float(np.median(rates)), (float(min(rates)), float(max(rates))),
                  [float(r) for r in rates], float(np.percentile(pooled, 50) * 1e3),
                  float(np.percentile(pooled, 99) * 1e3), int(pooled.size), time_steps, note, weights)


@dataclass
class BenchReport:
    model: dict
    directory: str
    machine: dict
    settings: dict
    results: list[Result]
    layouts: dict = field(default_factory=dict)
    floors: list[Floor] = field(default_factory=list)

    def get(self, kind: str, backend: str, batch: int) -> Result | None:
        return next((r for r in self.results if (r.kind, r.backend, r.batch) == (kind, backend, batch)), None)

    def ratio(self, r: Result) -> float | None:
        base = self.get(r.kind, BASELINE if r.kind == "step" else "torch eager forward", r.batch)
        return None if base is None or base.samples_per_s <= 0 else r.samples_per_s / base.samples_per_s

    def round_floors(self, batch: int, weights: str | None) -> list[Floor]:
        """Each round's floor of these weights at this batch (the faster of one and two threads), by round."""
        best: dict[int, Floor] = {}
        for f in self.floors:
            if f.batch == batch and f.weights == weights and (f.round not in best or
                                                              f.samples_per_s > best[f.round].samples_per_s):
                best[f.round] = f
        return [best[k] for k in sorted(best)]

    def floor(self, batch: int, weights: str | None) -> Floor | None:
        """The median round's floor of these weights at this batch."""
        return _median_floor(self.round_floors(batch, weights))

    def floor_share(self, r: Result) -> float | None:
        """Achieved ÷ floor, both wall-clock rates (preemptions by other processes count in both), paired by
        round: the median over rounds of the row's rate ÷ the same round's floor."""
        if not self.round_floors(r.batch, r.weights) or r.kind != "step":
            return None
        paired = self._round_shares(r)
        if paired is None:  # not measured round by round: the medians
            return r.samples_per_s / self.floor(r.batch, r.weights).samples_per_s
        return float(np.median([share for share, _ in paired]))

    def _round_shares(self, r: Result) -> list[tuple[float, Floor]] | None:
        """Each round's rate of row r ÷ the same round's floor, with that floor; None when they cannot be paired."""
        floors = self.round_floors(r.batch, r.weights)
        if r.kind != "step" or not floors or len(floors) != len(r.rounds):
            return None
        return [(rate / f.samples_per_s, f) for rate, f in zip(r.rounds, floors)]

    def floor_share_by_hand_over(self, r: Result) -> list[dict]:
        """Achieved ÷ floor of row r (paired by round, as floor_share) in the rounds whose hand-over round trip
        (measured beside that round's two-thread floor) is within twice the run's fastest, then in the others: on a
        virtual machine the two CPUs may be placed on cores that share a cache or not, which a step that hands
        work over at every layer feels and the floor hardly does. One dict per group: `round_trip_ns` (the
        group's median), `rounds`, `share` (median); [] when the rounds cannot be paired or have no hand-over."""
        paired = self._round_shares(r)
        trips = {f.round: f.round_trip_ns for f in self.floors
                 if (f.batch, f.weights, f.threads) == (r.batch, r.weights, 2) and f.round_trip_ns is not None}
        if paired is None or any(f.round not in trips for _, f in paired):
            return []
        fastest = min(trips[f.round] for _, f in paired)
        groups = []
        for near in (True, False):
            picked = [(share, trips[f.round]) for share, f in paired if (trips[f.round] <= 2 * fastest) == near]
            if picked:
                groups.append({"round_trip_ns": float(np.median([t for _, t in picked])), "rounds": len(picked),
                               "share": float(np.median([s for s, _ in picked]))})
        return groups

    def floor_share_p50(self, r: Result) -> float | None:
        """The same between preemptions: batch ÷ the median step time vs batch ÷ the median pass time."""
        f = self.floor(r.batch, r.weights)
        return None if f is None or r.kind != "step" or not r.p50_ms else r.batch / r.p50_ms * 1e3 / f.p50_samples_per_s

    def to_json(self) -> str:
        data = asdict(self)
        for r, d in zip(self.results, data["results"]):
            d["ratio_vs_baseline"] = self.ratio(r)
            d["floor_share"] = self.floor_share(r)
            d["floor_share_p50"] = self.floor_share_p50(r)
            d["floor_share_by_hand_over"] = self.floor_share_by_hand_over(r)
        data["target"] = self.target()
        return json.dumps(data, indent=2)

    def _best_host(self, batch: int) -> Result | None:
        rows = [r for r in (self.get("step", HOST, batch), self.get("step", W16, batch)) if r is not None]
        return max(rows, key=lambda r: r.samples_per_s) if rows else None

    def target(self) -> dict | None:
        """The goals of the 30-layer target model (module constants), judged on this run."""
        best, host = self._best_host(1), self.get("step", HOST, 1)
        if best is None or not self.model.get("is_target"):
            return None
        ratio = self.ratio(best)
        package = self.get("step", PACKAGE, 1)
        share = self.floor_share(host) if host is not None and host.weights == "fp32" else None
        versus = {}
        for b in sorted({r.batch for r in self.results if r.kind == "step"} - {1}):
            ours, standard = self.get("step", HOST, b), self.get("step", STANDARD, b)
            if ours is not None and standard is not None:
                versus[b] = {"host": ours.samples_per_s, "standard": standard.samples_per_s,
                             "met": ours.samples_per_s >= standard.samples_per_s}
        aggregate = {b: {"samples_per_s": r.samples_per_s, "row": r.backend, "goal": goal, "met": r.samples_per_s >= goal}
                     for b, goal in TARGET_AGGREGATE.items() if (r := self._best_host(b)) is not None}
        out = {"samples_per_s": best.samples_per_s, "row": best.backend, "goal": TARGET_SAMPLES_PER_S,
               "best_round": best.spread[1], "at_p50": best.batch / best.p50_ms * 1e3 if best.p50_ms else None,
               "speed_met": best.samples_per_s >= TARGET_SAMPLES_PER_S, "ratio": ratio, "ratio_goal": TARGET_RATIO,
               "ratio_met": ratio is None or ratio >= TARGET_RATIO,
               "ratio_package": None if package is None or package.samples_per_s <= 0 else
               best.samples_per_s / package.samples_per_s,
               "fp32_floor_share": share, "floor_share_goal": TARGET_FLOOR_SHARE,
               "fp32_floor_share_by_hand_over": [] if share is None else self.floor_share_by_hand_over(host),
               "floor_met": share is None or share >= TARGET_FLOOR_SHARE,
               "versus_standard": versus, "aggregate": aggregate}
        out["met"] = (out["speed_met"] and out["ratio_met"] and out["floor_met"]
                      and all(v["met"] for v in versus.values()) and all(a["met"] for a in aggregate.values()))
        return out

    def tables(self):
        from rich.table import Table

        out = []
        t = Table(title="generation step loop (one step + sampling per sample and stream; 'at p50': batch ÷ median "
                        "step time, the rate between preemptions on a shared machine)")
        for c in ("batch", "backend", "setup", "samples/s", "rounds min–max", "p50 ms", "p99 ms", "at p50", "steps",
                  "floor", "÷ floor (at p50)", f"× {BASELINE}"):
            t.add_column(c, justify="left" if c in ("backend", "setup") else "right")
        for r in [r for r in self.results if r.kind == "step"]:
            ratio, f, share, share50 = (self.ratio(r), self.floor(r.batch, r.weights), self.floor_share(r),
                                        self.floor_share_p50(r))
            t.add_row(str(r.batch), r.backend, r.note, f"{r.samples_per_s:,.0f}",
                      f"{r.spread[0]:,.0f}–{r.spread[1]:,.0f}", "–" if r.p50_ms is None else f"{r.p50_ms:.3f}",
                      "–" if r.p99_ms is None else f"{r.p99_ms:.3f}",
                      "–" if not r.p50_ms else f"{r.batch / r.p50_ms * 1e3:,.0f}", str(r.steps),
                      "" if f is None else f"{f.samples_per_s:,.0f} ({r.weights}, {f.threads} thr)",
                      "" if share is None else f"{share:.0%}" + ("" if share50 is None else f" ({share50:.0%})"),
                      "" if ratio is None else f"{ratio:,.1f}×")
        out.append(t)
        if self.floors:
            ft = Table(title="weight-streaming floor (one GEMM pass over the model's weights per step; samples/s "
                             "= batch ÷ mean pass time; the median round; hand-over: one cache-line round trip "
                             "between the two threads, in each round)")
            for c in ("batch", "weights", "MB per pass", "1 thread", "2 threads", "median pass µs (1 / 2 thr)",
                      "hand-over ns (rounds)"):
                ft.add_column(c, justify="left" if c == "weights" else "right")
            for b in sorted({f.batch for f in self.floors}):
                for w in ("fp32", "w16"):
                    rows = {n: _median_floor([f for f in self.floors if (f.batch, f.weights, f.threads) == (b, w, n)])
                            for n in (1, 2)}
                    rows = {n: f for n, f in rows.items() if f is not None}
                    if rows:
                        mb = self.machine.get("weights_bytes", {}).get(w, 0) / 1e6
                        trips = [f.round_trip_ns for f in self.floors
                                 if (f.batch, f.weights, f.threads) == (b, w, 2) and f.round_trip_ns is not None]
                        ft.add_row(str(b), w, f"{mb:.2f}", *(f"{rows[n].samples_per_s:,.0f}" if n in rows else "–"
                                                            for n in (1, 2)),
                                   " / ".join(f"{rows[n].pass_us:.1f}" if n in rows else "–" for n in (1, 2)),
                                   " ".join(f"{v:,.0f}" for v in trips) or "–")
            out.append(ft)
        scoring = [r for r in self.results if r.kind == "scoring"]
        if scoring:
            s = Table(title="scoring (teacher-forced logits + log-prob over batch × time)")
            for c in ("batch", "time", "backend", "samples/s", "rounds min–max", "p50 ms/call", "× torch eager"):
                s.add_column(c, justify="left" if c == "backend" else "right")
            for r in scoring:
                ratio = self.ratio(r)
                s.add_row(str(r.batch), str(r.time_steps), r.backend, f"{r.samples_per_s:,.0f}",
                          f"{r.spread[0]:,.0f}–{r.spread[1]:,.0f}", f"{r.p50_ms:.1f}",
                          "" if ratio is None else f"{ratio:,.2f}×")
            out.append(s)
        return out

    def summary(self) -> str:
        m = self.machine
        lines = [f"model: {self.model['description']}  ({self.directory})",
                 f"machine: {m.get('summary', m['processor'])}; load average {m['load_before']} → {m['load_after']}; "
                 f"onnxruntime {m['onnxruntime']}, torch {m['torch']} (default threads {m['torch_threads']})"]
        tgt = self.target()
        if tgt:
            verdict = lambda ok: "met" if ok else "NOT MET"  # noqa: E731
            parts = [f"batch 1 ONNX Runtime {tgt['samples_per_s']:,.0f} samples/s ({tgt['row']}; best round "
                     f"{tgt['best_round']:,.0f}, at p50 {tgt['at_p50'] or 0:,.0f}; goal ≥ {TARGET_SAMPLES_PER_S:,}: "
                     f"{verdict(tgt['speed_met'])})"]
            if tgt["ratio"] is not None:
                parts.append(f"{tgt['ratio']:,.0f}× the eager-incremental baseline (goal ≥ {TARGET_RATIO}×: "
                             f"{verdict(tgt['ratio_met'])})")
            if tgt["ratio_package"] is not None:
                parts.append(f"{tgt['ratio_package']:,.0f}× the wavenet_vocoder package")
            if tgt["fp32_floor_share"] is not None:
                groups = tgt["fp32_floor_share_by_hand_over"]
                by_state = "" if len(groups) < 2 else "; " + ", ".join(
                    f"{g['share']:.0%} in the {g['rounds']} round{'s' if g['rounds'] > 1 else ''} with "
                    f"{g['round_trip_ns']:,.0f} ns hand-overs" for g in groups)
                parts.append(f"fp32 weights at {tgt['fp32_floor_share']:.0%} of the fp32 floor (goal ≥ "
                             f"{TARGET_FLOOR_SHARE:.0%}: {verdict(tgt['floor_met'])}{by_state})")
            for b, v in tgt["versus_standard"].items():
                parts.append(f"batch {b} {v['host']:,.0f} vs standard ops {v['standard']:,.0f} "
                             f"(never slower: {verdict(v['met'])})")
            for b, a in tgt["aggregate"].items():
                parts.append(f"batch {b} {a['samples_per_s']:,.0f} samples/s ({a['row']}; goal ≥ {a['goal']:,}: "
                             f"{verdict(a['met'])})")
            lines.append("target: " + "; ".join(parts))
        return "\n".join(lines)


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _machine(load_before) -> dict:
    import onnxruntime
    import torch

    from wn_export.backends.onnxruntime.machine import describe, summary

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), **describe(),
            "summary": summary(), "load_before": load_before, "load_after": _load(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def build_target(directory: Path, layouts=("ring",), progress: Callable[[str], None] | None = None,
                 seed: int = 0) -> dict[str, Path]:
    """Random-init the 30-layer target model and export it (FP32, and the ring layout's 16-bit-weight step
    graph) once per layout → {layout: DIR}."""
    import torch

    from reference_model import WaveNet, WaveNetConfig, save_checkpoint
    from wn_export.export.pipeline import export_directory

    cfg = WaveNetConfig(**TARGET)
    torch.manual_seed(seed)
    model = WaveNet(cfg).eval()
    checkpoint = Path(directory) / "target.safetensors"
    save_checkpoint(model, checkpoint)
    out = {}
    for layout in layouts:
        if progress:
            progress(f"exporting the 30-layer target model ({layout} layout)")
        out[layout] = Path(directory) / f"target-{layout}"
        export_directory(out[layout], checkpoint, layout=layout, w16=layout == "ring")
    return out


@dataclass
class _Host:
    """One ONNX Runtime host row: its runner, and whether it runs blocks natively."""

    name: str
    layout: str
    runner: object
    weights: str  # fp32 | w16

    @property
    def block(self) -> bool:
        return getattr(self.runner, "loop", None) is not None


def _open_hosts(dirs: dict, main_layout: str, threads: int | None) -> list[_Host]:
    """Our host on every layout's step graph (and step.w16), the fused graph stepped from Python, and the
    standard-ops session of the same graph."""
    from wn_export.backends.onnxruntime.runner import OrtStepRunner
    from wn_export.contract.manifest import read_manifest

    hosts = []
    for layout, d in dirs.items():
        manifest = read_manifest(d)
        main = layout == main_layout
        rows = [(HOST if main else f"{HOST} ({layout})", "step", {}, "fp32")]
        if main and "step.w16" in manifest.graphs:
            rows.append((W16, "step.w16", {}, "w16"))
        for name, graph, options, weights in rows:
            runner = OrtStepRunner(manifest, graph, threads=threads, **options)
            runner.activate()
            hosts.append(_Host(name, layout, runner, weights))
        if main and hosts[0].runner.is_fused:
            for name, options in (("onnxruntime (fused, per step)", {"native_loop": False}), (STANDARD, {"fused": False})):
                if name.endswith("per step)") and not hosts[0].block:
                    continue
                runner = OrtStepRunner(manifest, "step", threads=threads, **options)
                runner.activate()
                hosts.append(_Host(name, layout, runner, "fp32"))
    return hosts


def cpp_host(explicit=None) -> Path | None:
    """The C++ host's wn_generate: `explicit`, else $WN_CPP_HOST, else hosts/cpp/build/wn_generate of the source
    tree when it has been built; None when there is none. A program named explicitly (either way) that is not an
    executable file is an error: the rows would otherwise measure another one."""
    for candidate, named in ((explicit, "--cpp"), (os.environ.get("WN_CPP_HOST") or None, "WN_CPP_HOST")):
        if candidate is not None:
            if not (Path(candidate).is_file() and os.access(candidate, os.X_OK)):
                raise InputError(f"{named} {str(candidate)[:200]} is not an executable file (the C++ host's "
                                 "wn_generate: bash hosts/cpp/build.sh)")
            return Path(candidate)
    built = Path(__file__).resolve().parents[2] / "hosts" / "cpp" / "build" / "wn_generate"
    return built if built.is_file() and os.access(built, os.X_OK) else None


@dataclass
class _CppRow:
    """One C++ host row: wn_generate on an export's step graph with a native loop plan."""

    name: str
    directory: Path
    graph: str
    weights: str  # fp32 | w16
    python: str  # the Python host row whose calibrated split it uses
    samples: dict = field(default_factory=dict)  # batch → samples per run (≈ the timer's seconds)
    rates: dict = field(default_factory=dict)  # batch → samples/s per stream of its warm-up run


def _cpp_rows(exe: Path | None, dirs: dict, main_layout: str, cfg) -> list[_CppRow]:
    if exe is None or cfg.local:  # local conditioning would need a per-sample feature file per run
        return []
    import subprocess

    from wn_export.contract.manifest import read_manifest

    usage = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, check=False)
    missing = [o for o in ("--split", "--json", "--graph") if o not in usage.stdout + usage.stderr]
    if missing:
        raise InputError(f"{exe} takes no {', '.join(missing)}: it is older than this wn-export (rebuild it with "
                         "hosts/cpp/build.sh) or not wn_generate; pass --no-cpp to leave the C++ rows out")
    plans = read_manifest(dirs[main_layout]).native_loops
    return [_CppRow(name, dirs[main_layout], graph, weights, python)
            for name, graph, weights, python in ((CPP, "step", "fp32", HOST), (f"{CPP} (w16)", "step.w16", "w16", W16))
            if graph in plans]


def _cpp_run(exe: Path, row: _CppRow, B: int, n: int, split: str, speakers, work: Path,
             rate: float = CPP_MIN_RATE) -> dict:
    """One wn_generate process → its --json report (`rate`: the samples/s per stream it is expected to run at)."""
    import subprocess

    args = [str(exe), str(row.directory), "-o", str(work / "out.wav"), "-n", str(n), "--batch", str(B), "--graph",
            row.graph, "--seed", "0", "--split", split, "--json", "-q"]
    if speakers is not None:
        args += ["--speaker", ",".join(str(int(s)) for s in speakers)]
    limit = CPP_TIMEOUT + CPP_SLACK * n / max(rate, CPP_MIN_RATE)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(f"the C++ host {exe} did not finish {n:,} samples x {B} streams in {limit:.3g} s") from None
    except OSError as e:
        raise InputError(f"the C++ host {exe} cannot run: {e.strerror}") from None
    if proc.returncode != 0:
        raise InputError(f"the C++ host failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return _cpp_report(exe, proc.stdout, B, n)


def _cpp_report(exe: Path, stdout: str, B: int, n: int) -> dict:
    """wn_generate --json's last line, checked: the numbers the rows are made of (else one error naming it)."""
    lines = stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None

    def number(key, low=0.0):
        v = report.get(key)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > low
    if not isinstance(report, dict) or report.get("path") != "native" or report.get("batch") != B \
            or report.get("samples") != n or not (number("seconds") and number("samples_per_s")
                                                  and number("step_ms_p50", -1) and number("step_ms_p99", -1)):
        shown = (lines[-1] if lines else "nothing")[:120]
        raise InputError(f"the C++ host {exe} did not print a native loop report of {n:,} samples x {B} streams "
                         f"(wn_generate --json), but {shown!r}")
    return report


def _cpp_round(exe: Path, row: _CppRow, B: int, split: str, speakers, seconds: float, steps: int) -> dict:
    """A run of about `seconds` and at least `steps` samples per stream, as the Python host's native rows (its
    length measured by a first, short run per batch size, which warms up)."""
    with tempfile.TemporaryDirectory(prefix="wn-bench-cpp-") as work:
        if B not in row.samples:
            warm = _cpp_run(exe, row, B, 512, split, speakers, Path(work))
            row.samples[B] = int(min(max(steps, warm["samples_per_s"] * seconds), (1 << 31) - 32))
            row.rates[B] = warm["samples_per_s"]
        return _cpp_run(exe, row, B, row.samples[B], split, speakers, Path(work), row.rates[B])


def _measure_floors(plan_weights: dict[str, int], batch: int, seconds: float, rnd: int) -> list[Floor]:
    from wn_export.bench.floor import pass_times, round_trip_ns

    out = []
    for weights, count in plan_weights.items():
        for threads in (1, 2):
            t = pass_times(count, batch, weights == "w16", threads, seconds)
            out.append(Floor(batch, weights, threads, float(np.median(t) * 1e6), float(batch / np.mean(t)),
                             float(batch / np.median(t)), rnd, round_trip_ns() if threads == 2 else None))
    return out


def _step_rows(cfg, hosts: list[_Host], model, B: int, rounds: int, timer: _Timer, threads_torch: int,
               baseline_1thread: bool, rng, say, each_round: Callable[[int], None] | None = None,
               cpp: tuple = (None, [])) -> list[Result]:
    """Every step-loop row at batch B, in interleaved rounds (`each_round(i)` starts round i: the floor, just
    before the host rows; `cpp`: (wn_generate, its rows))."""
    import torch

    from wn_export.backends.torch_ref import TorchStepRunner
    from wn_export.generation.loop import StepLoop

    baseline = R9y9Incremental(model)
    cond = rng.standard_normal((B, cfg.local_channels)).astype(np.float32) if cfg.local else None
    spk = rng.integers(0, cfg.speakers, B) if cfg.global_ else None
    held = None if cond is None else np.broadcast_to(cond[:, :, None], (*cond.shape, 1 << 40))
    block = max(8, 2048 // B)  # steps per native call

    def host_loop(runner, latencies=None):  # our hosts: the one generation loop, as Generator runs it
        loop = StepLoop(runner, B, cfg, seed=0, cond=held, speaker=spk, window=4096)
        loop.reset()
        if latencies is None:
            return loop.step
        out, ns = np.empty((block, B), np.int64), np.zeros(block, np.int64)

        def advance():
            loop.advance(block, out, ns)
            latencies.append(ns * 1e-9)
        return advance

    def base_loop(threads_):
        torch.set_num_threads(threads_)
        baseline.clear_buffer()
        ct = None if cond is None else torch.as_tensor(cond).unsqueeze(1)
        g = None if spk is None else baseline.speaker_input(spk)
        state = {"x": baseline.initial_input(B)}

        def one():
            with torch.no_grad():
                state["x"] = baseline.sample(baseline.step(state["x"], ct, g))
        return one

    runs: dict[str, list] = {}
    lat: dict[str, list] = {}
    cpp_runs: dict[str, list[dict]] = {}
    notes, per_call, weights = {}, {}, {}
    reference = TorchStepRunner(model, torch.float32)
    for rnd in range(rounds):
        if each_round is not None:
            say(f"batch {B}, round {rnd + 1}/{rounds}: weight-streaming floor")
            each_round(rnd)
        for h in hosts:
            split = h.runner.calibration.split(B) if h.block else None
            notes[h.name] = (f"{h.layout} state, {h.runner.setup}" + (f", {split} threads" if split else
                             f", {_threads(h.runner.threads_for(B))}"))
            say(f"batch {B}, round {rnd + 1}/{rounds}: {h.name}")
            if h.block:
                runs.setdefault(h.name, []).append(timer(host_loop(h.runner, lat.setdefault(h.name, []))))
                per_call[h.name] = block * B
            else:
                runs.setdefault(h.name, []).append(timer(host_loop(h.runner)))
            weights[h.name] = h.weights
        exe, cpp_rows = cpp
        for row in cpp_rows:
            python = next((h for h in hosts if h.name == row.python and h.block), None)
            split = python.runner.calibration.split(B) if python is not None else "auto"
            say(f"batch {B}, round {rnd + 1}/{rounds}: {row.name}")
            cpp_runs.setdefault(row.name, []).append(_cpp_round(exe, row, B, split, spk, timer.seconds,
                                                                timer.min_steps * block))
            notes[row.name] = (f"C++ host, native loop on {row.graph}.native.safetensors, {split} threads "
                               "(the Python host's split), one process per round")
            weights[row.name] = row.weights
        say(f"batch {B}, round {rnd + 1}/{rounds}: torch reference step")
        with reference:
            runs.setdefault("torch reference", []).append(timer(host_loop(reference)))
        notes["torch reference"] = "FP32, 1 thread"
        say(f"batch {B}, round {rnd + 1}/{rounds}: eager incremental baseline")
        try:
            runs.setdefault(BASELINE, []).append(timer(base_loop(threads_torch)))
            notes[BASELINE] = f"r9y9 style, torch default {_threads(threads_torch)}"
            if baseline_1thread and threads_torch != 1:
                say(f"batch {B}, round {rnd + 1}/{rounds}: eager incremental baseline, 1 thread")
                runs.setdefault(f"{BASELINE} (1 thread)", []).append(timer(base_loop(1)))
                notes[f"{BASELINE} (1 thread)"] = "r9y9 style, 1 thread"
        finally:
            torch.set_num_threads(threads_torch)
    return [_summarise("step", name, B, rs, per_call.get(name, B), notes.get(name, ""),
                       latencies=np.concatenate(lat[name]) if name in lat else None, weights=weights.get(name))
            for name, rs in runs.items()] + [_cpp_result(name, B, rs, notes[name], weights[name])
                                             for name, rs in cpp_runs.items()]


def _cpp_result(name: str, B: int, reports: list[dict], note: str, weights: str) -> Result:
    """Aggregate samples/s per round (the report's per-stream rate × B); p50/p99: the median of the rounds'."""
    rates = [r["samples_per_s"] * B for r in reports]
    return Result("step", name, B, float(np.median(rates)), (float(min(rates)), float(max(rates))),
                  [float(r) for r in rates], float(np.median([r["step_ms_p50"] for r in reports])),
                  float(np.median([r["step_ms_p99"] for r in reports])), int(sum(r["samples"] for r in reports)),
                  None, note, weights)


def _open_dirs(directory, layouts, say):
    """(export dirs by layout, is the target model, the temporary directory or None)."""
    from wn_export.contract.manifest import read_manifest

    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="wn-bench-")
        return build_target(Path(tmp.name), layouts, say), True, tmp
    manifest = read_manifest(directory)
    is_target = manifest.config.to_dict() == {**manifest.config.to_dict(), **TARGET} and manifest.config.dilations is None
    return {manifest.graph("step").layout or "ring": Path(directory)}, is_target, None


def run_bench(directory: Path | None = None, *, batches=(1, 8, 64), seconds: float = 1.0, rounds: int = 3,
              min_steps: int = 20, threads: int | None = None, layouts=("ring",), scoring: bool = True,
              scoring_samples: int = 16384, baseline_1thread: bool = True, package_baseline: bool = True,
              floor: bool = True, cpp: Path | bool | None = None,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark DIR (or the built 30-layer target) → `BenchReport` (see the module doc). `cpp`: the C++ host's
    wn_generate (None: found by `cpp_host`; False: no C++ rows)."""
    import torch

    from wn_export.backends.torch_ref import reference_model_for
    from wn_export.contract.manifest import read_manifest

    say = progress or (lambda _m: None)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"batch sizes must be positive integers (got {batches})")
    if not 0 < seconds < math.inf or rounds < 1 or min_steps < 1:
        raise InputError("seconds must be > 0, rounds and min_steps ≥ 1")
    load_before = _load()
    dirs, is_target, tmp = _open_dirs(directory, layouts, say)
    try:
        main_layout = "ring" if "ring" in dirs else next(iter(dirs))
        manifest = read_manifest(dirs[main_layout])
        cfg = manifest.config
        if getattr(cfg, "scalar_input", False) or getattr(cfg, "mol", False):
            raise InputError("bench measures μ-law categorical (token-input) models")
        model = reference_model_for(manifest, None).float().eval()
        rng = np.random.default_rng(0)
        timer = _Timer(seconds, min_steps, warmup=3)
        torch_threads = torch.get_num_threads()
        results: list[Result] = []
        floors: list[Floor] = []
        hosts = _open_hosts(dirs, main_layout, threads)
        exe = None if cpp is False else cpp_host(None if cpp is None or cpp is True else cpp)
        cpp_rows = _cpp_rows(exe, dirs, main_layout, cfg)
        streamed = {h.weights: h.runner.loop.weight_count for h in hosts if h.block and h.layout == main_layout}
        try:
            for B in batches:
                each = (lambda rnd: floors.extend(_measure_floors(streamed, B, max(0.02, seconds / 10), rnd))) \
                    if floor and streamed else None
                results += _step_rows(cfg, hosts, model, B, rounds, timer, torch_threads, baseline_1thread, rng, say,
                                      each, (exe, cpp_rows))
                if B == 1 and package_baseline:
                    say("batch 1: the wavenet_vocoder package's incremental_forward")
                    row = _package_row(cfg, seconds, rounds, min_steps, torch_threads)
                    results += [row] if row is not None else []
        finally:
            for h in hosts:
                h.runner.deactivate()
        if scoring and "scoring" in manifest.graphs:
            say("scoring graph")
            results += _bench_scoring(manifest, model, batches, scoring_samples, rounds, say)
        settings = {"batches": batches, "seconds": seconds, "rounds": rounds, "min_steps": min_steps,
                    "threads": threads, "layouts": list(dirs), "scoring_samples": scoring_samples,
                    "cpp_host": None if not cpp_rows else str(exe),
                    "sampling": "inverse CDF, temperature 1 (baseline: softmax, then r9y9's np.random.choice at batch 1 "
                                "and OneHotCategorical above)"}
        desc = (f"{cfg.layers} layers ({cfg.stacks} cycles of 1…{max(cfg.layer_dilations)}), residual "
                f"{cfg.residual_channels}, gate {cfg.gate_channels}, skip {cfg.skip_channels}, K={cfg.kernel_size}, "
                f"{cfg.quantization_channels} classes, receptive field {cfg.receptive_field}, "
                f"{model.parameter_count():,} parameters")
        machine = _machine(load_before)
        machine["weights_bytes"] = {w: n * (2 if w == "w16" else 4) for w, n in streamed.items()}
        return BenchReport({"description": desc, "config": cfg.to_dict(), "is_target": is_target},
                           "30-layer target, random init" if tmp else str(directory), machine, settings, results,
                           floors=floors)
    finally:
        if tmp is not None:
            tmp.cleanup()


PACKAGE = "wavenet_vocoder package"


def _package_row(cfg, seconds: float, rounds: int, min_steps: int, threads: int) -> Result | None:
    """PyPI wavenet_vocoder's own `incremental_forward` at batch 1 (its sampler draws one stream) on a
    random model of `cfg`'s architecture, after `make_generation_fast_()` as its synthesis.py does.
    One call generates all samples, so only samples/s is observable (no per-step latency). None when
    the package is not installed or cannot express `cfg` (conditioning, variants)."""
    try:
        import warnings

        import torch
        import wavenet_vocoder
    except ImportError:
        return None
    if cfg.local or cfg.global_ or cfg.scalar_input or cfg.mol or cfg.dilations is not None:
        return None  # the timing model is their architecture at our sizes: plain μ-law cycles only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = wavenet_vocoder.WaveNet(out_channels=cfg.quantization_channels, layers=cfg.layers, stacks=cfg.stacks,
                                        residual_channels=cfg.residual_channels, gate_channels=cfg.gate_channels,
                                        skip_out_channels=cfg.skip_channels, kernel_size=cfg.kernel_size).eval()
        model.make_generation_fast_()
        x0 = torch.zeros(1, 1, cfg.quantization_channels)
        x0[:, :, cfg.quantization_channels // 2] = 1

        def run(n: int) -> float:
            t0 = time.perf_counter()
            with torch.no_grad():
                model.incremental_forward(initial_input=x0, T=n, tqdm=lambda it: it)
            return time.perf_counter() - t0

        torch.set_num_threads(threads)
        per_step = run(5) / 5
        n = max(min_steps, int(seconds / max(per_step, 1e-6)))
        rates = [n / run(n) for _ in range(rounds)]
    return Result("step", PACKAGE, 1, float(np.median(rates)), (min(rates), max(rates)), rates, None, None,
                  n * rounds, None, f"PyPI wavenet_vocoder {getattr(wavenet_vocoder, '__version__', '')}, "
                  f"make_generation_fast_(), torch default {_threads(threads)}")


def _bench_scoring(manifest, model, batches, scoring_samples, rounds, say) -> list[Result]:
    import torch

    from wn_export.backends.onnxruntime.runner import OrtScoringRunner

    cfg = model.cfg
    rng = np.random.default_rng(1)
    out = []
    runner = OrtScoringRunner(manifest)
    runner.activate()
    try:
        for B in batches:
            T = max(64, scoring_samples // B)
            tokens = rng.integers(0, cfg.quantization_channels, (B, T))
            frames = rng.standard_normal((B, cfg.local_channels, -(-T // cfg.hop_size))).astype(np.float32) \
                if cfg.local else None
            spk = rng.integers(0, cfg.speakers, B) if cfg.global_ else None
            with torch.no_grad():
                cond = model.upsample(torch.as_tensor(frames), T) if cfg.local else None
            cond_np = None if cond is None else cond.numpy()
            tok_t = torch.as_tensor(tokens)
            spk_t = None if spk is None else torch.as_tensor(spk)

            def ort_call():
                runner.infer(tokens, cond_np, spk)

            def torch_call():
                with torch.no_grad():
                    pasts = model.initial_state(B)
                    logits, _ = model.run(tok_t, pasts, cond, spk_t)
                    torch.log_softmax(logits[:, :-1], -1).gather(-1, tok_t[:, 1:, None])

            timer = _Timer(0.0, 1, warmup=1)
            runs = {"onnxruntime scoring": [], "torch eager forward": []}
            for rnd in range(rounds):
                say(f"scoring batch {B} × {T}, round {rnd + 1}/{rounds}")
                runs["onnxruntime scoring"].append(timer(ort_call, warmup=1 if rnd == 0 else 0))
                runs["torch eager forward"].append(timer(torch_call, warmup=1 if rnd == 0 else 0))
            for name, rs in runs.items():
                out.append(_summarise("scoring", name, B, rs, B * T, time_steps=T))
    finally:
        runner.deactivate()
    return out




def parse_batches(text: str) -> list[int]:
    """"1,8,64" → [1, 8, 64] (an `InputError` for anything else)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"batch sizes must be comma-separated positive integers (got {text!r})")
    check("batch", max(values), "batch size")
    return values


def parse_layouts(text: str, directory=None) -> tuple[str, ...]:
    from wn_export.contract.specs import LAYOUTS

    values = tuple(v.strip() for v in str(text).split(",") if v.strip())
    bad = [v for v in values if v not in LAYOUTS]
    if not values or bad:
        raise InputError(f"layouts must be a comma-separated subset of {', '.join(LAYOUTS)} (got {text!r})")
    if directory is not None and values != ("ring",):
        raise InputError("--layouts applies to the built target model; a DIRECTORY is benchmarked in its own layout")
    return values


__all__ = ["TARGET", "R9y9Incremental", "BenchReport", "Result", "run_bench", "build_target", "parse_batches",
           "parse_layouts", "cpp_host"]
