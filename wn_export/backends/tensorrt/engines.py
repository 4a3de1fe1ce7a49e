"""`wn-export trt`: TensorRT engines for the graphs of an export directory, recorded in its manifest.

Engines are built strongly typed from our graphs (`--fp16` = the FP16 graphs, whose precision comes
from their tensor dtypes and Casts), by one code path for TensorRT 10.x / 11.x and TensorRT-RTX
(`build.build_engine`). Profiles come from the manifest's symbolic dims: `batch` for every
graph, `time` for the scoring graph. Every engine's build-time I/O (names, dtypes, ranks) and
profile ranges are checked against the manifest's graph contract before the manifest is updated.

Each engine is recorded as soon as it is built, under DIR's writer lock (`contract/lock.py`): the
engine is written to `GRAPH.SHA16.engine` (its name carries the first 16 hex digits of its sha256), the
manifest is rewritten to point at it, and only then is the file it replaced removed. So a recorded
engine's bytes never change, a kill at any moment leaves every recorded engine matching its sha256, and
`trt` and `trt --fp16` run together both end recorded (the second waits for the first).

Manifest entry, under "engines" keyed by graph name (e.g. "step.fp16"):
{"file", "graph", "onnx", "sha256", "backend", "version", "precision", "compute_capability",
 "profiles": [{input: {"min", "opt", "max"}}], "io": [{"name", "dtype", "shape", "mode"}],
 ["plugin": "wn_export::WaveNetStep" for a fused step graph]}
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reference_model.files import check_output, regular_file
from reference_model.limits import check
from wn_export.backends.tensorrt.build import build_engine, check_build_options
from wn_export.contract.lock import PARTIAL_SUFFIX, export_lock, remove_debris
from wn_export.contract.manifest import GraphRecord, confined, export_files, read_manifest, write_manifest
from wn_export.errors import ArtifactError, BackendError, ExportError


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, what: str, low: int = 1) -> Range:
        try:
            lo, opt, hi = (int(x) for x in text.split(","))
        except ValueError:
            raise ExportError(f"{what} must be MIN,OPT,MAX integers (got {text!r:.40})") from None
        if not low <= lo <= opt <= hi:
            raise ExportError(f"{what} needs {low} <= MIN <= OPT <= MAX (got {text!r:.40})")
        return cls(lo, opt, hi)


DEFAULT_BATCH = {"step": Range(1, 1, 64), "scoring": Range(1, 1, 8), "upsample": Range(1, 1, 8)}
# scoring samples (time ≥ 2: log_prob has time − 1 columns); 2 s at 16 kHz × batch 8 fits the default
# default 4 GiB workspace for the demo model in FP32 (64000 needs more: TensorRT-RTX reports OutOfMemory)
DEFAULT_TIME = Range(2, 16000, 32000)
MAX_PROFILE_DIM = (1 << 31) - 1  # TensorRT dimensions are int32
MAX_TIMING_CACHE_BYTES = 1 << 30


def graph_profile(graph: GraphRecord, batch: Range, time: Range, hop: int) -> dict[str, tuple]:
    """(min, opt, max) shapes per input, from the manifest's symbolic dims."""
    frames = Range(max(1, -(-time.min // hop)), max(1, -(-time.opt // hop)), max(1, -(-time.max // hop)))
    dims = {"batch": batch, "time": time, "frames": frames}
    shapes = {}
    for t in graph.inputs:
        triple = []
        for pick in ("min", "opt", "max"):
            triple.append(tuple(getattr(dims[d], pick) if isinstance(d, str) else d for d in t.shape))
        shapes[t.name] = tuple(triple)
    return shapes


def check_engine_facts(graph: GraphRecord, facts: dict, profile: dict[str, tuple]) -> None:
    """The engine's I/O must be the graph's contract, and its profile the one asked for."""
    declared = {(t.name, t.dtype, len(t.shape)): mode
                for mode, ts in (("input", graph.inputs), ("output", graph.outputs)) for t in ts}
    built = {(t["name"], t["dtype"], len(t["shape"])): t["mode"] for t in facts["io"]}
    if built != declared:
        raise ArtifactError(f"engine for {graph.name} has I/O {sorted(built)}, the manifest declares "
                            f"{sorted(declared)}")
    got = facts["profiles"][0]
    for name, (lo, opt, hi) in profile.items():
        if (tuple(got[name]["min"]), tuple(got[name]["opt"]), tuple(got[name]["max"])) != (lo, opt, hi):
            raise ArtifactError(f"engine for {graph.name}: profile of {name} is {got[name]}, asked {lo}/{opt}/{hi}")


def build_engines(directory, *, fp16: bool = False, backend: str = "auto", batch: str | None = None,
                  time: str | None = None, workspace_mib: int = 4096, timing_cache: Path | None = None,
                  compute_capability: str | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Build one engine per graph of the chosen precision, recording each as it is built; returns the
    updated manifest dict. A fused step graph this TensorRT cannot build (TensorRT-RTX, TensorRT < 10.9) is
    skipped with a note."""
    options = _options(directory, batch, time, workspace_mib, timing_cache)
    check_build_options(backend, compute_capability)
    precision = "fp16" if fp16 else "fp32"
    _graphs(read_manifest(directory), precision)  # a clear error before waiting for the lock
    with export_lock(directory, notice=progress):
        manifest = read_manifest(directory)  # again, under the lock: another writer may have changed it
        remove_debris(manifest.directory)
        graphs = _buildable(_graphs(manifest, precision), backend, progress)
        data = manifest.data
        for i, g in enumerate(graphs, 1):
            entry = _build_one(manifest, g, f"[{i}/{len(graphs)}]", options, backend, compute_capability, progress)
            data = _record(manifest.directory, g.name, entry)
    return data


def _options(directory, batch: str | None, time: str | None, workspace_mib: int, timing_cache) -> dict:
    """Every option checked before any work: profiles, workspace, timing cache."""
    if isinstance(workspace_mib, bool) or not isinstance(workspace_mib, int) or not 1 <= workspace_mib <= 1 << 24:
        raise ExportError(f"workspace must be 1 … {1 << 24} MiB (got {workspace_mib!r:.40})")
    batch_range = Range.parse(batch, "--batch") if batch else None
    time_range = Range.parse(time, "--time", low=2) if time else DEFAULT_TIME  # log_prob has time − 1 columns
    check("batch", (batch_range or DEFAULT_BATCH["step"]).max, "the profile's largest batch")
    if time_range.max > MAX_PROFILE_DIM:
        raise ExportError(f"--time MAX {time_range.max:,} is above TensorRT's dimension limit ({MAX_PROFILE_DIM:,})")
    if timing_cache is not None:
        check_output(timing_cache, export_files(directory), what="timing cache")
        if os.path.lexists(timing_cache):  # read, then replaced: a regular file of bounded size
            size = regular_file(timing_cache, "timing cache", ExportError).stat().st_size
            if size > MAX_TIMING_CACHE_BYTES:
                raise ExportError(f"timing cache {timing_cache} is {size:,} bytes, larger than any timing cache")
    return {"batch": batch_range, "time": time_range, "workspace_mib": workspace_mib, "timing_cache": timing_cache}


def _graphs(manifest, precision: str) -> list[GraphRecord]:
    graphs = [g for g in manifest.graphs.values() if g.precision == precision]
    if not graphs:
        raise ArtifactError(f"{manifest.directory} has no {precision} graphs"
                            + ("; export them with `wn-export onnx --fp16`" if precision == "fp16" else ""))
    return graphs


def _buildable(graphs: list[GraphRecord], backend: str, progress) -> list[GraphRecord]:
    """The graphs this TensorRT can build: fused-step graphs need TensorRT's AOT plugins (≥ 10.9)."""
    from wn_export.backends.tensorrt.build import load_trt
    from wn_export.backends.tensorrt.plugin import unsupported

    if not any(g.plugin for g in graphs) or not (reason := unsupported(*load_trt(backend))):
        return graphs
    for g in graphs:
        if g.plugin and progress:
            progress(f"note: {g.name} skipped: {reason}")
    return [g for g in graphs if not g.plugin]


def _build_one(manifest, g: GraphRecord, step: str, options: dict, backend: str, compute_capability: str | None,
               progress: Callable[[str], None] | None) -> dict:
    """Build g's engine into `.STEM.PID.partial`, then rename it to `STEM.SHA16.engine` → its manifest entry."""
    profile = graph_profile(g, options["batch"] or DEFAULT_BATCH[g.kind], options["time"], manifest.config.hop_size)
    stem = g.path.name.removesuffix(".onnx")
    partial = manifest.directory / f".{stem}.engine.{os.getpid()}{PARTIAL_SUFFIX}"
    say = (lambda phase, done, total: progress and progress(f"{step} {stem}.engine: {phase} {done}/{total}"))
    if progress:
        progress(f"{step} building {stem}.engine from {g.path.name}")
    workspace = options["workspace_mib"]
    try:
        facts = build_engine(g.path, partial, profiles=profile, backend=backend, workspace_bytes=workspace << 20,
                             timing_cache=options["timing_cache"], compute_capability=compute_capability,
                             progress=say, plugin=g.plugin)
        check_engine_facts(g, facts, profile)
        file = f"{stem}.{facts['sha256'][:16]}.engine"
        partial.replace(manifest.directory / file)
    except BackendError as e:
        if "OutOfMemory" not in str(e):
            raise
        raise BackendError(f"{e} — the profile's largest shapes need more than the {workspace} MiB "
                           "workspace: raise --workspace or lower the MAX of --batch / --time") from None
    finally:
        partial.unlink(missing_ok=True)
    entry = {"file": file, "graph": g.name, "onnx": g.path.name, "sha256": facts["sha256"],
             "backend": facts["backend"], "version": facts["version"], "precision": g.precision,
             "compute_capability": facts["compute_capability"], "profiles": facts["profiles"],
             "io": facts["io"], "build_seconds": facts["build_seconds"]}
    if g.plugin:  # the plugin's kernel is embedded (AOT): running the engine needs no plugin library
        entry["plugin"] = g.plugin
    return entry


def _record(directory: Path, name: str, entry: dict) -> dict:
    """Point the manifest's engine `name` at its new file, then remove the file it replaced (if no other
    entry uses it). Call with the directory's lock held."""
    import json

    manifest_path = directory / "manifest.json"
    data = json.loads(manifest_path.read_text(encoding="utf-8"))  # read_manifest checked it under this lock
    engines = dict(data.get("engines") or {})
    old = engines.get(name, {}).get("file")
    engines[name] = entry
    data["engines"] = engines
    write_manifest(directory, data)
    if old and old != entry["file"] and all(e.get("file") != old for e in engines.values()):
        with contextlib.suppress(OSError, ArtifactError):
            confined(directory, old, f"engines.{name}").unlink(missing_ok=True)
    return data
