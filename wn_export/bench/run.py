"""`wn-export bench`: the generation step loop and the scoring graph, against the baselines, in one run.

Step loop (one generated sample per stream: a step plus sampling), for each batch size, per backend:
- `onnxruntime`: our host (`OrtStepRunner` + `generation.StepLoop`) on the exported step graph, with the
  layer chain fused into one `wn_ort_ops` node when possible; `onnxruntime (standard ops)` is the same
  graph with standard ONNX Runtime kernels only;
- `torch reference`: our PyTorch reference `WaveNet.step` (`TorchStepRunner`, FP32, one thread) with the
  same sampler;
- `eager incremental`: the baseline everybody starts from, r9y9 wavenet_vocoder's `incremental_forward`
  re-implemented faithfully (`baseline_r9y9.R9y9Incremental`: its modules, calls and sampler); with
  torch's default threads (what users get) and again with one thread;
- `wavenet_vocoder package` (batch 1, when the PyPI package is installed, e.g. by the `dev` extra): the
  package's own `incremental_forward` on a randomly initialised model of the same architecture, as a
  check that the re-implementation costs what the original costs.
Scoring: the exported scoring graph on ONNX Runtime vs PyTorch eager `forward` (+ log-softmax), FP32.

Measurements are interleaved: each round runs every backend once per batch size, so load changes on a
shared machine hit all of them alike; samples/s is the median over rounds (spread = min–max), latency
percentiles pool the per-step times of all rounds. Without DIR the 30-layer target model is built
(random init) and exported into a temporary directory.
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
TARGET_SAMPLES_PER_S = 5000  # batch 1, ONNX Runtime, on the 2-core reference machine
TARGET_RATIO = 50  # × the eager-incremental baseline
BASELINE = "eager incremental"


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


class _Timer:
    """Runs `fn` (one step) for ≥ `seconds` and ≥ `min_steps`, recording each call's duration."""

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


def _summarise(kind, backend, batch, rounds: list[np.ndarray], per_call: int, note="", time_steps=None):
    rates = [per_call * len(r) / r.sum() for r in rounds]
    pooled = np.concatenate(rounds)
    return Result(kind, backend, batch, float(np.median(rates)), (float(min(rates)), float(max(rates))),
                  [float(r) for r in rates], float(np.percentile(pooled, 50) * 1e3),
                  float(np.percentile(pooled, 99) * 1e3), int(pooled.size), time_steps, note)


@dataclass
class BenchReport:
    model: dict
    directory: str
    machine: dict
    settings: dict
    results: list[Result]
    layouts: dict = field(default_factory=dict)

    def get(self, kind: str, backend: str, batch: int) -> Result | None:
        return next((r for r in self.results if (r.kind, r.backend, r.batch) == (kind, backend, batch)), None)

    def ratio(self, r: Result) -> float | None:
        base = self.get(r.kind, BASELINE if r.kind == "step" else "torch eager forward", r.batch)
        return None if base is None or base.samples_per_s <= 0 else r.samples_per_s / base.samples_per_s

    def to_json(self) -> str:
        data = asdict(self)
        for r, d in zip(self.results, data["results"]):
            d["ratio_vs_baseline"] = self.ratio(r)
        data["target"] = self.target()
        return json.dumps(data, indent=2)

    def target(self) -> dict | None:
        ort = self.get("step", "onnxruntime", 1)
        if ort is None or not self.model.get("is_target"):
            return None
        ratio = self.ratio(ort)
        package = self.get("step", PACKAGE, 1)
        ratio_package = None if package is None or package.samples_per_s <= 0 else \
            ort.samples_per_s / package.samples_per_s
        speed_met = ort.samples_per_s >= TARGET_SAMPLES_PER_S
        ratio_met = ratio is None or ratio >= TARGET_RATIO
        return {"samples_per_s": ort.samples_per_s, "goal": TARGET_SAMPLES_PER_S, "ratio": ratio,
                "ratio_goal": TARGET_RATIO, "ratio_package": ratio_package, "speed_met": speed_met,
                "ratio_met": ratio_met, "met": speed_met and ratio_met}

    def tables(self):
        from rich.table import Table

        out = []
        t = Table(title="generation step loop (one step + sampling per sample and stream)")
        for c in ("batch", "backend", "setup", "samples/s", "rounds min–max", "p50 ms", "p99 ms", "steps",
                  f"× {BASELINE}"):
            t.add_column(c, justify="left" if c in ("backend", "setup") else "right")
        for r in [r for r in self.results if r.kind == "step"]:
            ratio = self.ratio(r)
            t.add_row(str(r.batch), r.backend, r.note, f"{r.samples_per_s:,.0f}",
                      f"{r.spread[0]:,.0f}–{r.spread[1]:,.0f}", "–" if r.p50_ms is None else f"{r.p50_ms:.3f}",
                      "–" if r.p99_ms is None else f"{r.p99_ms:.3f}", str(r.steps),
                      "" if ratio is None else f"{ratio:,.1f}×")
        out.append(t)
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
                 f"machine: {m['cpus']} CPUs ({m['processor']}), load average {m['load_before']} → "
                 f"{m['load_after']}; onnxruntime {m['onnxruntime']}, torch {m['torch']} "
                 f"(default threads {m['torch_threads']})"]
        tgt = self.target()
        if tgt:
            verdict = lambda ok: "met" if ok else "NOT MET"  # noqa: E731
            parts = [f"batch 1 ONNX Runtime {tgt['samples_per_s']:,.0f} samples/s (goal ≥ "
                     f"{TARGET_SAMPLES_PER_S:,}: {verdict(tgt['speed_met'])})"]
            if tgt["ratio"] is not None:
                parts.append(f"{tgt['ratio']:,.0f}× the eager-incremental baseline (goal ≥ {TARGET_RATIO}×: "
                             f"{verdict(tgt['ratio_met'])})")
            if tgt["ratio_package"] is not None:
                parts.append(f"{tgt['ratio_package']:,.0f}× the wavenet_vocoder package")
            lines.append("target: " + ", ".join(parts))
        return "\n".join(lines)


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _machine(load_before) -> dict:
    import onnxruntime
    import torch

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_before": load_before, "load_after": _load(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def build_target(directory: Path, layouts=("ring",), progress: Callable[[str], None] | None = None,
                 seed: int = 0) -> dict[str, Path]:
    """Random-init the 30-layer target model and export it (FP32) once per layout → {layout: DIR}."""
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
        export_directory(out[layout], checkpoint, layout=layout)
    return out


def run_bench(directory: Path | None = None, *, batches=(1, 8, 64), seconds: float = 1.0, rounds: int = 3,
              min_steps: int = 20, threads: int | None = None, layouts=("ring",), scoring: bool = True,
              scoring_samples: int = 16384, baseline_1thread: bool = True, package_baseline: bool = True,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark DIR (or the built 30-layer target) → `BenchReport` (see the module doc)."""
    import torch

    from wn_export.backends.onnxruntime.runner import OrtStepRunner
    from wn_export.backends.torch_ref import TorchStepRunner, reference_model_for
    from wn_export.contract.manifest import read_manifest
    from wn_export.generation.loop import StepLoop

    say = progress or (lambda _m: None)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"batch sizes must be positive integers (got {batches})")
    if not 0 < seconds < math.inf or rounds < 1 or min_steps < 1:
        raise InputError("seconds must be > 0, rounds and min_steps ≥ 1")
    load_before = _load()
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="wn-bench-")
        dirs = build_target(Path(tmp.name), layouts, say)
        is_target = True
    else:
        manifest = read_manifest(directory)
        dirs = {manifest.graph("step").layout or "ring": Path(directory)}
        is_target = manifest.config.to_dict() == {**manifest.config.to_dict(), **TARGET} \
            and manifest.config.dilations is None
    try:
        main_layout = "ring" if "ring" in dirs else next(iter(dirs))
        manifest = read_manifest(dirs[main_layout])
        cfg = manifest.config
        if getattr(cfg, "scalar_input", False) or getattr(cfg, "mol", False):
            raise InputError("bench measures μ-law categorical (token-input) models")
        model = reference_model_for(manifest, None).float().eval()
        baseline = R9y9Incremental(model)
        Q = cfg.quantization_channels
        rng = np.random.default_rng(0)
        timer = _Timer(seconds, min_steps, warmup=3)
        torch_threads = torch.get_num_threads()
        results: list[Result] = []

        def conditioning(B):
            cond = rng.standard_normal((B, cfg.local_channels)).astype(np.float32) if cfg.local else None
            spk = rng.integers(0, cfg.speakers, B) if cfg.global_ else None
            return cond, spk

        ort_runners = {}  # row name → (layout, runner)
        for layout, d in dirs.items():
            runner = OrtStepRunner(read_manifest(d), threads=threads)
            runner.activate()
            ort_runners["onnxruntime" if layout == main_layout else f"onnxruntime ({layout})"] = (layout, runner)
            if layout == main_layout and runner.is_fused:  # the same graph, standard ops
                plain = OrtStepRunner(read_manifest(d), threads=threads, fused=False)
                plain.activate()
                ort_runners["onnxruntime (standard ops)"] = (layout, plain)
        try:
            for B in batches:
                cond, spk = conditioning(B)
                held = None if cond is None else np.broadcast_to(cond[:, :, None], (*cond.shape, 1 << 40))

                def host_loop(runner):  # our hosts: the one generation loop, as Generator runs it
                    loop = StepLoop(runner, B, cfg, seed=0, cond=held, speaker=spk, window=4096)
                    loop.reset()
                    return loop.step

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
                notes = {}
                reference = TorchStepRunner(model, torch.float32)
                for rnd in range(rounds):
                    for name, (layout, runner) in ort_runners.items():
                        notes[name] = (f"{layout} state, {runner.setup}, {_threads(runner.threads_for(B))}"
                                       + (f" (not fused: {runner.unfused})" if runner.unfused else ""))
                        say(f"batch {B}, round {rnd + 1}/{rounds}: {name}")
                        runs.setdefault(name, []).append(timer(host_loop(runner)))
                    say(f"batch {B}, round {rnd + 1}/{rounds}: torch reference step")
                    with reference:
                        runs.setdefault("torch reference", []).append(timer(host_loop(reference)))
                    notes["torch reference"] = "FP32, 1 thread"
                    say(f"batch {B}, round {rnd + 1}/{rounds}: eager incremental baseline")
                    try:
                        runs.setdefault(BASELINE, []).append(timer(base_loop(torch_threads)))
                        notes[BASELINE] = f"r9y9 style, torch default {_threads(torch_threads)}"
                        if baseline_1thread and torch_threads != 1:
                            say(f"batch {B}, round {rnd + 1}/{rounds}: eager incremental baseline, 1 thread")
                            runs.setdefault(f"{BASELINE} (1 thread)", []).append(timer(base_loop(1)))
                            notes[f"{BASELINE} (1 thread)"] = "r9y9 style, 1 thread"
                    finally:
                        torch.set_num_threads(torch_threads)
                for name, rs in runs.items():
                    results.append(_summarise("step", name, B, rs, B, notes.get(name, "")))
                if B == 1 and package_baseline:
                    say("batch 1: the wavenet_vocoder package's incremental_forward")
                    row = _package_row(cfg, seconds, rounds, min_steps, torch_threads)
                    results += [row] if row is not None else []
        finally:
            for _, r in ort_runners.values():
                r.deactivate()

        if scoring and "scoring" in manifest.graphs:
            say("scoring graph")
            results += _bench_scoring(manifest, model, batches, scoring_samples, rounds, say)
        settings = {"batches": batches, "seconds": seconds, "rounds": rounds, "min_steps": min_steps,
                    "threads": threads, "layouts": list(dirs), "scoring_samples": scoring_samples,
                    "sampling": "inverse CDF, temperature 1 (baseline: softmax, then r9y9's np.random.choice at batch 1 "
                                "and OneHotCategorical above)"}
        desc = (f"{cfg.layers} layers ({cfg.stacks} cycles of 1…{max(cfg.layer_dilations)}), residual "
                f"{cfg.residual_channels}, gate {cfg.gate_channels}, skip {cfg.skip_channels}, K={cfg.kernel_size}, "
                f"{Q} classes, receptive field {cfg.receptive_field}, {model.parameter_count():,} parameters")
        return BenchReport({"description": desc, "config": cfg.to_dict(), "is_target": is_target},
                           "30-layer target, random init" if tmp else str(directory),
                           _machine(load_before), settings, results)
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
           "parse_layouts"]
