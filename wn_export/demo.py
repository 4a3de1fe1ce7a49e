"""The main job on a model (default: the bundled demo): summary → ONNX export (FP32 + FP16) →
parity against the float64 reference → FP16 TensorRT engines (TensorRT or TensorRT-RTX, when
installed) → generated WAV from the ONNX Runtime host."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from reference_model import load_checkpoint

from . import demo_checkpoint
from .audio import write_tokens_wav
from .errors import ParityError


def run_demo(checkpoint: Path | None, out_dir: Path, samples: int, seed: int,
             echo: Callable[[str], None] = print) -> dict:
    from rich.console import Console

    from .export import export_directory
    from .generate import generate_chunks
    from .manifest import read_manifest
    from .parity import run_parity
    from .runners.ort import OrtStepRunner

    checkpoint = Path(checkpoint or demo_checkpoint())
    model = load_checkpoint(checkpoint)
    cfg = model.cfg
    if cfg.local or cfg.global_:
        raise ParityError("the demo generates unconditioned audio; use `wn-export generate` for conditioned models")
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
    (out_dir / "parity.json").write_text(report.to_json(), encoding="utf-8")
    if not report:
        raise ParityError(f"parity FAILED: see the table above and {out_dir / 'parity.json'}")
    echo("\n== TensorRT FP16 engines (strongly typed, from the FP16 graphs)")
    from .engines import build_engines
    from .errors import BackendError

    try:
        data = build_engines(export_dir, fp16=True, progress=None)
        for name, e in data["engines"].items():
            echo(f"{e['file']:<22} {e['backend']} {e['version']}  {e['precision']}  {e['build_seconds']} s")
    except BackendError as e:  # no TensorRT flavour installed: the rest of the demo still runs
        echo(f"skipped: {e}")
    wav = out_dir / "demo.wav"
    echo(f"\n== generate {samples} samples ({samples / cfg.sample_rate:.2f} s) with the ONNX Runtime host, seed {seed}")
    import time

    start = time.perf_counter()
    with OrtStepRunner(read_manifest(export_dir)) as runner:
        tokens = np.concatenate(list(generate_chunks(runner, samples, 1, seed=seed,
                                                     quantization_channels=cfg.quantization_channels)), axis=1)
    seconds = time.perf_counter() - start
    write_tokens_wav(wav, tokens[0], cfg.quantization_channels, cfg.sample_rate)
    echo(f"wrote {wav} ({samples / seconds:,.0f} samples/s)")
    return {"export": export_dir, "wav": wav, "parity": report}
