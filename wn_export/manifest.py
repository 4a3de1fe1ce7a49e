"""`manifest.json`: the contract between an export directory and every host. Written here, read here.

Format "wn-export/1" (documented in the README):
{"format", "receptive_field", "sample_rate", "quantization_channels", "model": {config},
 "graphs": {name: {"file", "kind", "precision", "sha256", "nodes", "inputs": [...], "outputs": [...],
                   ["layout", "state": [...]]}},
 "engines": {name: {...}}   (added by `wn-export trt`)}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from reference_model import WaveNetConfig
from reference_model.checkpoint import atomic_write_bytes
from reference_model.errors import ConfigError

from .errors import ArtifactError
from .graphs import GraphSpec

FORMAT = "wn-export/1"
FILENAME = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def graph_entry(spec: GraphSpec, file: str, digest: str, nodes: int) -> dict:
    entry = {"file": file, "kind": spec.kind, "precision": spec.precision, "sha256": digest, "nodes": nodes,
             "inputs": [t.to_dict() for t in spec.inputs], "outputs": [t.to_dict() for t in spec.outputs]}
    if spec.kind == "step":
        entry["layout"] = spec.layout
        entry["state"] = [s.to_dict() for s in spec.state]
    return entry


def build_manifest(cfg: WaveNetConfig, graphs: dict[str, dict]) -> dict:
    return {"format": FORMAT, "receptive_field": cfg.receptive_field, "sample_rate": cfg.sample_rate,
            "quantization_channels": cfg.quantization_channels, "model": cfg.to_dict(), "graphs": graphs}


def write_manifest(directory: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write_bytes(Path(directory) / FILENAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@dataclass
class Graph:
    """One graph of a manifest, with helpers to find tensors by role."""

    name: str
    path: Path
    data: dict

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def inputs(self) -> list[dict]:
        return self.data["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.data["outputs"]

    @property
    def state(self) -> list[dict]:
        return self.data.get("state", [])

    def input(self, role: str) -> dict | None:
        return next((t for t in self.inputs if t["role"] == role), None)

    def output(self, role: str) -> dict | None:
        return next((t for t in self.outputs if t["role"] == role), None)


@dataclass
class Manifest:
    directory: Path
    data: dict

    @property
    def config(self) -> WaveNetConfig:
        return WaveNetConfig.from_dict(self.data["model"])

    @property
    def graphs(self) -> dict[str, Graph]:
        return {n: Graph(n, self.directory / g["file"], g) for n, g in self.data["graphs"].items()}

    def graph(self, name: str) -> Graph:
        graphs = self.graphs
        if name not in graphs:
            raise ArtifactError(f"{self.directory} has no {name!r} graph (it has: {', '.join(graphs)}); "
                                f"export it with `wn-export onnx{' --fp16' if 'fp16' in name else ''}`")
        return graphs[name]


def read_manifest(directory, verify: bool = True) -> Manifest:
    """Read and validate DIR/manifest.json; with `verify`, check every graph file's sha256."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"export directory {directory} does not exist (run `wn-export onnx -o {directory}`)")
    path = directory / FILENAME
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {FILENAME}: not a wn-export directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unsupported manifest format "
                            f"{data.get('format') if isinstance(data, dict) else None!r} (expected {FORMAT!r})")
    for key in ("model", "graphs", "receptive_field"):
        if key not in data:
            raise ArtifactError(f"{path}: missing key {key!r}")
    manifest = Manifest(directory, data)
    try:
        cfg = manifest.config
    except ConfigError as e:
        raise ArtifactError(f"{path}: invalid model config: {e}") from None
    if cfg.receptive_field != data["receptive_field"]:
        raise ArtifactError(f"{path}: receptive_field {data['receptive_field']} does not match the model "
                            f"config ({cfg.receptive_field})")
    for name, graph in manifest.graphs.items():
        for key in ("file", "kind", "precision", "sha256", "inputs", "outputs"):
            if key not in graph.data:
                raise ArtifactError(f"{path}: graph {name!r} lacks {key!r}")
        if not graph.path.is_file():
            raise ArtifactError(f"{path}: graph {name!r} file {graph.path.name} is missing")
        if verify and sha256(graph.path) != graph.data["sha256"]:
            raise ArtifactError(f"{graph.path.name} does not match the manifest's sha256: the graph was "
                                "modified or replaced after export; re-export the directory")
    return manifest
