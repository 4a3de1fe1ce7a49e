"""The parity harness: does every graph in DIR compute what the float64 reference computes?

Checks per graph precision present in the manifest:
1. scoring graph vs reference on real speech (the demo clip) and random tokens, batch 1 and > 1;
2. step graph teacher-forced over ≥ 3× the receptive field vs the reference and vs the scoring graph;
3. generation: the step graph and the reference driven by the same uniforms; FP32 must draw the
   identical sequence, FP16 reports its first divergence;
and, for conditioned models, the upsample graph vs the reference upsampling.
Metrics are data (`Check`, `Report`); tolerances per precision live in `TOLERANCES`.

Variants: scalar-input models are fed the decoded samples of the same μ-law tokens (so the speech
and random inputs are the same signals); mixture-of-logistics outputs are compared as raw parameters
(max abs, rel L2; KL and top-1 do not apply) and through the log-likelihood of the next sample, and
their generated float samples "agree" within `MOL_GENERATION_ATOL`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

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


def run_parity(directory, backend: str = "onnxruntime", *, checkpoint: Path | None = None, seed: int = 0,
               generation_samples: int = 2000, progress: Callable[[str], None] | None = None) -> Report:
    from wn_export.backends import get_backend, open_scoring, open_step
    from wn_export.backends.torch_ref import TorchScoringRunner, TorchStepRunner
    from wn_export.generation.loop import generate

    say = progress or (lambda _msg: None)
    manifest = read_manifest(directory)
    cfg = manifest.config
    model = reference_model_for(manifest, checkpoint)
    rng = np.random.default_rng(seed)
    rf, Q = cfg.receptive_field, cfg.quantization_channels
    speech = wav_tokens(demo_audio(), Q)
    T = 3 * rf + 1  # ≥ 3× receptive field
    if len(speech) < T:
        speech = np.tile(speech, -(-T // len(speech)))
    half = len(speech) // 2
    inputs = {  # name → tokens (B, T)
        "speech/b1": speech[None, :max(T, len(speech))],
        "speech/b2": np.stack([speech[:T], speech[half - T:half] if half >= T else speech[-T:]]),
        "random/b1": rng.integers(0, Q, (1, T)),
        "random/b3": rng.integers(0, Q, (3, T)),
    }
    inputs = {k: model_inputs(cfg, v) for k, v in inputs.items()}  # scalar models: float samples
    out_key, metrics = ("mol_params", param_metrics) if cfg.mol else ("logits", logit_metrics)
    ref = TorchScoringRunner(model)
    checks: list[Check] = []
    notes: list[str] = []

    def conditioning(batch: int, length: int):
        frames = rng.standard_normal((batch, cfg.local_channels, -(-length // cfg.hop_size))) if cfg.local else None
        cond = ref.upsample(frames)[:, :, :length].astype(np.float32) if cfg.local else None
        speaker = rng.integers(0, cfg.speakers, batch) if cfg.global_ else None
        return frames, cond, speaker

    conds = {k: conditioning(v.shape[0], v.shape[1]) for k, v in inputs.items()}
    refs = {}
    for k, tok in inputs.items():
        say(f"reference scoring {k}")
        refs[k] = ref.infer(tok, conds[k][1], conds[k][2])

    if cfg.local:
        from wn_export.backends.onnxruntime.runner import OrtUpsampleRunner

        frames = conds["random/b3"][0]
        with OrtUpsampleRunner(manifest) as up:
            got = up.upsample(frames)
        checks.append(judge("upsample/random/b3", "upsample", "fp32",
                            {"max_abs": float(np.abs(got - ref.upsample(frames)).max())}))

    # TensorRT checks the graphs that have engines; the other backends run every graph
    available = set(manifest.engines) if get_backend(backend).engines else set(manifest.graphs)
    checkable = {graph_name(kind, p, v) for p in PRECISION_NAMES for kind, v in
                 (("scoring", None), ("step", None), ("step", "fused"))}
    if not available & checkable:
        raise ArtifactError(f"{directory} has no {backend} artifacts to check"
                            + (": build engines with `wn-export trt`" if get_backend(backend).engines else ""))
    for precision in PRECISION_NAMES:
        scoring_name, step_name = graph_name("scoring", precision), graph_name("step", precision)
        scored = {}
        if scoring_name in available and get_backend(backend).scoring:  # a step-only backend: no scoring
            with open_scoring(manifest, backend, scoring_name) as runner:
                for k, tok in inputs.items():
                    say(f"{scoring_name} {k}")
                    out = runner.infer(tok, conds[k][1], conds[k][2])
                    scored[k] = out
                    checks.append(judge(f"scoring/{k}", scoring_name, precision,
                                        metrics(out[out_key], refs[k][out_key])
                                        | log_prob_metrics(out["log_prob"], refs[k]["log_prob"])))
        fused_name = graph_name("step", precision, "fused")
        if fused_name in available and not get_backend(backend).plugins:
            notes.append(f"{fused_name} skipped: its body is one {manifest.graph(fused_name).plugin} node, a "
                         f"TensorRT plugin the {backend} backend cannot run (check it with --backend tensorrt)")
        steps = [g for g in (step_name, fused_name) if g in available
                 and (g == step_name or get_backend(backend).plugins)]
        if not steps:
            continue
        wanted = {}  # the reference generation, computed once for every step session

        def step_checks(runner, graph_label):
            for k in ("speech/b2", "random/b3"):
                tok, (_, cond, speaker) = inputs[k][:, :T], conds[k]
                say(f"{graph_label} teacher-forced {k} ({T} steps)")
                logits = runner.teacher_force(tok, cond, speaker)
                checks.append(judge(f"step/{k}/vs-reference", graph_label, precision,
                                    metrics(logits, refs[k][out_key][:, :T])))
                if k in scored:
                    checks.append(judge(f"step/{k}/vs-scoring", graph_label, precision,
                                        metrics(logits, scored[k][out_key][:, :T])))
            n, batch = generation_samples, 2
            if not wanted:
                _, cond, speaker = conditioning(batch, n)
                wanted["kw"] = dict(seed=seed, quantization_channels=Q, cond=cond, speaker=speaker)
                if cfg.scalar_input or cfg.mol:
                    wanted["kw"]["cfg"] = cfg
            kw = wanted["kw"]
            say(f"{graph_label} generation ({n} samples × {batch} streams, seed {seed})")
            got = generate(runner, n, batch, **kw)
            if "want" not in wanted:
                with TorchStepRunner(model) as reference:
                    wanted["want"] = generate(reference, n, batch, **kw)
            want = wanted["want"]
            if cfg.mol:  # float samples: agree within MOL_GENERATION_ATOL
                same = np.abs(got.astype(np.float64) - want) <= MOL_GENERATION_ATOL
            else:
                same = got == want
            differs = np.nonzero((~same).any(axis=0))[0]
            first = int(differs[0]) if differs.size else -1
            checks.append(judge("step/generation", graph_label, precision,
                                {"first_divergence": first, "samples": n, "agree": float(same.mean())}))
        for name in steps:
            with open_step(manifest, backend, name) as runner:
                step_checks(runner, name)
                fused = getattr(runner, "is_fused", False)
            if fused:  # the ONNX Runtime host fused the layer chain: check the standard-op session too
                with open_step(manifest, backend, name, fused=False) as runner:
                    step_checks(runner, f"{name} (standard ops)")
    if not checks:
        raise InputError(f"{directory} holds no graphs to check")
    return Report(str(directory), backend, checks, tuple(notes))
