"""`manifest.json`: the contract between an export directory and every host. Written here, read here.

Format "wn-export/1" (documented in the README):
{"format", "receptive_field", "sample_rate", "quantization_channels", "opset", "model": {config},
 "source": {"checkpoint", "sha256"},
 "graphs": {name: {"file", "kind", "precision", "sha256", "nodes", "inputs": [...], "outputs": [...],
                   ["layout", "state": [...]], ["fused": {"plugin", "version", "kernel", "ptx_target",
                                                          "ptx_sha256", "threads", "shared_bytes"}]}},
 "engines": {name: {"file", "graph", "onnx", "sha256", "backend", "version", "precision", ...}}
            (added by `wn-export trt`),
 "native_loops": {graph name: {"file", "format", "sha256", "graph", "graph_sha256"}}
            (the native loop's plan of a step graph, `backends.onnxruntime.native_plan`)}

`read_manifest` returns typed records (`Manifest`, `GraphRecord`, `TensorRecord`, `StateRecord`,
`EngineRecord`, `NativeLoopRecord`), like the C++ host's `manifest.hpp`. Every field is checked for its JSON type, every
number for its range and every file for staying inside the directory before any host uses it. No torch
import: a host that runs ONNX Runtime reads manifests without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from reference_model.atomic import atomic_write_bytes
from wn_export.contract.specs import (
    DISTRIBUTION_ROLES,
    FEED_ROLES,
    GRAPH_KINDS,
    LAYOUTS,
    PRECISION_NAMES,
    STATE_DTYPES,
    WAVENET_STEP_PLUGIN,
    GraphSpec,
    StateSpec,
    TensorSpec,
    graph_name,
)
from wn_export.errors import ArtifactError

FORMAT = "wn-export/1"
FILENAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few KB
MAX_DIM = 1 << 31  # any static dimension or ring number above this is refused
DTYPES = ("float32", "float16", "int64", "int32", "bool", "float64")
NATIVE_LOOP_FORMAT = "wn-native-loop/1"  # the plan file's format (backends/onnxruntime/native_plan.py)
MAX_GRAPH_BYTES = 2 << 30  # protobuf's limit: a larger ONNX model needs external data, which is refused
MAX_PLAN_BYTES = 4 << 30  # a native loop plan (the C++ host's wn::limits::kMaxPlanBytes)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- writing -------------------------------------------------------------------------------------------
def graph_entry(spec: GraphSpec, file: str, digest: str, nodes: int, kernel: dict | None = None) -> dict:
    """`kernel` (fused graphs): the plugin kernel's record (`backends.triton.aot.compile_plugin_ptx` meta)."""
    entry = {"file": file, "kind": spec.kind, "precision": spec.precision, "sha256": digest, "nodes": nodes,
             "inputs": [t.to_dict() for t in spec.inputs], "outputs": [t.to_dict() for t in spec.outputs]}
    if spec.kind == "step":
        entry["layout"] = spec.layout
        entry["state"] = [s.to_dict() for s in spec.state]
    if spec.plugin is not None:
        k = kernel or {}
        entry["fused"] = {"plugin": spec.plugin.id, "version": spec.plugin.version, "kernel": k.get("kernel"),
                          "ptx_target": k.get("target"), "ptx_sha256": k.get("sha256"),
                          "threads": k.get("threads_per_block"), "shared_bytes": k.get("shared_bytes")}
    return entry


def build_manifest(cfg, graphs: dict[str, dict]) -> dict:
    """`cfg`: the model's `WaveNetConfig`."""
    return {"format": FORMAT, "receptive_field": cfg.receptive_field, "sample_rate": cfg.sample_rate,
            "quantization_channels": cfg.quantization_channels, "model": cfg.to_dict(), "graphs": graphs}


def native_entry(graph: str, file: str, digest: str, graph_sha256: str) -> dict:
    """The `native_loops` record of a step graph's native loop plan (`file`, derived from `graph`)."""
    return {"file": file, "format": NATIVE_LOOP_FORMAT, "sha256": digest, "graph": graph, "graph_sha256": graph_sha256}


def write_manifest(directory: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write_bytes(Path(directory) / FILENAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def export_files(directory) -> list[Path]:
    """The files of an export directory a command reads (its manifest, graphs, engines and any external
    data), which no output of the command may replace."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [directory / FILENAME, *(p for p in directory.iterdir()
                                    if p.suffix in (".onnx", ".engine", ".bin", ".data", ".safetensors")
                                    and p.is_file()), *_recorded_files(directory)]


def _recorded_files(directory: Path) -> list[Path]:
    """The files the manifest records (graphs, engines, native loop plans), which may lie in sub-folders; none
    when it cannot be read (the command then fails on it)."""
    try:
        data = _load_json(directory / FILENAME)
    except (ArtifactError, OSError):
        return []
    out = []
    for section in ("graphs", "engines", "native_loops"):
        entries = data.get(section) if isinstance(data, dict) else None
        for name, entry in (entries.items() if isinstance(entries, dict) else ()):
            file = entry.get("file") if isinstance(entry, dict) else None
            if isinstance(file, str):
                try:
                    out.append(confined(directory, file, f"{section}.{name}"))
                except ArtifactError:
                    pass
    return out


# ---- typed records -------------------------------------------------------------------------------------
# A graph's tensors and state pairs are read back into the very specs the export wrote them from.
TensorRecord = TensorSpec
StateRecord = StateSpec


@dataclass(frozen=True)
class GraphRecord:
    name: str
    path: Path
    file: str
    kind: str
    precision: str
    sha256: str
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    nodes: int | None = None
    layout: str | None = None
    state: tuple[StateRecord, ...] = ()
    plugin: str | None = None  # a fused graph: the plugin its one node needs ("wn_export::WaveNetStep")
    data: dict = field(default_factory=dict, compare=False, repr=False)  # the raw JSON entry

    def input(self, role: str) -> TensorRecord | None:
        return next((t for t in self.inputs if t.role == role), None)

    def output(self, role: str) -> TensorRecord | None:
        return next((t for t in self.outputs if t.role == role), None)

    @property
    def feed(self) -> TensorRecord:
        """The step graph's fed-back input: `token`, or `sample` for scalar-input models."""
        return next(t for r in FEED_ROLES if (t := self.input(r)) is not None)

    @property
    def distribution(self) -> TensorRecord:
        """The distribution output: `logits`, or `mol_params` for mixture-of-logistics models."""
        return next(t for r in DISTRIBUTION_ROLES if (t := self.output(r)) is not None)


@dataclass(frozen=True)
class EngineRecord:
    name: str
    path: Path
    file: str
    graph: str
    sha256: str
    backend: str
    precision: str
    profiles: tuple[dict, ...] = ()  # per profile: {input name: {"min", "opt", "max"}}
    io: tuple[dict, ...] = ()
    data: dict = field(default_factory=dict, compare=False, repr=False)

    def max_batch(self, input_name: str) -> int | None:
        """The largest leading dimension any profile accepts for `input_name` (None: no profile)."""
        limits = [int((p.get(input_name) or next(iter(p.values())))["max"][0]) for p in self.profiles if p]
        return max(limits) if limits else None


@dataclass(frozen=True)
class NativeLoopRecord:
    """A step graph's native loop plan (`native_loops.<graph>`): derived from `graph` (whose sha256 was
    `graph_sha256`), in the plan file format `format`."""

    graph: str
    path: Path
    file: str
    sha256: str
    graph_sha256: str
    format: str = NATIVE_LOOP_FORMAT


@dataclass
class Manifest:
    directory: Path
    data: dict
    graphs: dict[str, GraphRecord]
    engines: dict[str, EngineRecord]
    native_loops: dict[str, NativeLoopRecord] = field(default_factory=dict)  # by graph name

    @property
    def config(self):
        """The model's `WaveNetConfig` (validated when the manifest was read)."""
        from reference_model.config import WaveNetConfig

        return WaveNetConfig.from_dict(self.data["model"])

    @property
    def source_checkpoint(self) -> str | None:
        source = self.data.get("source")
        return source.get("checkpoint") if isinstance(source, dict) else None

    def graph(self, name: str) -> GraphRecord:
        if name not in self.graphs:
            raise ArtifactError(f"{self.directory} has no {name!r} graph (it has: {', '.join(self.graphs)}); "
                                f"export it with `wn-export onnx{' --fp16' if 'fp16' in name else ''}`")
        return self.graphs[name]

    def engine(self, name: str) -> EngineRecord:
        if name not in self.engines:
            raise ArtifactError(f"{self.directory} has no TensorRT engine for {name!r}; "
                                f"build it with `wn-export trt {self.directory}`")
        return self.engines[name]


# ---- reading -------------------------------------------------------------------------------------------
class _Fields:
    """Typed access to one JSON object; every mistake is one `ArtifactError` naming where it is."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise ArtifactError(f"{where} must be a JSON object (got {type(obj).__name__})")
        self.obj, self.where = obj, where

    def get(self, key: str, kind, default=Ellipsis):
        if key not in self.obj:
            if default is Ellipsis:
                raise ArtifactError(f"{self.where} lacks {key!r}")
            return default
        value = self.obj[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ArtifactError(f"{self.where}.{key} must be an integer (got {value!r:.40})")
        if kind is not int and not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ArtifactError(f"{self.where}.{key} must be of type {names} (got {type(value).__name__})")
        return value

    def count(self, key: str, low: int = 0, high: int = MAX_DIM, default=Ellipsis) -> int:
        value = self.get(key, int, default)
        if value is not None and not low <= value <= high:
            raise ArtifactError(f"{self.where}.{key} = {value} is outside [{low}, {high}]")
        return value

    def choice(self, key: str, options, default=Ellipsis) -> str:
        value = self.get(key, str, default)
        if value is not None and value not in options:
            raise ArtifactError(f"{self.where}.{key} = {value!r:.40} is not one of {', '.join(options)}")
        return value


def confined(directory: Path, file: str, where: str) -> Path:
    """DIR/file, refusing absolute paths, `..` and links that leave DIR (a manifest cannot point a host
    at files outside its export directory)."""
    rel = PurePosixPath(file)
    if not file or rel.is_absolute() or ".." in rel.parts or "\\" in file or "\0" in file:
        raise ArtifactError(f"{where}: file {file!r:.80} must be a plain name inside the export directory")
    path = directory / rel
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ArtifactError(f"{where}: file {file!r:.80} resolves outside the export directory")
    return path


def _shape(values: Any, where: str) -> tuple:
    if not isinstance(values, list) or len(values) > 8:
        raise ArtifactError(f"{where}.shape must be a list of at most 8 dimensions")
    for d in values:
        if isinstance(d, str):
            if not 0 < len(d) <= 64:
                raise ArtifactError(f"{where}.shape has an unusable dimension name {d!r:.40}")
        elif isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM:
            raise ArtifactError(f"{where}.shape has dimension {d!r:.40}: dimensions are names or 1 … {MAX_DIM}")
    return tuple(values)


def _tensor(obj: Any, where: str) -> TensorRecord:
    f = _Fields(obj, where)
    return TensorRecord(f.get("name", str), f.get("role", str), f.choice("dtype", DTYPES),
                        _shape(f.get("shape", list), where))


def _state(obj: Any, where: str) -> StateRecord:
    f = _Fields(obj, where)
    shape = _shape(f.get("shape", list), where)
    update = f.choice("update", ("replace", "ring"), "replace")
    init = f.get("init", (int, float), 0.0)
    if not math.isfinite(init):
        raise ArtifactError(f"{where}.init must be a finite number (got {init!r})")
    rings: tuple = ()
    if update == "ring":
        if len(shape) != 3 or not isinstance(shape[1], int):
            raise ArtifactError(f"{where}: a ring state has the shape (batch, rows, channels)")
        rings = tuple(_ring(r, f"{where}.rings[{i}]", shape[1])
                      for i, r in enumerate(f.get("rings", list)))
        if not rings:
            raise ArtifactError(f"{where}: a ring state needs at least one ring")
    return StateRecord(f.get("input", str), f.get("output", str), f.choice("dtype", DTYPES), shape,
                       float(init), update, f.get("position", str, None), rings)


def _ring(obj: Any, where: str, rows: int) -> tuple[int, int]:
    f = _Fields(obj, where)
    offset, length = f.count("offset", 0, rows - 1), f.count("length", 1, rows)
    if offset + length > rows:
        raise ArtifactError(f"{where}: offset {offset} + length {length} exceeds the state's {rows} rows")
    return offset, length


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ArtifactError(f"{where} must be a list (got {type(value).__name__})")
    return value


def _graph(directory: Path, name: str, obj: Any, where: str) -> GraphRecord:
    f = _Fields(obj, where)
    file = f.get("file", str)
    kind = f.choice("kind", GRAPH_KINDS)
    inputs = tuple(_tensor(t, f"{where}.inputs[{i}]") for i, t in enumerate(_list(f.get("inputs", list), where)))
    outputs = tuple(_tensor(t, f"{where}.outputs[{i}]")
                    for i, t in enumerate(_list(f.get("outputs", list), where)))
    state = tuple(_state(s, f"{where}.state[{i}]") for i, s in enumerate(f.get("state", list, [])))
    layout = f.choice("layout", LAYOUTS, None)
    precision = f.choice("precision", PRECISION_NAMES)
    plugin = None
    if "fused" in obj:
        fused = _Fields(f.get("fused", dict), f"{where}.fused")
        plugin = fused.choice("plugin", (WAVENET_STEP_PLUGIN.id,))
        if kind != "step" or layout != "ring":
            raise ArtifactError(f"{where}: a fused graph is a step graph with the ring layout")
    expected = graph_name(kind, precision, "fused" if plugin else None)
    if name != expected:
        raise ArtifactError(f"{where}: a {precision} {kind} graph{' (fused)' if plugin else ''} must be named "
                            f"{expected!r}")
    return GraphRecord(name, confined(directory, file, where), file, kind, precision, f.get("sha256", str),
                       inputs, outputs, f.count("nodes", 0, default=None), layout, state, plugin, obj)


def _engine(directory: Path, name: str, obj: Any, where: str) -> EngineRecord:
    f = _Fields(obj, where)
    file = f.get("file", str)
    profiles = tuple(_Fields(p, f"{where}.profiles[{i}]").obj for i, p in enumerate(f.get("profiles", list, [])))
    for i, p in enumerate(profiles):
        for tensor, r in p.items():
            rng = _Fields(r, f"{where}.profiles[{i}].{tensor}")
            for key in ("min", "opt", "max"):
                dims = _shape(rng.get(key, list), f"{rng.where}.{key}")
                if not dims or not all(isinstance(d, int) for d in dims):
                    raise ArtifactError(f"{rng.where}.{key} must list numbers")
    io = tuple(_Fields(t, f"{where}.io[{i}]") for i, t in enumerate(f.get("io", list, [])))
    for t in io:
        t.get("name", str), t.choice("mode", ("input", "output")), t.get("dtype", str)
        dims = t.get("shape", list)  # the engine's: -1 for a dynamic dimension
        if len(dims) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and -1 <= d <= MAX_DIM for d in dims):
            raise ArtifactError(f"{t.where}.shape must list at most 8 numbers in -1 … {MAX_DIM}")
    precision = f.get("precision", str, "fp16" if name.endswith(".fp16") else "fp32")
    return EngineRecord(name, confined(directory, file, where), file, f.get("graph", str, name), f.get("sha256", str),
                        f.get("backend", str), precision, profiles, tuple(t.obj for t in io), obj)


def _native_loop(directory: Path, name: str, obj: Any, where: str, graphs: dict) -> NativeLoopRecord:
    f = _Fields(obj, where)
    graph = f.get("graph", str)
    if graph != name or graph not in graphs:
        raise ArtifactError(f"{where}: the plan of graph {name!r:.40} names graph {graph!r:.40}, which must be it and "
                            "be in the manifest")
    g = graphs[graph]
    if g.kind != "step" or g.layout != "ring" or g.plugin is not None:
        raise ArtifactError(f"{where}: graph {graph!r} is not a ring-layout step graph with standard ops")
    f.choice("format", (NATIVE_LOOP_FORMAT,))
    file = f.get("file", str)
    return NativeLoopRecord(graph, confined(directory, file, where), file, f.get("sha256", str),
                            f.get("graph_sha256", str))


def verify_native_loop(record: NativeLoopRecord, graph: GraphRecord) -> None:
    """The plan file's sha256 must be the manifest's, and it must have been derived from the graph as it is."""
    _bounded(record.path, record.file, MAX_PLAN_BYTES, "a native loop plan")
    if sha256(record.path) != record.sha256:
        raise ArtifactError(f"{record.file} does not match the manifest's sha256: the plan was modified or replaced "
                            "after export; re-export the directory")
    if record.graph_sha256 != graph.sha256:
        raise ArtifactError(f"{record.file} was derived from another {graph.file} than the manifest's; re-export the "
                            "directory")


def _bounded(path: Path, file: str, limit: int, what: str) -> None:
    """Refuse a file larger than `limit` before it is read or hashed (a sparse file of terabytes is cheap to make
    and would take hours, or all memory)."""
    size = path.stat().st_size
    if size > limit:
        raise ArtifactError(f"{file} is {size / (1 << 30):.1f} GiB, more than {what} can be "
                            f"({limit / (1 << 30):.0f} GiB); re-export the directory")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _load_json(path: Path) -> Any:
    from reference_model.files import read_regular

    data = read_regular(path, MAX_MANIFEST_BYTES, "manifest", ArtifactError)
    try:  # NaN and ±Infinity are not JSON; integers of more than 4,300 digits raise ValueError
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise ArtifactError(f"{path} is not a manifest: its JSON is nested too deeply") from None


def read_manifest(directory, verify: bool = True) -> Manifest:
    """Read and validate DIR/manifest.json; with `verify`, check every graph file's sha256."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"export directory {directory} does not exist (run `wn-export onnx -o {directory}`)")
    path = directory / FILENAME
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {FILENAME}: not a wn-export directory")
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unsupported manifest format "
                            f"{data.get('format') if isinstance(data, dict) else None!r:.40} (expected {FORMAT!r})")
    top = _Fields(data, FILENAME)
    top.get("model", dict)
    receptive_field = top.count("receptive_field", 1)
    graphs = {n: _graph(directory, n, g, f"graphs.{n}") for n, g in top.get("graphs", dict).items()}
    engines = {n: _engine(directory, n, e, f"engines.{n}") for n, e in top.get("engines", dict, {}).items()}
    native_loops = {n: _native_loop(directory, n, e, f"native_loops.{n}", graphs)
                    for n, e in top.get("native_loops", dict, {}).items()}
    manifest = Manifest(directory, data, graphs, engines, native_loops)
    cfg = _check_config(manifest, receptive_field, path)
    for name, graph in graphs.items():
        _check_contract(cfg, graph, path)
    for name, engine in engines.items():
        if engine.graph not in graphs:
            raise ArtifactError(f"{path}: engine {name!r} is built from graph {engine.graph!r:.40}, which the "
                                "manifest does not have")
    for name, graph in graphs.items():
        if not graph.path.is_file():
            raise ArtifactError(f"{path}: graph {name!r} file {graph.file} is missing")
        if verify:
            verify_graph(graph)
    for name, record in native_loops.items():
        if not record.path.is_file():
            raise ArtifactError(f"{path}: the native loop plan of {name!r}, {record.file}, is missing")
        if verify:
            verify_native_loop(record, graphs[name])
    return manifest




def _check_contract(cfg, graph: GraphRecord, path: Path) -> None:
    """The graph's I/O and state rules must be exactly those its model config defines (`specs.py`): a
    manifest is not hashed, so a host must not trust a ring offset or a shape it cannot derive."""
    from types import SimpleNamespace

    from .specs import scoring_spec, step_spec, upsample_spec

    precision = SimpleNamespace(name=graph.precision, state_dtype=STATE_DTYPES[graph.precision])
    if graph.kind == "upsample":
        if not cfg.local or graph.precision != "fp32":
            raise ArtifactError(f"{path}: graph {graph.name!r}: the model has no fp32 upsampling graph")
        spec = upsample_spec(cfg)
    elif graph.kind == "scoring":
        spec = scoring_spec(cfg, precision)
    else:
        spec = step_spec(cfg, precision, graph.layout or "ring")
    want = graph_entry(spec, graph.file, graph.sha256, graph.nodes)
    for key in ("inputs", "outputs", "layout", "state"):
        difference = _first_difference(want.get(key), graph.data.get(key), key)
        if difference:
            raise ArtifactError(f"{path}: graph {graph.name!r} does not match its model config at {difference}; "
                                "re-export the directory")


def _first_difference(want, got, where: str) -> str | None:
    """Where two JSON values first differ ("state[0].rings[3]"), None when equal."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(want.keys() | got.keys()):
            if (d := _first_difference(want.get(key), got.get(key), f"{where}.{key}")) is not None:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got)):
            if (d := _first_difference(a, b, f"{where}[{i}]")) is not None:
                return d
        return None if len(want) == len(got) else f"{where} ({len(got)} entries, the config gives {len(want)})"
    if want == got and isinstance(want, bool) == isinstance(got, bool) and type(want) is not list \
            and not isinstance(want, dict) and not isinstance(got, (list, dict)):
        return None
    return f"{where} ({got!r:.40}, the config gives {want!r:.40})"


def verify_graph(graph: GraphRecord) -> None:
    """The graph file's sha256 must be the manifest's, and its weights must be inside it: a graph that
    loads external data (`weights.bin` beside it) is refused, as those bytes are covered by no hash."""
    _bounded(graph.path, graph.file, MAX_GRAPH_BYTES, "a self-contained ONNX model")
    data = graph.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != graph.sha256:
        raise ArtifactError(f"{graph.file} does not match the manifest's sha256: the graph was "
                            "modified or replaced after export; re-export the directory")
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load_from_string(data)  # never follows external data: only bytes are given
    except Exception:  # noqa: BLE001 - protobuf raises its DecodeError for anything not an ONNX model
        raise ArtifactError(f"{graph.file} is not an ONNX model; re-export the directory") from None
    if any(uses_external_data(t) for t in _tensors(model.graph)):
        raise ArtifactError(f"{graph.file} keeps tensors in external data files, which the manifest's hashes do "
                            "not cover; re-export the directory (wn-export writes self-contained graphs)")


def _tensors(graph):
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _check_config(manifest: Manifest, receptive_field: int, path: Path):
    from reference_model.errors import ConfigError

    try:
        cfg = manifest.config
    except (ConfigError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: invalid model config: {e}") from None
    if cfg.receptive_field != receptive_field:
        raise ArtifactError(f"{path}: receptive_field {receptive_field} does not match the model "
                            f"config ({cfg.receptive_field})")
    return cfg


__all__ = ["FORMAT", "FILENAME", "NATIVE_LOOP_FORMAT", "Manifest", "GraphRecord", "TensorRecord", "StateRecord",
           "EngineRecord", "NativeLoopRecord", "read_manifest", "write_manifest", "build_manifest", "graph_entry",
           "native_entry", "graph_name", "sha256", "confined", "verify_graph", "verify_native_loop", "export_files"]
