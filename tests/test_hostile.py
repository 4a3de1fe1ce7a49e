"""Hostile and careless input through the `wn-export` CLI (the click application, in process).

Every case must be refused with a non-zero exit and exactly one message line on stderr (no traceback),
and leave the working tree exactly as it was: inputs unchanged, no output, no temporary or staging
file. Cases that must be refused before any work starts (an output that cannot be written, a limit)
also replace the expensive stage with a function that fails the test if it is ever called.
Kills, concurrent writers and blocking files run as real processes in `test_hostile_process.py`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reference_model import WaveNetConfig, save_checkpoint
from tests.conftest import random_model
from tests.hostile_tools import assert_one_line_error, tree, tree_diff
from wn_export.cli import main
from wn_export.export.pipeline import export_directory

TINY = dict(quantization_channels=16, residual_channels=4, gate_channels=8, skip_channels=4, kernel_size=2,
            layers=4, stacks=2)
CONDITIONED = dict(TINY, local_channels=2, hop_size=2)
UNWRITABLE = "/sys/wn-export-hostile"  # sysfs refuses new files, even to root
LONG = "x" * 300  # longer than any file system allows (255 bytes)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Checkpoints and exports every case copies: tiny (fp32 + fp16 graphs), conditioned, an r9y9 file."""
    import wavenet_vocoder

    root = tmp_path_factory.mktemp("hostile-src")
    out = {}
    for name, cfg in (("tiny", TINY), ("conditioned", CONDITIONED)):
        out[f"{name}.safetensors"] = root / f"{name}.safetensors"
        save_checkpoint(random_model(WaveNetConfig(**cfg), seed=1), out[f"{name}.safetensors"])
        out[name] = root / name
        export_directory(out[name], out[f"{name}.safetensors"], fp16=name == "tiny")
    torch.manual_seed(0)
    theirs = wavenet_vocoder.WaveNet(out_channels=16, layers=2, stacks=1, residual_channels=4, gate_channels=4,
                                     skip_out_channels=4, kernel_size=2, weight_normalization=False)
    out["r9y9.pth"] = root / "r9y9.pth"
    torch.save(theirs.state_dict(), out["r9y9.pth"])
    return out


class Work:
    """A case's working tree: copies of the sources, and the files a case plants."""

    def __init__(self, root: Path, sources: dict):
        self.root, self.sources = root, sources

    def export(self, which: str = "tiny") -> Path:
        path = self.root / which
        if not path.exists():
            shutil.copytree(self.sources[which], path, symlinks=True)
        return path

    def checkpoint(self, which: str = "tiny") -> Path:
        path = self.root / f"{which}.safetensors"
        shutil.copyfile(self.sources[f"{which}.safetensors"], path)
        return path

    def edit(self, edit: Callable[[dict], object], which: str = "tiny") -> Path:
        """The export with its manifest changed by `edit(data)` (graph hashes left as they are)."""
        d = self.export(which)
        data = json.loads((d / "manifest.json").read_text())
        edit(data)
        (d / "manifest.json").write_text(json.dumps(data))
        return d

    def manifest_text(self, text: str, which: str = "tiny") -> Path:
        d = self.export(which)
        (d / "manifest.json").write_text(text)
        return d

    def file(self, name: str, content: bytes | str = b"") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def config(self, name: str = "cfg.json", **changes) -> Path:
        return self.file(name, json.dumps(TINY | changes))

    def npy(self, name: str, array: np.ndarray) -> Path:
        path = self.root / name
        np.save(path, array)
        return path


def _step(data: dict) -> dict:
    return data["graphs"]["step"]


def _set(path: str, value):
    """An edit that sets data[a][b]… (dot-separated keys, integers index lists)."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def edit(data):
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


def _regraph(w: Work, graph: str, content: bytes) -> Path:
    """Replace a graph file and record its new hash, so only the content is hostile."""
    import hashlib

    d = w.export()
    (d / f"{graph}.onnx").write_bytes(content)
    return w.edit(_set(f"graphs.{graph}.sha256", hashlib.sha256(content).hexdigest()))


def _external_data(w: Work) -> Path:
    """step.onnx with its weights in weights.bin beside it (outside the manifest's hashes)."""
    import onnx

    d = w.export()
    model = onnx.load(str(d / "step.onnx"))
    onnx.save_model(model, str(d / "step.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return _regraph(w, "step", (d / "step.onnx").read_bytes())


def _r9y9_1e300(w: Work) -> Path:
    state = {k: v.double() for k, v in torch.load(w.sources["r9y9.pth"], weights_only=True).items()}
    state["last_conv_layers.3.weight"][0, 0, 0] = 1e300
    torch.save(state, w.root / "big.pth")
    return w.root / "big.pth"


def _checkpoint_1e300(w: Work) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = w.sources["tiny.safetensors"]
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: v.double() for k, v in load_file(str(src)).items()}
    tensors["head.3.weight"][0, 0, 0] = 1e300
    save_file(tensors, str(w.root / "big.safetensors"), metadata=meta)
    return w.root / "big.safetensors"


def _fp16_overflow(w: Work) -> Path:
    model = random_model(WaveNetConfig(**TINY), seed=1)
    with torch.no_grad():
        model.head[3].weight[0, 0, 0] = 1e5  # finite in float32, inf in float16
    save_checkpoint(model, w.root / "loud.safetensors")
    return w.root / "loud.safetensors"


def _npy_header(w: Work, shape: tuple, name: str = "huge.npy") -> Path:
    """A .npy whose header claims `shape` float32 but holds 16 bytes."""
    from numpy.lib import format as npf

    path = w.root / name
    with open(path, "wb") as f:
        npf.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 16)
    return path


def _other_config_checkpoint(w: Work) -> Path:
    save_checkpoint(random_model(WaveNetConfig(**(TINY | {"residual_channels": 6})), seed=2), w.root / "o.safetensors")
    return w.root / "o.safetensors"


def _ring(w: Work, rings) -> Path:
    return w.edit(lambda d: _step(d)["state"][0].__setitem__("rings", rings))


@dataclass
class Case:
    kind: str  # the row of the hostile-input table
    args: Callable[[Work], list]  # plants its inputs in the work tree → the argv
    message: str = ""  # a fragment of the one error line
    forbid: tuple[str, ...] = ()  # "module:function" that must not run (refused before the work)


E = "tiny"
CASES: dict[str, Case] = {
    # ---- manifests of the wrong types, sizes and paths (read by inspect, generate, parity) -----------
    "manifest/graphs-list": Case("manifest JSON types", lambda w: ["inspect", w.edit(_set("graphs", []))],
                                 "graphs must be"),
    "manifest/graphs-null": Case("manifest JSON types", lambda w: ["inspect", w.edit(_set("graphs", None))],
                                 "graphs must be"),
    "manifest/file-number": Case("manifest JSON types",
                                 lambda w: ["inspect", w.edit(_set("graphs.step.file", 7))], "file"),
    "manifest/inputs-string": Case("manifest JSON types",
                                   lambda w: ["inspect", w.edit(_set("graphs.step.inputs", "token"))], "inputs"),
    "manifest/engines-list": Case("manifest JSON types", lambda w: ["inspect", w.edit(_set("engines", []))],
                                  "engines"),
    "manifest/dtype-unknown": Case("manifest JSON types",
                                   lambda w: ["inspect", w.edit(_set("graphs.step.inputs.0.dtype", "complex128"))],
                                   "dtype"),
    "manifest/nested-deep": Case("manifest nesting", lambda w: [
        "inspect", w.manifest_text('{"format": "wn-export/1", "graphs": ' + "[" * 200000 + "]" * 200000 + "}")],
        "nested"),
    "manifest/int-5000-digits": Case("manifest numbers", lambda w: [
        "inspect", w.manifest_text('{"format": "wn-export/1", "receptive_field": ' + "9" * 5000 + "}")],
        "manifest"),
    "manifest/nan-init": Case("manifest numbers", lambda w: [
        "generate", w.edit(lambda d: _step(d)["state"][0].__setitem__("init", float("nan"))), "-n", 4,
        "-o", w.root / "o.wav"], "init"),
    "manifest/init-1e400": Case("manifest numbers", lambda w: [
        "generate", w.manifest_text((w.export() / "manifest.json").read_text().replace('"init": 0.0', '"init": 1e400')),
        "-n", 4, "-o", w.root / "o.wav"], "init"),
    "manifest/shape-1e12": Case("manifest numbers", lambda w: [
        "generate", w.edit(lambda d: _step(d)["state"][0].__setitem__("shape", ["batch", 10**12, 4])), "-n", 4,
        "-o", w.root / "o.wav"], "dimension"),
    "manifest/shape-negative": Case("manifest numbers", lambda w: [
        "inspect", w.edit(_set("graphs.step.outputs.0.shape", ["batch", -16]))], "dimension"),
    "manifest/shape-zero": Case("manifest numbers", lambda w: [
        "inspect", w.edit(_set("graphs.step.outputs.0.shape", ["batch", 0]))], "dimension"),
    "manifest/rings-short": Case("manifest rings", lambda w: [
        "generate", w.edit(lambda d: _step(d)["state"][0].__setitem__("rings", _step(d)["state"][0]["rings"][:1])),
        "-n", 4, "-o", w.root / "o.wav"], "rings"),
    "manifest/ring-offset-2^63": Case("manifest rings", lambda w: [
        "generate", _ring(w, [{"offset": 2**63 - 1, "length": 1}] * 4), "-n", 4, "-o", w.root / "o.wav"],
        "offset"),
    "manifest/ring-length-0": Case("manifest rings", lambda w: [
        "generate", _ring(w, [{"offset": 0, "length": 0}] * 4), "-n", 4, "-o", w.root / "o.wav"], "length"),
    "manifest/state-rows": Case("manifest vs graph", lambda w: [
        "generate", w.edit(lambda d: _step(d)["state"][0]["shape"].__setitem__(1, 3)), "-n", 4,
        "-o", w.root / "o.wav"], "state"),
    "manifest/io-renamed": Case("manifest vs graph", lambda w: [
        "generate", w.edit(_set("graphs.step.inputs.0.name", "tok")), "-n", 4, "-o", w.root / "o.wav"], ""),
    "manifest/absolute-file": Case("manifest paths", lambda w: [
        "inspect", w.edit(_set("graphs.step.file", "/etc/passwd"))], "inside the export directory"),
    "manifest/dotdot-file": Case("manifest paths", lambda w: [
        "inspect", w.edit(_set("graphs.step.file", "../../../../etc/passwd"))], "inside the export directory"),
    "manifest/symlink-out": Case("manifest paths", lambda w: [
        "inspect", (w.file("outside.onnx", b"x"), (w.export() / "link.onnx").symlink_to("../outside.onnx"),
                    w.edit(_set("graphs.step.file", "link.onnx")))[-1]], "outside the export directory"),
    "manifest/engine-outside": Case("manifest paths", lambda w: [
        "inspect", w.edit(_set("engines", {"step": {"file": "/etc/passwd", "sha256": "0", "backend": "x"}}))],
        "inside the export directory"),
    "manifest/not-json": Case("manifest files", lambda w: ["inspect", w.manifest_text("{not json")], "not valid JSON"),
    "manifest/top-list": Case("manifest files", lambda w: ["inspect", w.manifest_text("[]")], "format"),
    "manifest/17-MB": Case("manifest files", lambda w: [
        "inspect", w.manifest_text('{"format": "wn-export/1"' + " " * (17 << 20) + "}")], "larger than"),
    "manifest/format": Case("manifest files", lambda w: ["inspect", w.edit(_set("format", "wn-export/9"))], "format"),
    "manifest/config-stacks-two": Case("manifest config", lambda w: [
        "inspect", w.edit(_set("model.stacks", "two"))], "stacks"),
    "manifest/config-10000-layers": Case("manifest config", lambda w: [
        "inspect", w.edit(_set("model.layers", 10000))], "WN_EXPORT_MAX_LAYERS"),
    "manifest/receptive-field": Case("manifest config", lambda w: [
        "inspect", w.edit(_set("receptive_field", 8))], "receptive_field"),
    "manifest/sha-mismatch": Case("graph files", lambda w: [
        "inspect", (w.export(), (w.root / E / "step.onnx").open("ab").write(b"\0"), w.root / E)[-1]], "sha256"),
    "manifest/graph-missing": Case("graph files", lambda w: [
        "inspect", (w.export(), (w.root / E / "step.onnx").unlink(), w.root / E)[-1]], "missing"),
    "manifest/graph-garbage": Case("graph files", lambda w: [
        "generate", _regraph(w, "step", b"garbage"), "-n", 4, "-o", w.root / "o.wav"], "step.onnx"),
    "manifest/external-data": Case("graph files", lambda w: [
        "generate", _external_data(w), "-n", 4, "-o", w.root / "o.wav"], "external data"),
    "manifest/no-directory": Case("graph files", lambda w: ["inspect", w.root / "nowhere"], "does not exist"),
    # ---- configs (init) ---------------------------------------------------------------------------
    "config/dev-zero": Case("config files", lambda w: ["init", "--config", "/dev/zero", "-o", w.root / "m.safetensors"],
                            "not a regular file"),
    "config/directory": Case("config files", lambda w: ["init", "--config", w.root, "-o", w.root / "m.safetensors"],
                             "config"),
    "config/2-MB": Case("config files", lambda w: [
        "init", "--config", w.file("big.json", "{" + " " * (2 << 20) + "}"), "-o", w.root / "m.safetensors"],
        "larger than"),
    "config/list": Case("config JSON types", lambda w: ["init", "--config", w.file("c.json", "[]"), "-o",
                                                        w.root / "m.safetensors"], "JSON object"),
    "config/stacks-two": Case("config JSON types", lambda w: ["init", "--config", w.config(stacks="two"), "-o",
                                                              w.root / "m.safetensors"], "stacks"),
    "config/layers-true": Case("config JSON types", lambda w: ["init", "--config", w.config(layers=True), "-o",
                                                               w.root / "m.safetensors"], "layers"),
    "config/residual-1e12-float": Case("config JSON types", lambda w: [
        "init", "--config", w.config(residual_channels=1e12), "-o", w.root / "m.safetensors"], "residual_channels"),
    "config/unknown-field": Case("config JSON types", lambda w: [
        "init", "--config", w.config(colour="red"), "-o", w.root / "m.safetensors"], "unknown"),
    "config/10000-layers": Case("resource limits", lambda w: [
        "init", "--config", w.config(layers=10000, stacks=10000), "-o", w.root / "m.safetensors"],
        "WN_EXPORT_MAX_LAYERS"),
    "config/dilation-2^62": Case("resource limits", lambda w: [
        "init", "--config", w.config(layers=2, dilations=[1, 2**62]), "-o", w.root / "m.safetensors"],
        "WN_EXPORT_MAX_RECEPTIVE_FIELD"),
    "config/stack-of-1000": Case("resource limits", lambda w: [
        "init", "--config", w.config(layers=1000, stacks=1), "-o", w.root / "m.safetensors"],
        "WN_EXPORT_MAX_RECEPTIVE_FIELD"),
    "config/residual-10^12": Case("resource limits", lambda w: [
        "init", "--config", w.config(residual_channels=10**12), "-o", w.root / "m.safetensors"],
        "WN_EXPORT_MAX_PARAMETERS"),
    "config/classes-10^9": Case("resource limits", lambda w: [
        "init", "--config", w.config(quantization_channels=10**9), "-o", w.root / "m.safetensors"],
        "WN_EXPORT_MAX_PARAMETERS"),
    "config/state-bytes": Case("resource limits", lambda w: [
        "init", "--config", w.config(layers=16, stacks=1, residual_channels=2048, gate_channels=2, skip_channels=2),
        "-o", w.root / "m.safetensors"], "WN_EXPORT_MAX_STATE_BYTES"),
    "config/hop-10^12": Case("resource limits", lambda w: [
        "init", "--config", w.config(local_channels=1, hop_size=10**12), "-o", w.root / "m.safetensors"],
        "hop_size"),
    "config/sample-rate-2^40": Case("resource limits", lambda w: [
        "init", "--config", w.config(sample_rate=2**40), "-o", w.root / "m.safetensors"], "sample_rate"),
    "config/output-is-config": Case("output is an input", lambda w: [
        "init", "--config", w.config(), "-o", w.root / "cfg.json"], "input"),
    "config/output-links-to-config": Case("output is an input", lambda w: [
        "init", "--config", w.config(), "-o", (w.root / "l.safetensors").symlink_to("cfg.json")
        or w.root / "l.safetensors"], "input"),
    "config/output-unwritable": Case("unwritable output", lambda w: [
        "init", "--config", w.config(), "-o", f"{UNWRITABLE}/m.safetensors"], "cannot write"),
    "config/output-name-too-long": Case("unwritable output", lambda w: [
        "init", "--config", w.config(), "-o", w.root / LONG], ""),
    "config/output-parent-is-file": Case("unwritable output", lambda w: [
        "init", "--config", w.config(), "-o", w.file("f.txt", "x") / "m.safetensors"], "not a directory"),
    "config/output-is-directory": Case("unwritable output", lambda w: [
        "init", "--config", w.config(), "-o", w.root], "directory"),
    # ---- checkpoints and numbers ------------------------------------------------------------------
    "checkpoint/1e300-float64": Case("non-finite after a cast", lambda w: ["info", _checkpoint_1e300(w)], "float32"),
    "checkpoint/1e300-onnx": Case("non-finite after a cast", lambda w: [
        "onnx", "-c", _checkpoint_1e300(w), "-o", w.root / "out"], "float32"),
    "checkpoint/fp16-overflow": Case("non-finite after a cast", lambda w: [
        "onnx", "-c", _fp16_overflow(w), "-o", w.root / "out", "--fp16"], "finite"),
    "checkpoint/dev-zero": Case("checkpoint files", lambda w: ["info", "/dev/zero"], "not a regular file"),
    "checkpoint/directory": Case("checkpoint files", lambda w: ["info", w.root], ""),
    "checkpoint/truncated": Case("checkpoint files", lambda w: [
        "info", w.file("t.safetensors", w.sources["tiny.safetensors"].read_bytes()[:200])], "safetensors"),
    # ---- import r9y9 ------------------------------------------------------------------------------
    "r9y9/hparams-stacks-two": Case("r9y9 hparams", lambda w: [
        "import", "r9y9", w.sources["r9y9.pth"], "--hparams", w.file("h.json", '{"stacks": "two"}'),
        "-o", w.root / "m.safetensors"], "stacks"),
    "r9y9/hparams-list": Case("r9y9 hparams", lambda w: [
        "import", "r9y9", w.sources["r9y9.pth"], "--hparams", w.file("h.json", "[1]"), "-o", w.root / "m.safetensors"],
        "JSON object"),
    "r9y9/hparams-dev-zero": Case("r9y9 hparams", lambda w: [
        "import", "r9y9", w.sources["r9y9.pth"], "--hparams", "/dev/zero", "-o", w.root / "m.safetensors"],
        "not a regular file"),
    "r9y9/hparams-layers-two": Case("r9y9 hparams", lambda w: [
        "import", "r9y9", w.sources["r9y9.pth"], "--hparams", w.file("h.json", '{"stacks": 1, "cin_channels": "x"}'),
        "-o", w.root / "m.safetensors"], "cin_channels"),
    "r9y9/stacks-negative": Case("r9y9 hparams", lambda w: [
        "import", "r9y9", w.sources["r9y9.pth"], "--stacks", -3, "-o", w.root / "m.safetensors"], "stacks"),
    "r9y9/weight-1e300": Case("non-finite after a cast", lambda w: [
        "import", "r9y9", _r9y9_1e300(w), "--stacks", 1, "-o", w.root / "m.safetensors"], "float32"),
    "r9y9/output-is-checkpoint": Case("output is an input", lambda w: [
        "import", "r9y9", (p := w.file("t.pth", w.sources["r9y9.pth"].read_bytes())), "--stacks", 1, "-o", p], "input"),
    "r9y9/output-unwritable": Case("unwritable output", lambda w: [
        "import", "r9y9", w.sources["r9y9.pth"], "--stacks", 1, "-o", f"{UNWRITABLE}/m.safetensors"], "cannot write",
        forbid=("wn_export.importers:import_r9y9",)),
    # ---- onnx -------------------------------------------------------------------------------------
    "onnx/output-unwritable": Case("unwritable output", lambda w: [
        "onnx", "-c", w.checkpoint(), "-o", f"{UNWRITABLE}/out"], "cannot write",
        forbid=("wn_export.export.pipeline:export_graph",)),
    "onnx/output-name-too-long": Case("unwritable output", lambda w: [
        "onnx", "-c", w.checkpoint(), "-o", w.root / LONG], "",
        forbid=("wn_export.export.pipeline:export_graph",)),
    "onnx/output-is-file": Case("unwritable output", lambda w: [
        "onnx", "-c", w.checkpoint(), "-o", w.file("f.txt", "x")], "is a file"),
    "onnx/opset-5": Case("options out of range", lambda w: ["onnx", "-c", w.checkpoint(), "-o", w.root / "o",
                                                            "--opset", 5], "opset"),
    "onnx/opset-99": Case("options out of range", lambda w: ["onnx", "-c", w.checkpoint(), "-o", w.root / "o",
                                                             "--opset", 99], "opset"),
    "onnx/checkpoint-is-manifest": Case("output is an input", lambda w: [
        "onnx", "-c", w.export() / "manifest.json", "-o", w.export()], ""),
    # ---- generate ---------------------------------------------------------------------------------
    **{f"generate/temperature-{t}": Case("degenerate temperature", lambda w, t=t: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--temperature", t], "temperature")
       for t in ("1e-310", "nan", "inf", "0", "-1")},
    "generate/cond-npz": Case("conditioning files", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond",
        (np.savez(w.root / "c.npz", a=np.zeros((2, 4))), w.root / "c.npz")[1]], "npy"),
    "generate/cond-1.5TiB-header": Case("conditioning files", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond",
        _npy_header(w, (2, 206158430208))], "bytes"),
    "generate/cond-truncated": Case("conditioning files", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond", _npy_header(w, (2, 8))],
        "truncated"),
    "generate/cond-nan": Case("conditioning values", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond",
        w.npy("c.npy", np.full((2, 4), np.nan, np.float32))], "NaN"),
    "generate/cond-1e300": Case("conditioning values", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond",
        w.npy("c.npy", np.full((2, 4), 1e300))], "float32"),
    "generate/cond-dev-zero": Case("conditioning files", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond", "/dev/zero"],
        "not a regular file"),
    "generate/cond-object": Case("conditioning files", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond",
        w.npy("c.npy", np.array([{"a": 1}, None], dtype=object))], "object"),
    "generate/cond-wrong-shape": Case("conditioning values", lambda w: [
        "generate", w.export("conditioned"), "-n", 4, "-o", w.root / "o.wav", "--cond",
        w.npy("c.npy", np.zeros((5, 4), np.float32))], "conditioning"),
    "generate/seed-negative": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--seed", -1], "seed"),
    "generate/seed-2^64": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--seed", 2**64], "seed"),
    "generate/threads-negative": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--threads", -3], "threads"),
    "generate/threads-zero": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--threads", 0], "threads"),
    "generate/samples-zero": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 0, "-o", w.root / "o.wav"], "samples"),
    "generate/samples-10^12": Case("resource limits", lambda w: [
        "generate", w.export(), "-n", 10**12, "-o", w.root / "o.wav"], "WN_EXPORT_MAX_MEMORY_BYTES",
        forbid=("wn_export.generation.loop:StepLoop.chunks",)),
    "generate/batch-zero": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--batch", 0], "batch"),
    "generate/batch-10^6": Case("resource limits", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--batch", 10**6], "WN_EXPORT_MAX_BATCH",
        forbid=("wn_export.generation.loop:StepLoop.chunks",)),
    "generate/chunk-zero": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--chunk", 0], "chunk"),
    "generate/precision": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--precision", "fp8"], "precision"),
    "generate/method": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--method", "beam"], "method"),
    "generate/backend": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--backend", "cuda"], "backend"),
    "generate/speaker-unconditioned": Case("options out of range", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / "o.wav", "--speaker", 1], "speaker"),
    "generate/output-unwritable": Case("unwritable output", lambda w: [
        "generate", w.export(), "-n", 4, "-o", f"{UNWRITABLE}/o.wav"], "cannot write",
        forbid=("wn_export.generation.loop:StepLoop.chunks",)),
    "generate/output-name-too-long": Case("unwritable output", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.root / (LONG + ".wav")], "",
        forbid=("wn_export.generation.loop:StepLoop.chunks",)),
    "generate/batch-names-too-long": Case("unwritable output", lambda w: [
        "generate", w.export(), "-n", 4, "--batch", 12, "-o", w.root / ("y" * 250 + ".wav")], "",
        forbid=("wn_export.generation.loop:StepLoop.chunks",)),
    "generate/plot-unwritable": Case("unwritable output", lambda w: [
        "generate", w.export(), "-n", 4, "--plot", "-o", (w.file("o.png/keep", "x"), w.root / "o.wav")[1]],
        "directory", forbid=("wn_export.generation.loop:StepLoop.chunks",)),
    "generate/output-is-directory": Case("unwritable output", lambda w: [
        "generate", w.export(), "-n", 4, "-o", (w.file("d.wav/keep", "x"), w.root / "d.wav")[1]], "directory"),
    "generate/output-not-wav": Case("unwritable output", lambda w: [
        "generate", w.export(), "-n", 4, "-o", w.export() / "manifest.json"], ".wav"),
    # ---- parity -----------------------------------------------------------------------------------
    "parity/generation-samples-0": Case("options out of range", lambda w: [
        "parity", w.export(), "--generation-samples", 0], "generation-samples",
        forbid=("wn_export.parity.harness:run_parity",)),
    "parity/generation-samples-10^12": Case("resource limits", lambda w: [
        "parity", w.export(), "--generation-samples", 10**12], "WN_EXPORT_MAX_MEMORY_BYTES"),
    "parity/seed-negative": Case("options out of range", lambda w: ["parity", w.export(), "--seed", -1], "seed",
                                 forbid=("wn_export.parity.harness:run_parity",)),
    "parity/json-unwritable": Case("unwritable output", lambda w: [
        "parity", w.export(), "--json", f"{UNWRITABLE}/p.json"], "cannot write",
        forbid=("wn_export.parity.harness:run_parity",)),
    "parity/json-name-too-long": Case("unwritable output", lambda w: [
        "parity", w.export(), "--json", w.root / LONG], "", forbid=("wn_export.parity.harness:run_parity",)),
    "parity/json-is-manifest": Case("output is an input", lambda w: [
        "parity", w.export(), "--json", w.export() / "manifest.json"], "input",
        forbid=("wn_export.parity.harness:run_parity",)),
    "parity/json-is-checkpoint": Case("output is an input", lambda w: [
        "parity", w.export(), "-c", (c := w.checkpoint()), "--json", c], "input",
        forbid=("wn_export.parity.harness:run_parity",)),
    "parity/backend": Case("options out of range", lambda w: ["parity", w.export(), "--backend", "cuda"], "backend"),
    "parity/checkpoint-other-config": Case("checkpoint files", lambda w: [
        "parity", w.export(), "-c", _other_config_checkpoint(w)], "config"),
    # ---- trt --------------------------------------------------------------------------------------
    "trt/workspace-negative": Case("options out of range", lambda w: ["trt", w.export(), "--workspace", -5],
                                   "workspace"),
    "trt/workspace-zero": Case("options out of range", lambda w: ["trt", w.export(), "--workspace", 0], "workspace"),
    "trt/time-1,1,1": Case("options out of range", lambda w: ["trt", w.export(), "--time", "1,1,1"], "time"),
    "trt/time-words": Case("options out of range", lambda w: ["trt", w.export(), "--time", "a,b,c"], "time"),
    "trt/time-descending": Case("options out of range", lambda w: ["trt", w.export(), "--time", "9,5,2"], "time"),
    "trt/batch-zero": Case("options out of range", lambda w: ["trt", w.export(), "--batch", "0,1,2"], "batch"),
    "trt/batch-2^40": Case("resource limits", lambda w: ["trt", w.export(), "--batch", f"1,1,{2**40}"],
                           "WN_EXPORT_MAX_BATCH"),
    "trt/timing-cache-dev-zero": Case("options out of range", lambda w: [
        "trt", w.export(), "--timing-cache", "/dev/zero"], "not a regular file"),
    "trt/timing-cache-is-manifest": Case("output is an input", lambda w: [
        "trt", w.export(), "--timing-cache", w.export() / "manifest.json"], "input"),
    "trt/compute-capability": Case("options out of range", lambda w: [
        "trt", w.export(), "--compute-capability", "banana"], "compute capability"),
    "trt/no-fp16-graphs": Case("options out of range", lambda w: ["trt", w.export("conditioned"), "--fp16"], "fp16"),
    # ---- bench, demo, info ------------------------------------------------------------------------
    "bench/batch-zero": Case("options out of range", lambda w: ["bench", w.export(), "--batch", "0"], "batch"),
    "bench/batch-10^6": Case("resource limits", lambda w: ["bench", w.export(), "--batch", "1000000"],
                             "WN_EXPORT_MAX_BATCH", forbid=("wn_export.bench.run:run_bench",)),
    "bench/seconds-negative": Case("options out of range", lambda w: ["bench", w.export(), "--seconds", -1],
                                   "seconds"),
    "bench/rounds-zero": Case("options out of range", lambda w: ["bench", w.export(), "--rounds", 0], "rounds"),
    "bench/threads-negative": Case("options out of range", lambda w: ["bench", w.export(), "--threads", -3],
                                   "threads"),
    "bench/json-unwritable": Case("unwritable output", lambda w: [
        "bench", w.export(), "--json", f"{UNWRITABLE}/b.json"], "cannot write", forbid=("wn_export.bench.run:run_bench",)),
    "demo/output-unwritable": Case("unwritable output", lambda w: ["demo", "-o", f"{UNWRITABLE}/demo"],
                                   "cannot write", forbid=("wn_export.export.pipeline:export_graph",)),
    "demo/samples-zero": Case("options out of range", lambda w: ["demo", "-o", w.root / "d", "-n", 0], "samples",
                              forbid=("wn_export.export.pipeline:export_graph",)),
}


def _forbid(monkeypatch, target: str) -> None:
    module, _, attr = target.partition(":")
    owner, _, name = attr.rpartition(".")

    def forbidden(*_a, **_k):
        raise AssertionError(f"{target} ran although the command should have been refused before its work")
    import importlib

    obj = importlib.import_module(module)
    if owner:
        obj = getattr(obj, owner)
    monkeypatch.setattr(obj, name, forbidden)


@pytest.fixture
def work(tmp_path, sources):
    root = tmp_path / "work"
    root.mkdir()
    return Work(root, sources)


@pytest.mark.parametrize("name", list(CASES))
def test_refused(name, work, monkeypatch):
    case = CASES[name]
    argv = [str(a) for a in case.args(work)]
    for target in case.forbid:
        _forbid(monkeypatch, target)
    before = tree(work.root)
    result = CliRunner().invoke(main, argv)
    assert not isinstance(result.exception, AssertionError), result.exception
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_one_line_error(result.exit_code, result.stderr, case.message)
    assert tree_diff(before, tree(work.root)) == []


def test_longest_legal_names_are_written(work):
    """A 250-byte name is legal: its temporary sibling must be too (temporary names are bounded)."""
    name = "n" * 245 + ".safetensors"[:5]
    r = CliRunner().invoke(main, ["init", "--config", str(work.config()), "-o", str(work.root / name)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["onnx", "-c", str(work.root / name), "-o", str(work.root / ("d" * 250))])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in work.root.iterdir()) == sorted(["cfg.json", name, "d" * 250])
    assert sorted(p.name for p in (work.root / ("d" * 250)).iterdir()) == ["manifest.json", "scoring.onnx",
                                                                           "step.native.safetensors", "step.onnx"]
