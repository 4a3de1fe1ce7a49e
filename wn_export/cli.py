"""`wn-export`: a thin click CLI over the wn_export library. Every command only parses and dispatches.

Imports of torch, onnxruntime and TensorRT happen inside the commands, so `wn-export --help` works
without them. Errors users can cause (`WNExportError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - user errors become messages, bugs keep tracebacks
            from reference_model.errors import WNExportError

            if isinstance(e, WNExportError):
                raise click.ClickException(str(e)) from None
            raise


def _checkpoint_option(f):
    return click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="Model checkpoint (.safetensors). Default: the bundled demo model.")(f)


def _load(checkpoint: Path | None, dtype=None):
    import torch

    from reference_model import load_checkpoint
    from wn_export import demo_checkpoint

    return load_checkpoint(checkpoint or demo_checkpoint(), dtype or torch.float32)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wn-export")
def main():
    """Export a WaveNet to ONNX and TensorRT, prove parity, and generate audio."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="WaveNet config JSON (fields of WaveNetConfig).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.safetensors).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialisation.")
def init(config_path: Path, output: Path, seed: int):
    """Create a randomly initialised checkpoint from a config."""
    from wn_export.commands.init import init_checkpoint

    model = init_checkpoint(config_path, output, seed)
    click.echo(f"wrote {output} ({model.parameter_count():,} parameters, "
               f"receptive field {model.receptive_field} samples)")


@main.group("import", cls=_Group)
def import_():
    """Import checkpoints of other WaveNet implementations into our checkpoint format."""


@import_.command("r9y9")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hparams", "hparams_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Their preset / hparams JSON (stacks, legacy, input_type, log_scale_min, …).")
@click.option("--stacks", type=int, default=None,
              help="Dilation cycles, when no --hparams gives them (the checkpoint does not record them).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.safetensors).")
def import_r9y9_command(checkpoint: Path, hparams_path: Path | None, stacks: int | None, output: Path):
    """Import an r9y9 wavenet_vocoder checkpoint (state dict or training checkpoint)."""
    from reference_model import save_checkpoint
    from wn_export.importers import import_r9y9

    model, notes = import_r9y9(checkpoint, hparams_path, stacks)
    save_checkpoint(model, output)
    for note in notes:
        click.echo(f"assumed {note}", err=True)
    click.echo(model.cfg.summary())
    click.echo(f"wrote {output} ({model.parameter_count():,} parameters, "
               f"receptive field {model.receptive_field} samples)")


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
def info(checkpoint: Path | None):
    """Print a checkpoint's config, parameter count and receptive field (default: the demo model)."""
    model = _load(checkpoint)
    click.echo(f"checkpoint           {checkpoint or 'bundled demo model'}")
    click.echo(model.cfg.summary())
    click.echo(f"parameters           {model.parameter_count():,}")
    click.echo(f"receptive field      {model.receptive_field}")


@main.command()
@_checkpoint_option
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Export directory (created; files inside are replaced atomically).")
@click.option("--fp16", is_flag=True, help="Also write the mixed-precision FP16 graphs.")
@click.option("--w16", is_flag=True, help="Also write step.w16.onnx: FP32 compute with 16-bit (float16) weights.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset.")
@click.option("--state-layout", type=click.Choice(["ring", "full"]), default="ring", show_default=True,
              help="Step-graph state layout (README: 'State layout').")
def onnx(checkpoint: Path | None, out_dir: Path, fp16: bool, w16: bool, opset: int, state_layout: str):
    """Export the scoring and step graphs (and FP16 / 16-bit-weight variants) with their manifest."""
    from wn_export.export.pipeline import export_directory

    manifest = export_directory(out_dir, checkpoint, fp16=fp16, w16=w16, opset=opset, layout=state_layout,
                                progress=lambda msg: click.echo(msg, err=True))
    for name, g in manifest["graphs"].items():
        click.echo(f"{out_dir / g['file']}  {g['precision']}  {g['nodes']} nodes")
    click.echo(f"{out_dir / 'manifest.json'}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True,
              help="Backend to check: onnxruntime | tensorrt.")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference checkpoint (default: the one recorded in the manifest).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON.")
@click.option("--seed", default=0, show_default=True)
@click.option("--generation-samples", default=2000, show_default=True)
def parity(directory: Path, backend: str, checkpoint: Path | None, json_path: Path | None, seed: int,
           generation_samples: int):
    """Prove every graph in DIRECTORY against the float64 reference; exit 1 on any failure."""
    from rich.console import Console

    from reference_model.atomic import atomic_write_bytes
    from wn_export.parity.harness import run_parity

    err = Console(stderr=True)
    with err.status("parity") as status:
        report = run_parity(directory, backend, checkpoint=checkpoint, seed=seed,
                            generation_samples=generation_samples, progress=status.update)
    Console(width=200).print(report.table())
    if json_path:
        text = report.to_json()
        atomic_write_bytes(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if not report:
        failed = [c.name + f" ({c.graph})" for c in report.checks if not c]
        raise click.ClickException(f"parity FAILED for {len(failed)} check(s): {', '.join(failed)}")
    click.echo(f"parity passed: {len(report.checks)} checks")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--fp16", is_flag=True, help="Build from the FP16 graphs (strongly typed; FP16 comes from the graph).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto",
              show_default=True, help="auto: TensorRT if installed, else TensorRT-RTX.")
@click.option("--batch", default=None, metavar="MIN,OPT,MAX",
              help="Batch profile. Default: step 1,1,64; scoring 1,1,8.")
@click.option("--time", "time_", default=None, metavar="MIN,OPT,MAX",
              help="Scoring-graph time profile in samples. Default: 2,16000,32000.")
@click.option("--workspace", default=4096, show_default=True, help="Workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache file to load and update (TensorRT; a no-op in TensorRT-RTX).")
@click.option("--compute-capability", default=None, metavar="CC",
              help="TensorRT-RTX target(s), e.g. 8.6 or 8.6,8.9 (ahead-of-time build, no GPU needed).")
def trt(directory: Path, fp16: bool, backend: str, batch, time_, workspace: int, timing_cache, compute_capability):
    """Build TensorRT engines for the graphs in DIRECTORY and record them in its manifest."""
    from wn_export.backends.tensorrt.engines import build_engines

    data = build_engines(directory, fp16=fp16, backend=backend, batch=batch, time=time_,
                         workspace_mib=workspace, timing_cache=timing_cache,
                         compute_capability=compute_capability, progress=lambda m: click.echo(m, err=True))
    for name, e in data["engines"].items():
        if e["precision"] == ("fp16" if fp16 else "fp32"):
            click.echo(f"{directory / e['file']}  {e['backend']} {e['version']}  {e['precision']}  "
                       f"cc {','.join(e['compute_capability'] or ['portable'])}  {e['build_seconds']} s")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
def inspect(directory: Path):
    """Show an export directory: graphs, precision, node counts, I/O and state."""
    from wn_export.commands.describe import describe

    click.echo(describe(directory))


@main.command()
@_checkpoint_option
@click.option("-o", "--output", "out_dir", default=Path("demo_out"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Directory for the demo's outputs.")
@click.option("-n", "--samples", default=16000, show_default=True, help="Samples to generate.")
@click.option("--seed", default=0, show_default=True)
def demo(checkpoint: Path | None, out_dir: Path, samples: int, seed: int):
    """The main job on a model: summary, then a short generated WAV (reference backend)."""
    from wn_export.commands.demo import run_demo

    run_demo(checkpoint, out_dir, samples, seed, echo=click.echo)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-n", "--samples", required=True, type=int, help="Samples to generate per stream.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="WAV file to write (μ-law decoded, 16-bit); batch > 1 writes OUT-STEM.I.wav per stream.")
@click.option("--backend", default="onnxruntime", show_default=True, help="onnxruntime | torch | tensorrt.")
@click.option("--batch", default=1, show_default=True, help="Streams generated together.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampling uniforms (SplitMix64).")
@click.option("--method", default="sample", show_default=True, help="sample | greedy.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature (> 0).")
@click.option("--precision", default="fp32", show_default=True,
              help="Step graph: fp32 | fp16 | w16 (FP32 compute, 16-bit weights; exported with --w16).")
@click.option("--cond", "cond_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local conditioning: .npy of frame-rate features (C, frames) or (batch, C, frames).")
@click.option("--speaker", default=None, help="Global conditioning: a speaker id, or one per stream (1,4,…).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default 1).")
@click.option("--chunk", default=4000, show_default=True, help="Samples per streamed chunk.")
@click.option("--plot", is_flag=True, help="Also write OUT.png: waveform and spectrogram.")
def generate(directory: Path, samples: int, output: Path, backend: str, batch: int, seed: int, method: str,
             temperature: float, precision: str, cond_path: Path | None, speaker: str | None,
             threads: int | None, chunk: int, plot: bool):
    """Generate audio from the export in DIRECTORY and write it as WAV."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from wn_export.generation.generator import generate_to_wav, load_features, parse_speakers

    options = dict(seed=seed, method=method, temperature=temperature, chunk=chunk,
                   features=load_features(cond_path), speaker=parse_speakers(speaker))
    start = time.perf_counter()
    setup = []
    with Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} samples"),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("generate", total=samples)
        paths = generate_to_wav(directory, output, samples, backend=backend, batch=batch, precision=precision,
                                threads=threads, plot=plot, progress=lambda done, _n: bar.update(task, completed=done),
                                notice=setup.append, **options)
    seconds = time.perf_counter() - start
    for path in paths:
        click.echo(str(path))
    click.echo(f"{samples:,} samples × {batch} stream(s) in {seconds:.1f} s "
               f"({samples * batch / seconds:,.0f} samples/s, {setup[0] if setup else backend})", err=True)


@main.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--batch", "batches", default="1,8,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", default=1.0, show_default=True, help="Seconds per backend, batch size and round.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds (median and spread reported).")
@click.option("--threads", type=int, default=None,
              help="ONNX Runtime step-graph intra-op threads (default 1; see README).")
@click.option("--layouts", default="ring", show_default=True,
              help="Without DIRECTORY: step-graph state layouts to export and compare (ring,full).")
@click.option("--no-scoring", is_flag=True, help="Skip the scoring-graph throughput.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results as JSON.")
def bench(directory: Path | None, batches: str, seconds: float, rounds: int, threads: int | None, layouts: str,
          no_scoring: bool, json_path: Path | None):
    """Step-loop and scoring speed of DIRECTORY (default: the 30-layer target) vs the eager baselines."""
    from rich.console import Console

    from reference_model.atomic import atomic_write_bytes
    from wn_export.bench.run import parse_batches, parse_layouts, run_bench

    err = Console(stderr=True)
    with err.status("bench") as status:
        report = run_bench(directory, batches=parse_batches(batches), seconds=seconds, rounds=rounds,
                           threads=threads, layouts=parse_layouts(layouts, directory), scoring=not no_scoring,
                           progress=status.update)
    out = Console(width=220)
    out.print(report.summary())
    for table in report.tables():
        out.print(table)
    if json_path:
        text = report.to_json()
        atomic_write_bytes(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
