"""The main job on a model (default: the bundled demo): summary → ONNX export (FP32 + FP16) →
parity against the float64 reference → FP16 TensorRT engines (TensorRT or TensorRT-RTX, when
installed) → generated WAV from the ONNX Runtime host."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from reference_model import load_checkpoint
from reference_model.atomic import atomic_write_bytes
from wn_export import demo_checkpoint
from wn_export.errors import InputError, ParityError


def run_demo(checkpoint: Path | None, out_dir: Path, samples: int, seed: int,
             echo: Callable[[str], None] = print) -> dict:
    from rich.console import Console

    from wn_export.export.pipeline import export_directory
    from wn_export.generation.generator import generate_to_wav
    from wn_export.parity.harness import run_parity

    checkpoint = Path(checkpoint or demo_checkpoint())
    model = load_checkpoint(checkpoint)
    cfg = model.cfg
    if cfg.local or cfg.global_:
        raise InputError("the demo generates unconditioned audio; for conditioned models run `wn-export onnx`, "
                          "`wn-export parity` and `wn-export generate --cond/--speaker`")
    echo(f"== model: {checkpoint}\n{cfg.summary()}\nparameters           {model.parameter_count():,}")
    export_dir = out_dir / "export"
    echo(f"\n== export: {export_dir}")
    manifest = export_directory(export_dir, checkpoint, fp16=True, progress=echo)
    for name, g in manifest["graphs"].items():
        echo(f"{g['file']:<22} {g['precision']}  {g['nodes']} nodes")
    echo("\n== parity (onnxruntime vs float64 reference)")
    console = Console(width=200)
    with console.status("parity") as status:
        report = run_parity(export_dir, "onnxruntime", seed=seed, progress=status.update)
    console.print(report.table())
    text = report.to_json()
    atomic_write_bytes(out_dir / "parity.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if not report:
        raise ParityError(f"parity FAILED: see the table above and {out_dir / 'parity.json'}")
    echo("\n== TensorRT FP16 engines (strongly typed, from the FP16 graphs)")
    from wn_export.backends.tensorrt.engines import build_engines
    from wn_export.errors import BackendError

    try:
        data = build_engines(export_dir, fp16=True, progress=None)
        for name, e in data["engines"].items():
            echo(f"{e['file']:<22} {e['backend']} {e['version']}  {e['precision']}  {e['build_seconds']} s")
    except BackendError as e:  # no TensorRT flavour installed: the rest of the demo still runs
        echo(f"skipped: {e}")
    wav = out_dir / "demo.wav"
    echo(f"\n== generate {samples} samples ({samples / cfg.sample_rate:.2f} s) with the ONNX Runtime host, seed {seed}")
    start = time.perf_counter()
    written = generate_to_wav(export_dir, wav, samples, backend="onnxruntime", plot=True, seed=seed,
                              notice=lambda setup: echo(f"host: {setup}"))
    echo(f"wrote {', '.join(map(str, written))} ({samples / (time.perf_counter() - start):,.0f} samples/s "
         "including start-up and plotting)")
    return {"export": export_dir, "wav": wav, "parity": report}
