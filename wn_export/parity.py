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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from reference_model import load_checkpoint

from . import demo_audio
from .audio import wav_tokens
from .errors import ArtifactError, InputError
from .manifest import Manifest, read_manifest, sha256


@dataclass(frozen=True)
class Tolerance:
    """Upper bounds (lower bound for top1) that a graph of one precision must meet."""

    max_abs: float  # max |logit − reference logit|
    rel_l2: float  # ‖logits − ref‖₂ / ‖ref‖₂
    kl_mean: float  # mean KL(softmax(ref) ‖ softmax(logits)) over positions, nats
    kl_max: float  # max of the same
    top1: float  # minimum fraction of positions whose argmax agrees
    ll_diff: float  # mean |log p − reference log p| of the next token, nats per sample
    generation_identical: bool  # seeded generation must equal the reference exactly


# One table, documented in the README. Measured on the trained demo model with ONNX Runtime
# (`wn-export parity`, worst check): FP32 max_abs 4.1e-5, rel_l2 2.1e-7, kl_mean 6.8e-13, kl_max 1.3e-11,
# top1 0.9999, ll_diff 7.1e-7; FP16 max_abs 0.109, rel_l2 5.7e-4, kl_mean 3.9e-6, kl_max 1.1e-4,
# top1 0.988, ll_diff 1.7e-3. FP32 bounds sit 25–100× above that, FP16 bounds 3–15×.
TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-3, rel_l2=1e-5, kl_mean=1e-10, kl_max=1e-9, top1=0.999, ll_diff=2e-5,
                      generation_identical=True),
    "fp16": Tolerance(max_abs=0.3, rel_l2=3e-3, kl_mean=5e-5, kl_max=1e-3, top1=0.97, ll_diff=5e-3,
                      generation_identical=False),
}


def logit_metrics(test: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """test, ref (…, Q) → max abs, rel L2, KL mean/max, top-1 agreement (reference in float64)."""
    t, r = test.astype(np.float64).reshape(-1, test.shape[-1]), ref.astype(np.float64).reshape(-1, ref.shape[-1])
    lr = r - r.max(-1, keepdims=True)
    lr -= np.log(np.exp(lr).sum(-1, keepdims=True))
    lt = t - t.max(-1, keepdims=True)
    lt -= np.log(np.exp(lt).sum(-1, keepdims=True))
    kl = (np.exp(lr) * (lr - lt)).sum(-1)
    return {"max_abs": float(np.abs(t - r).max()),
            "rel_l2": float(np.linalg.norm(t - r) / max(np.linalg.norm(r), 1e-30)),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "top1": float((t.argmax(-1) == r.argmax(-1)).mean())}


MOL_GENERATION_ATOL = 1e-4  # |Δ sample| within which two generated mixture-of-logistics samples agree


def param_metrics(test: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Raw mixture-of-logistics parameters: max abs and relative L2 error (no distribution metrics)."""
    t, r = test.astype(np.float64), ref.astype(np.float64)
    return {"max_abs": float(np.abs(t - r).max()),
            "rel_l2": float(np.linalg.norm(t - r) / max(np.linalg.norm(r), 1e-30))}


def model_inputs(cfg, tokens: np.ndarray) -> np.ndarray:
    """What the graphs take for μ-law tokens: the tokens, or a scalar model's float32 samples."""
    if not cfg.scalar_input:
        return tokens
    if cfg.scalar_mulaw:
        return (2.0 * np.asarray(tokens) / (cfg.quantization_channels - 1) - 1.0).astype(np.float32)
    from reference_model.mulaw import mulaw_decode

    return mulaw_decode(tokens, cfg.quantization_channels)


def log_prob_metrics(test: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = test.astype(np.float64) - ref
    return {"ll_diff": float(np.abs(d).mean()), "ll_total_diff": float(d.sum() / max(d.size, 1)),
            "ll_ref": float(ref.mean())}


@dataclass
class Check:
    name: str  # e.g. "scoring/speech/b1"
    graph: str
    precision: str
    metrics: dict[str, float]
    failures: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures


def judge(name: str, graph: str, precision: str, metrics: dict[str, float]) -> Check:
    tol = TOLERANCES[precision]
    failures = []
    for key, value in metrics.items():
        bound = getattr(tol, key, None)
        if bound is None or isinstance(bound, bool):
            continue
        ok = value >= bound if key == "top1" else value <= bound
        if not ok:
            failures.append(f"{key} {value:.3g} {'<' if key == 'top1' else '>'} {bound:g}")
    if "first_divergence" in metrics and tol.generation_identical and metrics["first_divergence"] >= 0:
        failures.append(f"generation diverged at sample {int(metrics['first_divergence'])}")
    return Check(name, graph, precision, metrics, failures)


@dataclass
class Report:
    directory: str
    backend: str
    checks: list[Check]

    def __bool__(self) -> bool:
        return all(self.checks)

    def to_json(self) -> str:
        return json.dumps({"directory": self.directory, "backend": self.backend, "passed": bool(self),
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


def reference_model_for(manifest: Manifest, checkpoint: Path | None):
    """The checkpoint the directory was exported from (recorded in the manifest), in float64."""
    import torch

    source = manifest.data.get("source", {})
    path = Path(checkpoint or source.get("checkpoint", ""))
    if not path.is_file():
        raise ArtifactError(f"cannot find the checkpoint {path or '(none recorded)'} this directory was exported "
                            "from; pass it with --checkpoint")
    if checkpoint is None and source.get("sha256") and sha256(path) != source["sha256"]:
        raise ArtifactError(f"{path} changed since the export (sha256 differs); re-export or pass --checkpoint")
    model = load_checkpoint(path, torch.float64)
    if model.cfg != manifest.config:
        raise ArtifactError(f"checkpoint {path} has a different config from the manifest of {manifest.directory}")
    return model


def run_parity(directory, backend: str = "onnxruntime", *, checkpoint: Path | None = None, seed: int = 0,
               generation_samples: int = 2000, progress: Callable[[str], None] | None = None) -> Report:
    from .runners import open_scoring, open_step
    from .runners.torch_ref import TorchScoringRunner, TorchStepRunner
    from .generate import generate

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
        from .runners.ort import OrtUpsampleRunner

        frames = conds["random/b3"][0]
        with OrtUpsampleRunner(manifest) as up:
            got = up.upsample(frames)
        checks.append(judge("upsample/random/b3", "upsample", "fp32",
                            {"max_abs": float(np.abs(got - ref.upsample(frames)).max())}))

    # TensorRT checks the graphs that have engines; the other backends run every graph
    available = set(manifest.data.get("engines", {})) if backend == "tensorrt" else set(manifest.graphs)
    if not available & {"scoring", "step", "scoring.fp16", "step.fp16"}:
        raise ArtifactError(f"{directory} has no {backend} artifacts to check"
                            + (": build engines with `wn-export trt`" if backend == "tensorrt" else ""))
    for precision in ("fp32", "fp16"):
        suffix = "" if precision == "fp32" else f".{precision}"
        scoring_name, step_name = f"scoring{suffix}", f"step{suffix}"
        scored = {}
        if scoring_name in available:
            with open_scoring(manifest, backend, scoring_name) as runner:
                for k, tok in inputs.items():
                    say(f"{scoring_name} {k}")
                    out = runner.infer(tok, conds[k][1], conds[k][2])
                    scored[k] = out
                    checks.append(judge(f"scoring/{k}", scoring_name, precision,
                                        metrics(out[out_key], refs[k][out_key])
                                        | log_prob_metrics(out["log_prob"], refs[k]["log_prob"])))
        if step_name not in available:
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
        with open_step(manifest, backend, step_name) as runner:
            step_checks(runner, step_name)
            fused = getattr(runner, "is_fused", False)
        if fused:  # the ONNX Runtime host fused the layer chain: check the standard-op session too
            with open_step(manifest, backend, step_name, fused=False) as runner:
                step_checks(runner, f"{step_name} (standard ops)")
    if not checks:
        raise InputError(f"{directory} holds no graphs to check")
    return Report(str(directory), backend, checks)
