"""Parity and throughput of the fused Triton step kernel (`TritonStepRunner`) on the machine at hand.

    python -m wn_export.backends.triton.check parity [--model demo|CHECKPOINT|target|CONFIG.json [--scale S]]
        [--precision fp32,fp16] [--steps N] [--generate N] [--json FILE]
    python -m wn_export.backends.triton.check bench [--model target|demo|CHECKPOINT|CONFIG.json] [--batch 1,64]
        [--precision fp16,fp32] [--num-warps 4,8] [--steps N] [--json FILE]

`parity` teacher-forces the kernel over `--steps` samples of the demo speech (2 streams) and compares
its logits with the float64 reference (`wn_export.parity.TOLERANCES` of the precision), then generates
`--generate` samples × 2 streams with the draw on the host (one launch per sample) and in the kernel
(K samples per launch) and compares the tokens with the float64 reference's (identical for FP32).
Exit 1 on any failure. `bench` prints samples/s per stream and in aggregate, with the device's name.
On a CPU it needs TRITON_INTERPRET=1 (numerics only: interpreter speed means nothing). Needs torch,
triton and numpy only (and safetensors for checkpoints): config models get random weights.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reference_model import WaveNet

STEPS_PER_LAUNCH = (1, 64, 1024)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "CPU (Triton interpreter)"


def reference_logits(model64: WaveNet, tokens, cond=None, speaker=None) -> np.ndarray:
    """Float64 logits (B, T, Q) of the whole sequence (≡ the step loop), per-sample cond (B, C, T)."""
    from wn_export.backends.torch_ref import TorchScoringRunner

    return TorchScoringRunner(model64).infer(tokens, cond, speaker)["logits"]


def logit_check(test: np.ndarray, ref: np.ndarray, precision: str) -> dict:
    """Metrics of `wn_export.parity.logit_metrics` and the failures against TOLERANCES[precision]."""
    from wn_export.parity.metrics import TOLERANCES, logit_metrics

    m, tol = logit_metrics(test, ref), TOLERANCES[precision]
    failures = [f"{k} {m[k]:.3g} > {getattr(tol, k):g}" for k in ("max_abs", "rel_l2", "kl_mean", "kl_max")
                if m[k] > getattr(tol, k)]
    if m["top1"] < tol.top1:
        failures.append(f"top1 {m['top1']:.4f} < {tol.top1:g}")
    return {**m, "failures": failures}


def loop_tokens(runner, cfg, n: int, batch: int, *, block: bool, **options) -> np.ndarray:
    """(batch, n) tokens of the one generation loop (`StepLoop`) over `runner`: with `block`, the runner's
    block path (the draw in the kernel, `steps_per_launch` per launch), else one step and host draw per sample."""
    from wn_export.errors import BackendError
    from wn_export.generation.loop import StepLoop

    loop = StepLoop(runner, batch, cfg, block=block, window=n, **options)
    loop.reset()
    tokens = loop.advance(n).T.copy()
    if block and not loop.block:
        raise BackendError(f"{type(runner).__name__} has no block path")
    return tokens


def generation_check(runner, model64: WaveNet, n: int, batch: int, seed: int = 0, cond=None, speaker=None,
                     method: str = "sample", steps_per_launch: int = 256) -> dict:
    """Tokens of the reference, of the runner with the host draw, and of the in-kernel draw."""
    from wn_export.backends.torch_ref import TorchStepRunner
    from wn_export.generation.loop import generate

    kw = dict(seed=seed, method=method, cond=cond, speaker=speaker)
    with TorchStepRunner(model64) as ref_runner:
        ref = generate(ref_runner, n, batch, quantization_channels=model64.cfg.quantization_channels, **kw)
    host = loop_tokens(runner, model64.cfg, n, batch, block=False, **kw)
    runner.steps_per_launch = steps_per_launch
    fused = loop_tokens(runner, model64.cfg, n, batch, block=True, **kw)
    return {"reference": ref, "host_draw": host, "kernel_draw": fused,
            "host_agreement": float((host == ref).mean()), "kernel_agreement": float((fused == ref).mean())}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(runner, batch: int, steps: int) -> dict:
    """samples/s per stream and in aggregate: `step` (one launch per sample, logits to the host) and
    the generation loop's block path (`generate_block`: the draw in the kernel) at several samples per launch."""
    out = {"batch": batch, "steps": steps, "num_warps": runner.num_warps, "precision": runner.precision}
    runner.reset(batch)
    token = np.full(batch, runner.cfg.quantization_channels // 2, dtype=np.int64)
    for _ in range(3):  # compile + warm up
        runner.step(token)
    _sync()
    t = time.perf_counter()
    for _ in range(steps):
        runner.step(token)
    _sync()
    rate = steps / (time.perf_counter() - t)
    out["step"] = {"per_stream": rate, "aggregate": rate * batch}
    for k in STEPS_PER_LAUNCH:
        runner.steps_per_launch = k
        loop_tokens(runner, runner.cfg, min(k, 8), batch, block=True)  # compile the drawing variant
        _sync()
        t = time.perf_counter()
        loop_tokens(runner, runner.cfg, steps, batch, block=True)
        _sync()
        rate = steps / (time.perf_counter() - t)
        out[f"generate/{k}"] = {"per_stream": rate, "aggregate": rate * batch}
    return out


# ---- command line (argparse: GPU machines may have the project installed without its dependencies) ----
def _load_model(spec: str, scale: float | None = None, dtype=torch.float64) -> WaveNet:
    """"demo" or a .safetensors checkpoint; or "target" / a config JSON with random weights (seed 0;
    N(0, scale²) with `scale`, else PyTorch's default initialisation)."""
    from reference_model import load_checkpoint
    from wn_export import demo_checkpoint
    from wn_export.backends.triton.aot import load_config

    if spec == "demo":
        return load_checkpoint(demo_checkpoint(), dtype)
    if spec.endswith(".safetensors"):
        return load_checkpoint(spec, dtype)
    torch.manual_seed(0)
    model = WaveNet(load_config(spec))
    if scale:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, scale)
    return model.to(dtype).eval()


def run_parity(model_spec: str, precisions, steps: int, n_generate: int, scale: float | None = None,
               say=print) -> dict:
    from wn_export import demo_audio
    from wn_export.backends.triton.runner import TritonStepRunner
    from wn_export.generation.audio import wav_tokens

    model = _load_model(model_spec, scale)
    cfg = model.cfg
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((2, cfg.local_channels, max(steps, n_generate))).astype(np.float32) if cfg.local else None
    speaker = np.array([0, cfg.speakers - 1]) if cfg.global_ else None
    speech = wav_tokens(demo_audio(), cfg.quantization_channels)
    speech = np.tile(speech, -(-(steps + len(speech) // 2) // len(speech)))
    tokens = np.stack([speech[:steps], speech[len(speech) // 2:][:steps]])  # (2, steps)
    ref = reference_logits(model, tokens, None if cond is None else cond[:, :, :steps], speaker)
    report = {"device": device_name(), "model": model_spec, "steps": steps, "results": {}}
    for precision in precisions:
        runner = TritonStepRunner.from_model(model, precision)
        logits = logit_check(runner.teacher_force(tokens, None if cond is None else cond[:, :, :steps], speaker),
                             ref, precision)
        gen = generation_check(runner, model, n_generate, 2, seed=0, cond=cond, speaker=speaker)
        gen_failures = []
        if precision == "fp32":
            gen_failures = [f"{k} {gen[k]:.4f} < 1" for k in ("host_agreement", "kernel_agreement") if gen[k] < 1]
        result = {"logits": logits, "generation": {k: gen[k] for k in ("host_agreement", "kernel_agreement")},
                  "failures": logits["failures"] + gen_failures}
        report["results"][precision] = result
        say(f"{precision}: max abs {logits['max_abs']:.2e}, rel L2 {logits['rel_l2']:.2e}, top-1 "
            f"{logits['top1']:.4f}, generated tokens equal to the reference: host draw "
            f"{gen['host_agreement']:.4f}, kernel draw {gen['kernel_agreement']:.4f} → "
            + ("pass" if not result["failures"] else "FAIL " + "; ".join(result["failures"])))
    report["passed"] = all(not r["failures"] for r in report["results"].values())
    return report


def run_bench(config: str, batches, precisions, warps, steps: int, say=print) -> dict:
    from wn_export.backends.triton.runner import TritonStepRunner

    model = _load_model(config, dtype=torch.float32)
    report = {"device": device_name(), "config": config, "layers": model.cfg.layers, "results": []}
    say(f"device: {report['device']}; {model.cfg.layers} layers, residual {model.cfg.residual_channels}, "
        f"gate {model.cfg.gate_channels}, skip {model.cfg.skip_channels}, Q {model.cfg.quantization_channels}")
    for precision in precisions:
        for nw in warps:
            runner = TritonStepRunner.from_model(model, precision, num_warps=nw)
            for batch in batches:
                r = bench(runner, batch, steps)
                report["results"].append(r)
                say(f"{precision} warps {nw} batch {batch}: " + ", ".join(
                    f"{k} {v['per_stream']:,.0f}/s per stream ({v['aggregate']:,.0f}/s total)"
                    for k, v in r.items() if isinstance(v, dict)))
    return report


def _write_json(path: Path | None, report: dict) -> None:
    if path is None:
        return
    from reference_model.atomic import atomic_write_bytes

    text = json.dumps(report, indent=2) + "\n"
    atomic_write_bytes(Path(path), lambda tmp: Path(tmp).write_text(text))


def main(argv=None) -> int:
    import argparse

    from reference_model.errors import WNExportError

    csv = lambda s: [t.strip() for t in s.split(",") if t.strip()]  # noqa: E731
    parser = argparse.ArgumentParser(prog="python -m wn_export.backends.triton.check",
                                     description="Parity and throughput of the fused Triton step kernel.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="kernel vs the float64 reference: logits and generated tokens")
    p.add_argument("--model", default="demo", help="demo, a .safetensors checkpoint, target or a config JSON "
                   "(random weights) [demo]")
    p.add_argument("--scale", type=float, default=None, help="random weights ~ N(0, scale²) (config models)")
    p.add_argument("--precision", default="fp32,fp16")
    p.add_argument("--steps", type=int, default=6142, help="teacher-forced samples per stream [6142]")
    p.add_argument("--generate", type=int, default=2000, help="generated samples per stream [2000]")
    p.add_argument("--json", type=Path, default=None)
    b = sub.add_parser("bench", help="samples/s per stream and in aggregate")
    b.add_argument("--model", default="target", help="target, demo, a checkpoint or a config JSON [target]")
    b.add_argument("--batch", default="1,64")
    b.add_argument("--precision", default="fp16,fp32")
    b.add_argument("--num-warps", default="4,8")
    b.add_argument("--steps", type=int, default=2000, help="samples per stream per measurement [2000]")
    b.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "parity":
            report = run_parity(args.model, csv(args.precision), args.steps, args.generate, args.scale)
        else:
            report = run_bench(args.model, [int(x) for x in csv(args.batch)], csv(args.precision),
                               [int(x) for x in csv(args.num_warps)], args.steps)
        _write_json(args.json, report)
    except WNExportError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0 if report.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
