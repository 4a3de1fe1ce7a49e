"""`wn-export bench`: the generation step loop and the scoring graph, against the baselines, in one run.

Step loop (one generated sample per stream: a step plus sampling), for each batch size, per backend:
- `onnxruntime`: our host (`OrtStepRunner` + `host.Sampler`) on the exported step graph, with the
  layer chain fused into one `wn_ort_ops` node when possible; `onnxruntime (standard ops)` is the same
  graph with standard ONNX Runtime kernels only;
- `torch reference`: our PyTorch reference `WaveNet.step` (`TorchStepRunner`, FP32, one thread) with the
  same sampler;
- `eager incremental`: the baseline everybody starts from, r9y9 wavenet_vocoder's `incremental_forward`
  re-implemented faithfully (`R9y9Incremental`): per layer a Conv1d whose input buffer of
  (K−1)·d + 1 samples is shifted every step by slicing, linearized weights (`_get_linearized_weight`),
  `F.linear` for the 1×1 convolutions, one-hot input, softmax + `OneHotCategorical` sampling; with
  torch's default threads (what users get) and again with one thread.
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

from .errors import InputError

TARGET = dict(layers=30, stacks=3, residual_channels=64, gate_channels=128, skip_channels=256, kernel_size=2,
              quantization_channels=256)  # 3 cycles of dilations 1…512, receptive field 3070
TARGET_SAMPLES_PER_S = 5000  # batch 1, ONNX Runtime, on the 2-core reference machine
TARGET_RATIO = 50  # × the eager-incremental baseline
BASELINE = "eager incremental"


# ---- the r9y9 baseline ---------------------------------------------------------------------------
class _IncrementalConv1d:
    """r9y9 `conv.py` `Conv1d.incremental_forward`: (B, 1, C_in) → (B, 1, C_out)."""

    def __init__(self, weight, bias, dilation: int = 1):
        self.out_channels, self.in_channels, self.kw = weight.shape
        self.dilation = dilation
        self.weight, self.bias = weight, bias
        self._linearized_weight = None
        self.input_buffer = None

    def _get_linearized_weight(self):
        if self._linearized_weight is None:
            weight = self.weight.transpose(1, 2).contiguous()  # (out, kw, in)
            self._linearized_weight = weight.view(self.out_channels, -1)
        return self._linearized_weight

    def clear_buffer(self):
        self.input_buffer = None

    def incremental_forward(self, input):
        import torch.nn.functional as F

        weight = self._get_linearized_weight()
        kw, dilation = self.kw, self.dilation
        bsz = input.size(0)  # input: bsz × len × dim
        if kw > 1:
            input = input.data
            if self.input_buffer is None:
                self.input_buffer = input.new(bsz, kw + (kw - 1) * (dilation - 1), input.size(2))
                self.input_buffer.zero_()
            else:  # shift buffer
                self.input_buffer[:, :-1, :] = self.input_buffer[:, 1:, :].clone()
            self.input_buffer[:, -1, :] = input[:, -1, :]  # append next input
            input = self.input_buffer
            if dilation > 1:
                input = input[:, 0::dilation, :].contiguous()
        output = F.linear(input.view(bsz, -1), weight, self.bias)
        return output.view(bsz, 1, -1)


class R9y9Incremental:
    """The eager incremental loop of r9y9 wavenet_vocoder (`WaveNet.incremental_forward` with
    `ResidualConv1dGLU._forward(is_incremental=True)`), over the weights of our `WaveNet`: one-hot input
    through a 1×1 first conv (our embedding), per layer conv → split → (+ cond, + speaker) → tanh·σ →
    skip / out 1×1, (x + residual)[·√0.5], Σ skips [·√(1/L)], ReLU-1×1-ReLU-1×1, softmax, sample."""

    def __init__(self, model):
        import torch

        cfg = self.cfg = model.cfg
        if getattr(cfg, "scalar_input", False) or getattr(cfg, "mol", False) or model.embed is None:
            raise InputError("the eager-incremental baseline covers μ-law categorical models with a token "
                             "embedding (no scalar input, mixture output or wide front end)")
        d = lambda t: None if t is None else t.detach().float()  # noqa: E731
        self.first_conv = _IncrementalConv1d(d(model.embed.weight).t().unsqueeze(-1), None)  # (R, Q, 1)
        self.layers = []
        for layer, dilation in zip(model.layers, cfg.layer_dilations):
            w, b, cw, sw = layer.weights() if hasattr(layer, "weights") else (
                layer.conv.weight, layer.conv.bias, None if layer.cond is None else layer.cond.weight,
                None if layer.speaker is None else layer.speaker.weight)
            out = getattr(layer, "out", None)
            self.layers.append(dict(
                conv=_IncrementalConv1d(d(w), d(b), dilation),
                cond=None if cw is None else _IncrementalConv1d(d(cw), None),
                speaker=None if sw is None else _IncrementalConv1d(d(sw).unsqueeze(-1), None),
                skip=_IncrementalConv1d(d(layer.skip.weight), d(layer.skip.bias)),
                out=None if out is None else _IncrementalConv1d(d(out.weight), d(out.bias)),
                scale=layer.residual_scale))
        self.last = [_IncrementalConv1d(d(model.head[1].weight), d(model.head[1].bias)),
                     _IncrementalConv1d(d(model.head[3].weight), d(model.head[3].bias))]
        self.speaker_embed = None if model.speaker_embed is None else d(model.speaker_embed.weight)
        self.torch = torch

    def clear_buffer(self):
        for layer in self.layers:
            layer["conv"].clear_buffer()

    def initial_input(self, batch: int):
        x = self.torch.zeros(batch, 1, self.cfg.quantization_channels)
        x[:, :, self.cfg.quantization_channels // 2] = 1  # μ-law silence, as our hosts start
        return x

    def step(self, current_input, ct=None, g=None):
        """current_input (B, 1, Q) one-hot, ct (B, 1, C), g (B, 1, E) → logits (B, Q)."""
        torch = self.torch
        import torch.nn.functional as F

        x = self.first_conv.incremental_forward(current_input)
        skips = 0
        legacy = getattr(self.cfg, "legacy_skip_scale", False)
        for i, f in enumerate(self.layers):
            residual = x
            x = f["conv"].incremental_forward(x)
            a, b = x.split(x.size(-1) // 2, dim=-1)
            if f["cond"] is not None:
                c = f["cond"].incremental_forward(ct)
                ca, cb = c.split(c.size(-1) // 2, dim=-1)
                a, b = a + ca, b + cb
            if f["speaker"] is not None:
                gg = f["speaker"].incremental_forward(g)
                ga, gb = gg.split(gg.size(-1) // 2, dim=-1)
                a, b = a + ga, b + gb
            x = torch.tanh(a) * torch.sigmoid(b)
            s = f["skip"].incremental_forward(x)
            if f["out"] is not None:
                x = f["out"].incremental_forward(x)
                x = x + residual
                if f["scale"] != 1.0:
                    x = x * f["scale"]
            else:
                x = residual
            skips = skips + s
            if legacy and i > 0:
                skips = skips * math.sqrt(0.5)
        if self.cfg.scale_skip:
            skips = skips * math.sqrt(1.0 / len(self.layers))
        x = skips
        for f in self.last:
            x = f.incremental_forward(F.relu(x))
        return x.view(x.size(0), -1)

    def sample(self, logits):
        """softmax → OneHotCategorical sample → the next input (B, 1, Q), as r9y9 does."""
        torch = self.torch
        x = torch.nn.functional.softmax(logits, dim=1)
        return torch.distributions.OneHotCategorical(x).sample().unsqueeze(1)

    def speaker_input(self, speaker):
        return None if self.speaker_embed is None else self.speaker_embed[self.torch.as_tensor(speaker)].unsqueeze(1)


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
        return {"samples_per_s": ort.samples_per_s, "goal": TARGET_SAMPLES_PER_S, "ratio": ratio,
                "ratio_goal": TARGET_RATIO, "met": ort.samples_per_s >= TARGET_SAMPLES_PER_S
                and (ratio is None or ratio >= TARGET_RATIO)}

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
                      f"{r.spread[0]:,.0f}–{r.spread[1]:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", str(r.steps),
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
            ratio = "" if tgt["ratio"] is None else f", {tgt['ratio']:,.0f}× the eager-incremental baseline " \
                                                    f"(goal ≥ {TARGET_RATIO}×)"
            lines.append(f"target: batch 1 ONNX Runtime {tgt['samples_per_s']:,.0f} samples/s "
                         f"(goal ≥ {TARGET_SAMPLES_PER_S:,}){ratio}: {'MET' if tgt['met'] else 'NOT MET'}")
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

    from .export import export_directory

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
              scoring_samples: int = 16384, baseline_1thread: bool = True,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark DIR (or the built 30-layer target) → `BenchReport` (see the module doc)."""
    import torch

    from .manifest import read_manifest
    from .parity import reference_model_for
    from .runners.ort import OrtStepRunner
    from .runners.torch_ref import TorchStepRunner
    from reference_model.sampling import uniforms

    from .host import Sampler

    say = progress or (lambda _m: None)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"batch sizes must be positive integers (got {batches})")
    if seconds <= 0 or rounds < 1 or min_steps < 1:
        raise InputError("seconds must be > 0, rounds and min_steps ≥ 1")
    load_before = _load()
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="wn-bench-")
        dirs = build_target(Path(tmp.name), layouts, say)
        is_target = True
    else:
        manifest = read_manifest(directory)
        dirs = {manifest.graph("step").data.get("layout", "ring"): Path(directory)}
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
            if layout == main_layout and runner.setup.startswith("fused"):  # the same graph, standard ops
                plain = OrtStepRunner(read_manifest(d), threads=threads, fused=False)
                plain.activate()
                ort_runners["onnxruntime (standard ops)"] = (layout, plain)
        try:
            for B in batches:
                cond, spk = conditioning(B)
                u = uniforms(0, 4096, B)[:, :, None]
                sampler = Sampler(B, Q, "sample", 1.0)

                def host_loop(runner):  # our hosts: runner step + the host's sampler
                    runner.reset(B, spk)
                    state = {"token": np.full(B, Q // 2, np.int64), "t": 0}

                    def one():
                        t = state["t"]
                        state["token"] = sampler(runner.step(state["token"], cond), u[t & 4095])
                        state["t"] = t + 1
                    return one

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
                        notes[name] = f"{layout} state, {runner.setup}, {_threads(runner.threads_for(B))}"
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
        finally:
            for _, r in ort_runners.values():
                r.deactivate()

        if scoring and "scoring" in manifest.graphs:
            say("scoring graph")
            results += _bench_scoring(manifest, model, batches, scoring_samples, rounds, say)
        settings = {"batches": batches, "seconds": seconds, "rounds": rounds, "min_steps": min_steps,
                    "threads": threads, "layouts": list(dirs), "scoring_samples": scoring_samples,
                    "sampling": "inverse CDF, temperature 1 (baseline: softmax + OneHotCategorical)"}
        desc = (f"{cfg.layers} layers ({cfg.stacks} cycles of 1…{max(cfg.layer_dilations)}), residual "
                f"{cfg.residual_channels}, gate {cfg.gate_channels}, skip {cfg.skip_channels}, K={cfg.kernel_size}, "
                f"{Q} classes, receptive field {cfg.receptive_field}, {model.parameter_count():,} parameters")
        return BenchReport({"description": desc, "config": cfg.to_dict(), "is_target": is_target},
                           "30-layer target, random init" if tmp else str(directory),
                           _machine(load_before), settings, results)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _bench_scoring(manifest, model, batches, scoring_samples, rounds, say) -> list[Result]:
    import torch

    from .runners.ort import OrtScoringRunner

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
    return values


def parse_layouts(text: str, directory=None) -> tuple[str, ...]:
    from .graphs import LAYOUTS

    values = tuple(v.strip() for v in str(text).split(",") if v.strip())
    bad = [v for v in values if v not in LAYOUTS]
    if not values or bad:
        raise InputError(f"layouts must be a comma-separated subset of {', '.join(LAYOUTS)} (got {text!r})")
    if directory is not None and values != ("ring",):
        raise InputError("--layouts applies to the built target model; a DIRECTORY is benchmarked in its own layout")
    return values


__all__ = ["TARGET", "R9y9Incremental", "BenchReport", "Result", "run_bench", "build_target", "parse_batches",
           "parse_layouts"]
