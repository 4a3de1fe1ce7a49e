"""`wn-export`: a thin click CLI over the wn_export library. Every command only parses and dispatches.

Imports of torch, onnxruntime and TensorRT happen inside the commands, so `wn-export --help` works
without them. Errors users can cause (`WNExportError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from wn_export.backends import BACKENDS  # the registry (no heavy imports)

SEED = click.IntRange(0, 2**64 - 1)  # SplitMix64 seeds
THREADS = click.IntRange(1, 1024)


class _OneLineUsage(click.ClickException):
    """A bad option or argument, shown as one line (click's usage errors print the usage block too)."""

    exit_code = 2


def _terminate(_signum, _frame):
    raise KeyboardInterrupt  # SIGTERM runs the same cleanup as Ctrl-C: staging and temporary files go


class _Group(click.Group):
    def invoke(self, ctx):
        top = ctx.parent is None and threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if top else None
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _OneLineUsage(f"{e.format_message()} (see `{(e.ctx or ctx).command_path} --help`)") from None
        except Exception as e:  # noqa: BLE001 - user errors become messages, bugs keep tracebacks
            from reference_model.errors import WNExportError

            if isinstance(e, WNExportError):
                raise click.ClickException(str(e)) from None
            raise
        finally:
            if top:
                signal.signal(signal.SIGTERM, previous)


def _check_output(path: Path | None, *inputs, directory: bool = False) -> None:
    """Refuse an unwritable output, or one that is an input, before the command does any work."""
    if path is not None:
        from reference_model.files import check_output

        check_output(path, inputs, directory=directory)


def _export_inputs(directory: Path) -> list[Path]:
    from wn_export.contract.manifest import export_files

    return export_files(directory)


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
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random initialisation.")
def init(config_path: Path, output: Path, seed: int):
    """Create a randomly initialised checkpoint from a config."""
    from wn_export.commands.init import init_checkpoint

    _check_output(output, config_path)

    model = init_checkpoint(config_path, output, seed)
    click.echo(f"wrote {output} ({model.parameter_count():,} parameters, "
               f"receptive field {model.receptive_field} samples)")


@main.group("import", cls=_Group)
def import_():
    """Import checkpoints of other WaveNet implementations into our checkpoint format."""


def _save_imported(model, notes: list[str], output: Path, prefix: str = "note:") -> None:
    from reference_model import save_checkpoint

    save_checkpoint(model, output)
    for note in notes:
        click.echo(f"{prefix} {note}", err=True)
    click.echo(model.cfg.summary())
    click.echo(f"wrote {output} ({model.parameter_count():,} parameters, "
               f"receptive field {model.receptive_field} samples)")


@import_.command("r9y9")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hparams", "hparams_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Their preset / hparams JSON (stacks, legacy, input_type, log_scale_min, …).")
@click.option("--stacks", type=click.IntRange(1), default=None,
              help="Dilation cycles, when no --hparams gives them (the checkpoint does not record them).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.safetensors).")
def import_r9y9_command(checkpoint: Path, hparams_path: Path | None, stacks: int | None, output: Path):
    """Import an r9y9 wavenet_vocoder checkpoint (state dict or training checkpoint)."""
    from wn_export.importers import import_r9y9

    _check_output(output, checkpoint, hparams_path)
    model, notes = import_r9y9(checkpoint, hparams_path, stacks)
    _save_imported(model, notes, output, prefix="assumed")


@import_.command("ibab")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Their wavenet_params.json (dilations; default: the one beside the checkpoint).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.safetensors).")
def import_ibab_command(checkpoint: Path, params_path: Path | None, output: Path):
    """Import an ibab tensorflow-wavenet checkpoint: CHECKPOINT is its prefix (model.ckpt-N), its .index
    file, or the training directory (its latest checkpoint)."""
    from wn_export.importers import import_ibab
    from wn_export.importers.tf_checkpoint import checkpoint_files

    _check_output(output, *checkpoint_files(checkpoint), params_path)
    model, notes = import_ibab(checkpoint, params_path)
    _save_imported(model, notes, output)


@import_.command("keras")
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.safetensors).")
def import_keras_command(model_path: Path, output: Path):
    """Import a Keras 3 functional WaveNet saved as .keras (read without Keras or TensorFlow)."""
    from wn_export.importers import import_keras

    _check_output(output, model_path)
    model, notes = import_keras(model_path)
    _save_imported(model, notes, output)


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
@click.option("--w16", is_flag=True, help="Also write step.w16.onnx and scoring.w16.onnx: FP32 compute, 16-bit weights.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset.")
@click.option("--state-layout", type=click.Choice(["ring", "full"]), default="ring", show_default=True,
              help="Step-graph state layout (README: 'State layout').")
@click.option("--fused-step", is_flag=True,
              help="Also write step.fused[.fp16].onnx: one TensorRT plugin node running the fused step kernel "
                   "(needs triton; ONNX Runtime cannot run it).")
def onnx(checkpoint: Path | None, out_dir: Path, fp16: bool, w16: bool, opset: int, state_layout: str,
         fused_step: bool):
    """Export the scoring and step graphs (and FP16 / 16-bit-weight variants) with their manifest."""
    from wn_export.export.pipeline import export_directory

    manifest = export_directory(out_dir, checkpoint, fp16=fp16, w16=w16, opset=opset, layout=state_layout,
                                fused_step=fused_step, progress=lambda msg: click.echo(msg, err=True))
    for name, g in manifest["graphs"].items():
        click.echo(f"{out_dir / g['file']}  {g['precision']}  {g['nodes']} nodes")
    click.echo(f"{out_dir / 'manifest.json'}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True,
              help=f"Backend to check: {' | '.join(BACKENDS)}.")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference checkpoint (default: the one recorded in the manifest).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--generation-samples", default=2000, show_default=True, type=click.IntRange(1))
def parity(directory: Path, backend: str, checkpoint: Path | None, json_path: Path | None, seed: int,
           generation_samples: int):
    """Prove every graph in DIRECTORY against the float64 reference; exit 1 on any failure."""
    from rich.console import Console

    from reference_model.atomic import atomic_write_bytes
    from wn_export.parity.harness import run_parity

    _check_output(json_path, *_export_inputs(directory), checkpoint)
    err = Console(stderr=True)
    with err.status("parity") as status:
        report = run_parity(directory, backend, checkpoint=checkpoint, seed=seed,
                            generation_samples=generation_samples, progress=status.update)
    Console(width=200).print(report.table())
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
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
@click.option("--workspace", default=4096, show_default=True, type=click.IntRange(1, 1 << 24),
              help="Workspace limit in MiB.")
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
@click.option("-n", "--samples", default=16000, show_default=True, type=click.IntRange(1),
              help="Samples to generate.")
@click.option("--seed", default=0, show_default=True, type=SEED)
def demo(checkpoint: Path | None, out_dir: Path, samples: int, seed: int):
    """The main job on a model: summary, then a short generated WAV (reference backend)."""
    from wn_export.commands.demo import run_demo

    _check_output(out_dir, checkpoint, directory=True)
    run_demo(checkpoint, out_dir, samples, seed, echo=click.echo)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-n", "--samples", required=True, type=click.IntRange(1), help="Samples to generate per stream.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="WAV file to write (μ-law decoded, 16-bit); batch > 1 writes OUT-STEM.I.wav per stream.")
@click.option("--backend", default="onnxruntime", show_default=True, help=" | ".join(BACKENDS) + ".")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1), help="Streams generated together.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the sampling uniforms (SplitMix64).")
@click.option("--method", default="sample", show_default=True, help="sample | greedy.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature (> 0).")
@click.option("--precision", default="fp32", show_default=True,
              help="Step graph: fp32 | fp16 | w16 (FP32 compute, 16-bit weights; exported with --w16).")
@click.option("--cond", "cond_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local conditioning: .npy of frame-rate features (C, frames) or (batch, C, frames).")
@click.option("--speaker", default=None, help="Global conditioning: a speaker id, or one per stream (1,4,…).")
@click.option("--threads", type=THREADS, default=None, help="ONNX Runtime intra-op threads (default 1).")
@click.option("--chunk", default=4000, show_default=True, type=click.IntRange(1), help="Samples per streamed chunk.")
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
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(0, 3600, min_open=True),
              help="Seconds per backend, batch size and round.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Interleaved rounds (median and spread reported).")
@click.option("--threads", type=THREADS, default=None,
              help="ONNX Runtime step-graph intra-op threads (default 1; see README).")
@click.option("--layouts", default="ring", show_default=True,
              help="Without DIRECTORY: step-graph state layouts to export and compare (ring,full).")
@click.option("--no-scoring", is_flag=True, help="Skip the scoring-graph throughput.")
@click.option("--cpp", "cpp", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The C++ host's wn_generate to measure (default: $WN_CPP_HOST, else hosts/cpp/build when built).")
@click.option("--no-cpp", is_flag=True, help="No C++ host rows.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results as JSON.")
def bench(directory: Path | None, batches: str, seconds: float, rounds: int, threads: int | None, layouts: str,
          no_scoring: bool, cpp: Path | None, no_cpp: bool, json_path: Path | None):
    """Step-loop and scoring speed of DIRECTORY (default: the 30-layer target) vs the eager baselines."""
    from rich.console import Console

    from reference_model.atomic import atomic_write_bytes
    from wn_export.bench.run import parse_batches, parse_layouts, run_bench

    if cpp is not None and no_cpp:
        raise click.UsageError("--cpp names the C++ host to measure, --no-cpp measures none: give one of them")
    batch_sizes, layout_names = parse_batches(batches), parse_layouts(layouts, directory)
    _check_output(json_path, *(_export_inputs(directory) if directory else ()))
    err = Console(stderr=True)
    with err.status("bench") as status:
        report = run_bench(directory, batches=batch_sizes, seconds=seconds, rounds=rounds,
                           threads=threads, layouts=layout_names, scoring=not no_scoring,
                           cpp=False if no_cpp else cpp, progress=status.update)
    out = Console(width=220)
    out.print(report.summary())
    for table in report.tables():
        out.print(table)
    if json_path:
        text = report.to_json()
        atomic_write_bytes(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model repository to write (a new directory; assembled aside and renamed into place).")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="Triton backend of the step and scoring models.")
@click.option("--models", default="generate,step,scoring", show_default=True, help="Models to write.")
@click.option("--max-batch", type=int, default=None,
              help="Step/scoring batch limit (default 16; TensorRT: the engine profile's maximum).")
@click.option("--instances", default=1, show_default=True, help="Instances of every model.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Step/scoring instance kind (default: gpu for tensorrt, cpu for onnxruntime).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Graphs (or engines) of the step and scoring models.")
@click.option("--max-streams", default=16, show_default=True, help="Generation streams per step call and instance.")
@click.option("--chunk", default=4000, show_default=True, help="Samples per generation response.")
@click.option("--max-samples", default=16000 * 600, show_default=True, help="Largest generation request.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads of the generation host (default 1).")
@click.option("--generation-backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "triton"]), default="auto",
              show_default=True, help="Host of the generation model, chosen when it loads. auto: tensorrt when the "
              "export has an engine of the FP32 step graph and a CUDA GPU is visible, else onnxruntime.")
@click.option("--prefix", default="", help="Prefix of the model names (several exports in one server).")
@click.option("--python-env", default="auto", show_default=True,
              help="EXECUTION_ENV_PATH of the generation model: auto (this virtual environment), none, or a path.")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--generation-backend triton: its weights, when the checkpoint the manifest records has moved "
              "(of the manifest's config).")
@click.option("--overwrite", is_flag=True, help="Replace an existing repository at OUTPUT.")
def triton(directory: Path, output: Path, backend: str, models: str, max_batch, instances: int, kind, precision: str,
           max_streams: int, chunk: int, max_samples: int, threads, generation_backend: str, prefix: str,
           python_env: str, checkpoint: Path | None, overwrite: bool):
    """Write a Triton Inference Server model repository for the export in DIRECTORY."""
    from wn_export.serving.triton_repo import Options, parse_models, write_repository

    opts = Options(backend=backend, models=parse_models(models), max_batch=max_batch, instances=instances,
                   precision=precision, kind=kind, prefix=prefix, max_streams=max_streams, chunk=chunk,
                   max_samples=max_samples, threads=threads, generation_backend=generation_backend,
                   python_env=python_env)
    repo = write_repository(directory, output, opts, overwrite=overwrite, checkpoint=checkpoint)
    for config in sorted(repo.glob("*/config.pbtxt")):
        click.echo(str(config))
    click.echo(str(repo / "README.md"))


@main.command("triton-client")
@click.argument("url")
@click.option("-n", "--samples", required=True, type=int, help="Samples to generate.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="WAV to write.")
@click.option("--model", default="generate", show_default=True, help="The generation model's name.")
@click.option("--seed", type=int, default=None, help="Seed (default: the server's, 0).")
@click.option("--method", default=None, help="sample | greedy.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (> 0).")
@click.option("--speaker", type=int, default=None, help="Speaker id (global conditioning).")
@click.option("--cond", "cond_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local conditioning: .npy of frame-rate features (C, frames).")
@click.option("--streams", type=int, default=None, help="Uniform layout: stream STREAM of a STREAMS-stream generation.")
@click.option("--stream", "stream_index", type=int, default=None)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the connection and each chunk.")
def triton_client(url: str, samples: int, output: Path, model: str, seed, method, temperature, speaker, cond_path,
                  streams, stream_index, timeout: float):
    """Stream one generation request from a Triton server (grpc://HOST:PORT or http://HOST:PORT) into a WAV."""
    import time

    from wn_export.generation.generator import load_features
    from wn_export.serving.client import generate_wav

    _check_output(output, cond_path)
    start = time.perf_counter()
    generate_wav(url, output, samples, model=model, timeout=timeout, seed=seed, method=method, temperature=temperature,
                 speaker=speaker, conditioning=load_features(cond_path), streams=streams, stream_index=stream_index)
    seconds = time.perf_counter() - start
    click.echo(str(output))
    click.echo(f"{samples:,} samples in {seconds:.1f} s ({samples / seconds:,.0f} samples/s)", err=True)


@main.command("triton-serve")
@click.argument("repository", type=click.Path(file_okay=False, path_type=Path))
@click.option("--models", default=None, help="Models to load (default: every python-backend model in REPOSITORY).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
def triton_serve(repository: Path, models, http_port: int, grpc_port: int):
    """Serve REPOSITORY's python-backend models with the tritonserver of nvidia-pytriton on 127.0.0.1 (no GPU)."""
    import time

    from wn_export.serving.local_server import LocalTriton, python_models

    names = [m for m in (models or "").split(",") if m] or python_models(repository)
    with LocalTriton([repository], models=names, http_port=http_port, grpc_port=grpc_port) as server:
        click.echo(f"serving {', '.join(names)}: {server.http_url} {server.grpc_url} (Ctrl-C stops)")
        try:
            while server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@main.command("triton-bench")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--streams", default=16, show_default=True, help="Concurrent streams (and the in-process batch).")
@click.option("-n", "--samples", default=8000, show_default=True, help="Samples per stream.")
@click.option("--rounds", default=2, show_default=True, help="Interleaved rounds of server and in-process runs.")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--chunk", default=4000, show_default=True, help="Samples per response.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON.")
def triton_bench(directory: Path, streams: int, samples: int, rounds: int, protocol: str, chunk: int, json_path):
    """Generation on Triton (STREAMS concurrent requests) vs the in-process host at batch STREAMS, in one run."""
    from reference_model.atomic import atomic_write_bytes
    from wn_export.serving.bench import run_triton_bench

    report = run_triton_bench(directory, streams=streams, samples=samples, rounds=rounds, protocol=protocol,
                              chunk=chunk, progress=lambda m: click.echo(m, err=True))
    click.echo(report.text())
    if json_path:
        text = report.to_json()
        atomic_write_bytes(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
