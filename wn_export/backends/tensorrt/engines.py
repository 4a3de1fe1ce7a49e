"""`wn-export trt`: TensorRT engines for the graphs of an export directory, recorded in its manifest.

Engines are built strongly typed from our graphs (`--fp16` = the FP16 graphs, whose precision comes
from their tensor dtypes and Casts), by one code path for TensorRT 10.x / 11.x and TensorRT-RTX
(`build.build_engine`). Profiles come from the manifest's symbolic dims: `batch` for every
graph, `time` for the scoring graph. Every engine's build-time I/O (names, dtypes, ranks) and
profile ranges are checked against the manifest's graph contract before the manifest is updated.

Manifest entry, under "engines" keyed by graph name (e.g. "step.fp16"):
{"file", "graph", "onnx", "sha256", "backend", "version", "precision", "compute_capability",
 "profiles": [{input: {"min", "opt", "max"}}], "io": [{"name", "dtype", "shape", "mode"}],
 ["plugin": "wn_export::WaveNetStep" for a fused step graph]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wn_export.contract.manifest import GraphRecord, read_manifest, write_manifest
from wn_export.errors import ArtifactError, BackendError, ExportError


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, what: str) -> Range:
        try:
            lo, opt, hi = (int(x) for x in text.split(","))
        except ValueError:
            raise ExportError(f"{what} must be MIN,OPT,MAX integers (got {text!r})") from None
        if not 1 <= lo <= opt <= hi:
            raise ExportError(f"{what} needs 1 <= MIN <= OPT <= MAX (got {text!r})")
        return cls(lo, opt, hi)


DEFAULT_BATCH = {"step": Range(1, 1, 64), "scoring": Range(1, 1, 8), "upsample": Range(1, 1, 8)}
# scoring samples (time ≥ 2: log_prob has time − 1 columns); 2 s at 16 kHz × batch 8 fits the default
# default 4 GiB workspace for the demo model in FP32 (64000 needs more: TensorRT-RTX reports OutOfMemory)
DEFAULT_TIME = Range(2, 16000, 32000)


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
    """Build one engine per graph of the chosen precision; returns the updated manifest dict. A fused
    step graph this TensorRT cannot build (TensorRT-RTX, TensorRT < 10.9) is skipped with a note."""
    from wn_export.backends.tensorrt.build import build_engine, load_trt
    from wn_export.backends.tensorrt.plugin import unsupported

    manifest = read_manifest(directory)
    cfg = manifest.config
    precision = "fp16" if fp16 else "fp32"
    graphs = [g for g in manifest.graphs.values() if g.precision == precision]
    if not graphs:
        raise ArtifactError(f"{directory} has no {precision} graphs"
                            + ("; export them with `wn-export onnx --fp16`" if fp16 else ""))
    time_range = Range.parse(time, "--time") if time else DEFAULT_TIME
    engines = dict(manifest.data.get("engines", {}))
    if any(g.plugin for g in graphs) and (reason := unsupported(*load_trt(backend))):
        for g in graphs:
            if g.plugin and progress:
                progress(f"note: {g.name} skipped: {reason}")
        graphs = [g for g in graphs if not g.plugin]
    for i, g in enumerate(graphs, 1):
        batch_range = Range.parse(batch, "--batch") if batch else DEFAULT_BATCH[g.kind]
        profile = graph_profile(g, batch_range, time_range, cfg.hop_size)
        file = g.path.name.removesuffix(".onnx") + ".engine"
        say = (lambda phase, done, total, name=file, i=i:
               progress and progress(f"[{i}/{len(graphs)}] {name}: {phase} {done}/{total}"))
        if progress:
            progress(f"[{i}/{len(graphs)}] building {file} from {g.path.name}")
        try:
            facts = build_engine(g.path, manifest.directory / file, profiles=profile, backend=backend,
                                 workspace_bytes=workspace_mib << 20, timing_cache=timing_cache,
                                 compute_capability=compute_capability, progress=say, plugin=g.plugin)
        except BackendError as e:
            if "OutOfMemory" not in str(e):
                raise
            raise BackendError(f"{e} — the profile's largest shapes need more than the {workspace_mib} MiB "
                               "workspace: raise --workspace or lower the MAX of --batch / --time") from None
        check_engine_facts(g, facts, profile)
        engines[g.name] = {"file": file, "graph": g.name, "onnx": g.path.name, "sha256": facts["sha256"],
                           "backend": facts["backend"], "version": facts["version"], "precision": g.precision,
                           "compute_capability": facts["compute_capability"], "profiles": facts["profiles"],
                           "io": facts["io"], "build_seconds": facts["build_seconds"]}
        if g.plugin:  # the plugin's kernel is embedded (AOT): running the engine needs no plugin library
            engines[g.name]["plugin"] = g.plugin
    data = dict(manifest.data)
    data["engines"] = engines
    write_manifest(manifest.directory, data)
    return data
