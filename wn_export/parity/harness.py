"""The parity harness: does every graph in DIR compute what the float64 reference computes?

Checks per graph precision present in the manifest:
1. scoring graph vs reference on real speech (the demo clip) and random tokens, batch 1 and > 1;
2. step graph teacher-forced over ≥ 3× the receptive field vs the reference and vs the scoring graph;
3. generation: the step graph and the reference driven by the same uniforms; FP32 must draw the
   identical sequence, FP16 reports its first divergence;
and, for conditioned models, the upsample graph vs the reference upsampling.
Metrics are data (`Check`, `Report`); tolerances per precision live in `TOLERANCES`. Long inputs run in
pieces and are judged as one sequence (`MetricStream`), so memory does not grow with the clip: the
reference carries its state across pieces, the whole-sequence scoring graph runs overlapping windows.

Stages: `_prepare` (validate, read DIR, reference outputs) → `_upsample_checks` → per precision
`_scoring_checks` → `_step_checks` (teacher forcing, `_generation_check`).

Variants: scalar-input models are fed the decoded samples of the same μ-law tokens (so the speech
and random inputs are the same signals); mixture-of-logistics outputs are compared as raw parameters
(max abs, rel L2; KL and top-1 do not apply) and through the log-likelihood of the next sample, and
their generated float samples "agree" within `MOL_GENERATION_ATOL`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from reference_model.limits import check
from wn_export import demo_audio
from wn_export.backends.torch_ref import reference_model_for
from wn_export.contract.manifest import read_manifest
from wn_export.contract.specs import PRECISION_NAMES, graph_name
from wn_export.errors import ArtifactError, InputError
from wn_export.generation.audio import wav_tokens
from wn_export.parity.metrics import (
    MOL_GENERATION_ATOL,
    TOLERANCES,
    Check,
    MetricStream,
    judge,
    log_prob_metrics,
    logit_metrics,
    model_inputs,
    param_metrics,
)


@dataclass
class Report:
    directory: str
    backend: str
    checks: list[Check]
    notes: tuple[str, ...] = ()  # graphs this backend cannot check, and why

    def __bool__(self) -> bool:
        return all(self.checks)

    def to_json(self) -> str:
        return json.dumps({"directory": self.directory, "backend": self.backend, "passed": bool(self),
                           "notes": list(self.notes),
                           "tolerances": {k: asdict(v) for k, v in TOLERANCES.items()},
                           "checks": [asdict(c) | {"passed": bool(c)} for c in self.checks]}, indent=2)

    def table(self):
        from rich.table import Table

        cols = ["max_abs", "rel_l2", "kl_mean", "kl_max", "top1", "ll_diff", "first_divergence"]
        table = Table(title=f"parity: {self.directory} ({self.backend})")
        for c in ["check", "graph", *cols, "result"]:
            table.add_column(c, justify="left" if c in ("check", "graph", "result") else "right")
        for c in self.checks:
            cells = [_fmt(c.metrics.get(k)) for k in cols]
            table.add_row(c.name, c.graph, *cells, "[green]pass[/]" if c else f"[red]FAIL[/] {'; '.join(c.failures)}")
        return table


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.2e}" if abs(v) < 0.01 else f"{v:.4f}"
    return str(int(v))


# Memory is bounded by running long inputs in pieces of about WINDOW_ROWS batch × samples: the reference
# carries its state from piece to piece (no overlap), the whole-sequence scoring graph cannot and runs
# overlapping windows (each kept output sees its whole receptive field; at least MIN_CHUNK kept samples).
# The graph keeps every layer's skip output alive until their sum (about 34 KB per sample for the 30-layer
# target), so one run over the 41,600-sample clip alone took 1.4 GB.
WINDOW_ROWS = 4096
MIN_CHUNK = 512


def run_parity(directory, backend: str = "onnxruntime", *, checkpoint: Path | None = None, seed: int = 0,
               generation_samples: int = 2000, progress: Callable[[str], None] | None = None) -> Report:
    """Every check for every graph precision in DIR (see the module doc) → `Report`."""
    ctx = _prepare(directory, backend, checkpoint, seed, generation_samples, progress or (lambda _msg: None))
    checks = _upsample_checks(ctx)
    for precision in PRECISION_NAMES:
        scored = _scoring_checks(ctx, precision, checks)
        _step_checks(ctx, precision, scored, checks)
    if not checks:
        raise InputError(f"{directory} holds no graphs to check")
    return Report(str(directory), backend, checks, tuple(ctx.notes))


@dataclass
class _Context:
    """What every stage of a parity run shares: the export, the reference and the inputs."""

    manifest: object
    cfg: object
    model: object  # the float64 reference WaveNet
    backend: str
    available: set  # graph names this backend checks
    seed: int
    generation_samples: int
    say: Callable[[str], None]
    rng: np.random.Generator
    steps: int  # T: teacher-forced steps, ≥ 3× the receptive field
    inputs: dict  # name → tokens (B, T') (scalar-input models: float samples)
    conds: dict  # name → (frames, per-sample cond, speaker)
    refs: dict  # name → the reference's {"out": (B, T', O), "log_prob": (B, T'−1)} float64
    out_key: str  # "logits" | "mol_params"
    metrics: Callable
    generation: tuple | None = None  # (generate's keywords, the reference's draws), made once per run
    notes: list = field(default_factory=list)  # graphs this backend cannot check, and why

    def conditioning(self, batch: int, length: int):
        """Random frame features, their reference upsampling (float32) and speaker ids."""
        cfg = self.cfg
        if not cfg.local:
            frames = cond = None
        else:
            frames = self.rng.standard_normal((batch, cfg.local_channels, -(-length // cfg.hop_size)))
            cond = self.reference().upsample(frames)[:, :, :length].astype(np.float32)
        speaker = self.rng.integers(0, cfg.speakers, batch) if cfg.global_ else None
        return frames, cond, speaker

    def reference(self):
        from wn_export.backends.torch_ref import TorchScoringRunner

        return TorchScoringRunner(self.model)


def _prepare(directory, backend: str, checkpoint, seed: int, generation_samples: int, say) -> _Context:
    """Validate the request, read DIR, load the reference and score the inputs with it (in windows)."""
    from wn_export.backends import get_backend

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise InputError(f"seed must be an integer in [0, 2^64) (got {seed!r:.40})")
    if isinstance(generation_samples, bool) or not isinstance(generation_samples, (int, np.integer)) \
            or generation_samples < 1:
        raise InputError(f"generation samples must be a positive integer (got {generation_samples!r:.40})")
    spec = get_backend(backend)
    manifest = read_manifest(directory)
    cfg = manifest.config
    speech = wav_tokens(demo_audio(), cfg.quantization_channels)
    T = 3 * cfg.receptive_field + 1  # ≥ 3× receptive field
    check("memory_bytes", _held_bytes(cfg, T, max(len(speech), T), int(generation_samples)),
          f"the arrays of this parity run ({T:,} teacher-forced steps, {generation_samples:,} generated samples)")
    available = set(manifest.engines) if spec.engines else set(manifest.graphs)
    checkable = {graph_name(kind, p, v) for p in PRECISION_NAMES for kind, v in
                 (("scoring", None), ("step", None), ("step", "fused"))}
    if not available & checkable:
        raise ArtifactError(f"{directory} has no {backend} artifacts to check"
                            + (": build engines with `wn-export trt`" if spec.engines else ""))
    model = reference_model_for(manifest, checkpoint)
    ctx = _Context(manifest, cfg, model, backend, available, int(seed), int(generation_samples), say,
                   np.random.default_rng(seed), T, {}, {}, {}, "mol_params" if cfg.mol else "logits",
                   param_metrics if cfg.mol else logit_metrics)
    ctx.inputs = {k: model_inputs(cfg, v) for k, v in _token_inputs(speech, T, ctx.rng, cfg).items()}
    ctx.conds = {k: ctx.conditioning(v.shape[0], v.shape[1]) for k, v in ctx.inputs.items()}
    for k, tok in ctx.inputs.items():
        say(f"reference scoring {k}")
        ctx.refs[k] = _assemble(_reference_pieces(ctx, k), tok.shape, np.float64)
    return ctx


def _token_inputs(speech: np.ndarray, T: int, rng: np.random.Generator, cfg) -> dict[str, np.ndarray]:
    """name → μ-law tokens (B, T'): the held-out clip (whole, and two T-sample pieces) and random tokens."""
    Q = cfg.quantization_channels
    if len(speech) < T:
        speech = np.tile(speech, -(-T // len(speech)))
    half = len(speech) // 2
    return {"speech/b1": speech[None, :max(T, len(speech))],
            "speech/b2": np.stack([speech[:T], speech[half - T:half] if half >= T else speech[-T:]]),
            "random/b1": rng.integers(0, Q, (1, T)),
            "random/b3": rng.integers(0, Q, (3, T))}


def _held_bytes(cfg, T: int, clip: int, generation: int) -> int:
    """Bytes the run holds: the reference outputs of every input (float64) and the step checks' outputs,
    plus the generated streams and their conditioning."""
    rows = clip + (2 + 1 + 3) * T  # speech/b1, speech/b2, random/b1, random/b3
    per_row = 8 * (cfg.output_channels + 1) + 4 * cfg.local_channels
    return rows * per_row + 2 * 3 * T * 8 * cfg.output_channels + 2 * generation * (16 + 4 * cfg.local_channels)


def _reference_pieces(ctx: _Context, k: str):
    """Yield (s, e, outputs [s, e), log_prob [s, min(e, T' − 1))) of the float64 reference over input k,
    piece by piece, carrying the model's state across pieces (`WaveNet.run` with pasts: exact)."""
    import torch

    model, cfg = ctx.model, ctx.cfg
    tok, (_, cond, speaker) = ctx.inputs[k], ctx.conds[k]
    B, total = tok.shape
    tokens = torch.as_tensor(tok, dtype=torch.float64 if cfg.scalar_input else torch.int64)
    cond = None if cond is None else torch.as_tensor(cond, dtype=torch.float64)
    speaker = None if speaker is None else torch.as_tensor(speaker, dtype=torch.int64)
    pasts = model.initial_state(B)
    chunk = max(1, WINDOW_ROWS // B)
    with torch.no_grad():
        for s in range(0, total, chunk):
            e = min(s + chunk, total)
            out, pasts = model.run(tokens[:, s:e], pasts, None if cond is None else cond[:, :, s:e], speaker)
            # log_prob pairs outputs [:-1] with the next inputs: give it the next piece's first input
            padded = torch.cat([out, out[:, -1:]], dim=1) if e < total else out
            log_prob = model.log_prob(padded, tokens[:, s:e + 1])
            yield s, e, out.numpy(), log_prob.numpy()


def _windows(total: int, batch: int, rf: int):
    """(a, s, e): run samples [a, min(e + 1, total)) to keep outputs [s, e), where a = s − (rf − 1):
    every kept output sees its whole receptive field, so windows give the whole sequence's outputs."""
    chunk = max(MIN_CHUNK, WINDOW_ROWS // batch - (rf - 1))
    for s in range(0, total, chunk):
        yield max(0, s - (rf - 1)), s, min(s + chunk, total)


def _windowed(infer, ctx: _Context, k: str):
    """Yield (s, e, outputs [s, e), log_prob [s, min(e, T' − 1))) of `infer` over input k, window by window."""
    tok, (_, cond, speaker) = ctx.inputs[k], ctx.conds[k]
    total = tok.shape[1]
    for a, s, e in _windows(total, tok.shape[0], ctx.cfg.receptive_field):
        end = min(e + 1, total)
        out = infer(tok[:, a:end], None if cond is None else cond[:, :, a:end], speaker)
        yield s, e, out[ctx.out_key][:, s - a:e - a], out["log_prob"][:, s - a:min(e, total - 1) - a]


def _assemble(pieces, shape: tuple, dtype) -> dict:
    """Window outputs → {"out": (B, T', O), "log_prob": (B, T' − 1)}."""
    out = log_prob = None
    for s, e, o, lp in pieces:
        if out is None:
            out = np.empty((*shape, o.shape[-1]), dtype=dtype)
            log_prob = np.empty((shape[0], shape[1] - 1), dtype=dtype)
        out[:, s:e] = o
        log_prob[:, s:s + lp.shape[1]] = lp
    return {"out": out, "log_prob": log_prob}


def _upsample_checks(ctx: _Context) -> list[Check]:
    if not ctx.cfg.local:
        return []
    from wn_export.backends.onnxruntime.runner import OrtUpsampleRunner

    frames = ctx.conds["random/b3"][0]
    with OrtUpsampleRunner(ctx.manifest) as up:
        got = up.upsample(frames)
    return [judge("upsample/random/b3", "upsample", "fp32",
                  {"max_abs": float(np.abs(got - ctx.reference().upsample(frames)).max())})]


STEP_INPUTS = ("speech/b2", "random/b3")  # the inputs the step graph is teacher-forced on


def _scoring_checks(ctx: _Context, precision: str, checks: list[Check]) -> dict:
    """Score every input with the precision's scoring graph, window by window, judged against the
    reference as one sequence → the outputs of the step inputs (for the step-vs-scoring checks)."""
    from wn_export.backends import get_backend, open_scoring

    name = graph_name("scoring", precision)
    if name not in ctx.available or not get_backend(ctx.backend).scoring:  # a step-only backend: no scoring
        return {}
    kept = {}
    with open_scoring(ctx.manifest, ctx.backend, name) as runner:
        for k, tok in ctx.inputs.items():
            ctx.say(f"{name} {k}")
            ref, stream = ctx.refs[k], MetricStream(ctx.metrics)
            pieces = []
            for s, e, out, log_prob in _windowed(runner.infer, ctx, k):
                stream.add(out, ref["out"][:, s:e])
                stream.add_log_prob(log_prob, ref["log_prob"][:, s:s + log_prob.shape[1]])
                if k in STEP_INPUTS:
                    pieces.append((s, e, out, log_prob))
            if pieces:
                kept[k] = _assemble(pieces, tok.shape, np.float32)["out"]
            checks.append(judge(f"scoring/{k}", name, precision, stream.result()))
    return kept


def _step_checks(ctx: _Context, precision: str, scored: dict, checks: list[Check]) -> None:
    """Teacher forcing and seeded generation on the precision's step graph (and, when ONNX Runtime
    fused it, on its standard-op session too), and on its fused-step graph where the backend runs plugins."""
    from wn_export.backends import get_backend, open_step

    plugins = get_backend(ctx.backend).plugins
    name, fused_name = graph_name("step", precision), graph_name("step", precision, "fused")
    if fused_name in ctx.available and not plugins:
        ctx.notes.append(f"{fused_name} skipped: its body is one {ctx.manifest.graph(fused_name).plugin} node, a "
                         f"TensorRT plugin the {ctx.backend} backend cannot run (check it with --backend tensorrt)")
    for graph in (name, fused_name):
        if graph not in ctx.available or (graph == fused_name and not plugins):
            continue
        with open_step(ctx.manifest, ctx.backend, graph) as runner:
            _one_step_session(ctx, runner, graph, precision, scored, checks)
            fused = getattr(runner, "is_fused", False)
        if fused:  # the ONNX Runtime host fused the layer chain: check the standard-op session too
            with open_step(ctx.manifest, ctx.backend, graph, fused=False) as runner:
                _one_step_session(ctx, runner, f"{graph} (standard ops)", precision, scored, checks)


def _one_step_session(ctx: _Context, runner, label: str, precision: str, scored: dict, checks: list[Check]) -> None:
    T = ctx.steps
    for k in STEP_INPUTS:
        tok, (_, cond, speaker) = ctx.inputs[k][:, :T], ctx.conds[k]
        ctx.say(f"{label} teacher-forced {k} ({T} steps)")
        logits = runner.teacher_force(tok, cond, speaker)
        checks.append(judge(f"step/{k}/vs-reference", label, precision, ctx.metrics(logits, ctx.refs[k]["out"][:, :T])))
        if k in scored:
            checks.append(judge(f"step/{k}/vs-scoring", label, precision, ctx.metrics(logits, scored[k][:, :T])))
        del logits
    checks.append(_generation_check(ctx, runner, label, precision))


def _generation_check(ctx: _Context, runner, label: str, precision: str) -> Check:
    """The step graph and the reference draw with the same uniforms: FP32 must draw the same sequence."""
    from wn_export.backends.torch_ref import TorchStepRunner
    from wn_export.generation.loop import generate

    n, batch, cfg = ctx.generation_samples, 2, ctx.cfg
    if ctx.generation is None:  # one conditioning and one reference run for every session
        _, cond, speaker = ctx.conditioning(batch, n)
        kw = dict(seed=ctx.seed, quantization_channels=cfg.quantization_channels, cond=cond, speaker=speaker)
        if cfg.scalar_input or cfg.mol:
            kw["cfg"] = cfg
        with TorchStepRunner(ctx.model) as reference:
            ctx.generation = (kw, generate(reference, n, batch, **kw))
    kw, want = ctx.generation
    ctx.say(f"{label} generation ({n} samples × {batch} streams, seed {ctx.seed})")
    got = generate(runner, n, batch, **kw)
    if cfg.mol:  # float samples: agree within MOL_GENERATION_ATOL
        same = np.abs(got.astype(np.float64) - want) <= MOL_GENERATION_ATOL
    else:
        same = got == want
    differs = np.nonzero((~same).any(axis=0))[0]
    return judge("step/generation", label, precision,
                 {"first_divergence": int(differs[0]) if differs.size else -1, "samples": n, "agree": float(same.mean())})


__all__ = ["Report", "run_parity", "judge", "logit_metrics", "param_metrics", "log_prob_metrics", "WINDOW_ROWS",
           "MIN_CHUNK"]
