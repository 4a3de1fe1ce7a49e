"""Hostile and careless input to the C++ host (hosts/cpp): never a crash, one clear line, no lost file.

Every case runs the real programs in a scratch tree and asserts: the exit code; exactly one line on
stderr (no abort text, no sanitizer report); no file created or changed except what the command owns
(the whole tree is snapshotted with sha256 before and after, so inputs are proven unchanged); no
temporary file left behind.

The manifest, WAV and token cases run on a second build made with AddressSanitizer and
UndefinedBehaviorSanitizer (`hosts/cpp/build.sh --sanitize` → hosts/cpp/build-asan): a sanitizer
report exits 86 and fails the case. A seeded mutation fuzzer feeds a few hundred corrupted manifests
to `wn_manifest_check` (the reader wn_generate and wn_score use, without ONNX Runtime) and a sample
of them to wn_generate and wn_score. The native loop's plan file (step.native.safetensors: a safetensors
header and the packed weights) gets the same treatment: crafted headers, shapes, offsets, dimensions and
values, and a seeded fuzz of mutated plan files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from test_cpp_host import HOST, build_host, host  # noqa: F401 (host: the session fixture, Release build)

ASAN_BUILD = HOST / "build-asan"
SANITIZER_EXIT = 86
SANITIZER_ENV = {
    "ASAN_OPTIONS": f"detect_leaks=1:halt_on_error=1:exitcode={SANITIZER_EXIT}",
    "UBSAN_OPTIONS": f"halt_on_error=1:print_stacktrace=1:exitcode={SANITIZER_EXIT}",
    "LSAN_OPTIONS": f"exitcode={SANITIZER_EXIT}",
}
CRASH_TEXT = ("Sanitizer", "runtime error:", "terminate called", "free():", "Aborted", "core dumped",
              "Segmentation fault", "Floating point exception", "std::bad_alloc")
TEMP_FILE = re.compile(r"^\..+\.\d+\.\d+\.tmp$")  # OutputFile's temporary names: .NAME.PID.N.tmp

CONFIGS = {  # tiny: the cases are about input handling, not the model
    "plain": {"quantization_channels": 16, "residual_channels": 4, "gate_channels": 6, "skip_channels": 4,
              "kernel_size": 2, "layers": 3, "stacks": 1},
    "local": {"quantization_channels": 16, "residual_channels": 4, "gate_channels": 6, "skip_channels": 4,
              "kernel_size": 2, "layers": 3, "stacks": 1, "local_channels": 2, "hop_size": 4, "speakers": 2,
              "speaker_channels": 2},
}


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def asan() -> Path:
    """The host built with -fsanitize=address,undefined (incremental, in hosts/cpp/build-asan)."""
    return build_host(ASAN_BUILD, "--sanitize")


def _wn_export(*args) -> None:
    exe = Path(sys.executable).parent / "wn-export"
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Tiny export directories made with the CLI: plain, local (speaker + local conditioning), nan."""
    root = tmp_path_factory.mktemp("hostile_exports")
    out = {}
    for name, cfg in CONFIGS.items():
        (root / f"{name}.json").write_text(json.dumps(cfg))
        _wn_export("init", "--config", root / f"{name}.json", "-o", root / f"{name}.safetensors")
        _wn_export("onnx", "-c", root / f"{name}.safetensors", "-o", root / name)
        out[name] = root / name
    out["nan"] = _nan_export(out["plain"], root / "nan")
    return out


def _nan_export(src: Path, dst: Path) -> Path:
    """`plain` with finite but huge step weights: float32 logits overflow to inf/NaN at the first step."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "step.onnx"))
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 1:
            init.CopyFrom(numpy_helper.from_array(np.full_like(w, 1e30), init.name))
    onnx.save(model, str(dst / "step.onnx"))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["graphs"]["step"]["sha256"] = hashlib.sha256((dst / "step.onnx").read_bytes()).hexdigest()
    del manifest["native_loops"]  # its plan is the original graph's: this export steps the graph per step
    (dst / "step.native.safetensors").unlink()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


class Tree:
    """A scratch tree holding copies of the exports, input files and out/; runs programs in it and
    checks what they did to it."""

    def __init__(self, root: Path, exports: dict[str, Path]):
        self.root = root
        for name, path in exports.items():
            shutil.copytree(path, root / name, symlinks=True)
        (root / "out").mkdir()

    def manifest(self, name: str = "plain") -> dict:
        return json.loads((self.root / name / "manifest.json").read_text())

    def write_manifest(self, data: dict | str, name: str = "plain") -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        (self.root / name / "manifest.json").write_text(text)

    def snapshot(self) -> dict[str, tuple]:
        state = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                p = Path(dirpath, n)
                rel = str(p.relative_to(self.root))
                if p.is_symlink():
                    state[rel] = ("link", os.readlink(p))
                elif p.is_dir():
                    state[rel] = ("dir",)
                elif not p.is_file():  # a FIFO or socket: never opened
                    state[rel] = ("special", p.stat().st_mode, p.stat().st_ino)
                elif p.stat().st_size > 64 << 20:  # the sparse "huge" inputs: identity, size and time
                    st = p.stat()
                    state[rel] = ("file", st.st_ino, st.st_size, st.st_mtime_ns)
                else:
                    state[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        return state

    def run(self, exe: Path, *args, code: int, message: str = "", owns=(), timeout: float = 120,
            **popen) -> subprocess.CompletedProcess:
        before = self.snapshot()
        proc = subprocess.run([str(exe), *map(str, args)], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **SANITIZER_ENV}, **popen)
        after = self.snapshot()
        assert_outcome(proc, exe.name, code, message)
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        allowed = set(map(str, owns)) if code == 0 else set()  # a failed run owns nothing
        assert changed <= allowed, f"{exe.name} changed {sorted(changed - allowed)} (allowed: {sorted(allowed)})"
        leftovers = [p for p in after if TEMP_FILE.match(Path(p).name)]
        assert not leftovers, f"temporary files left: {leftovers}"
        return proc


def assert_outcome(proc: subprocess.CompletedProcess, program: str, code: int, message: str = "") -> None:
    """Exit code `code` (never a signal or a sanitizer's exit), and on error exactly one line that says so."""
    for text in CRASH_TEXT:
        assert text not in proc.stderr, f"{program} crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    assert proc.returncode == code, f"{program}: exit {proc.returncode}, expected {code}:\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if code == 0:
        assert lines == [], proc.stderr
        return
    kind = "usage error" if code == 2 else "error"
    assert len(lines) == 1 and lines[0].startswith(f"{program}: {kind}: "), proc.stderr
    assert message in lines[0], f"expected {message!r} in: {lines[0]}"


@pytest.fixture
def tree(tmp_path, exports) -> Tree:
    return Tree(tmp_path, exports)


def _ring(m: dict) -> dict:
    return m["graphs"]["step"]["state"][0]


def _state_dim(m: dict, axis: int, value) -> None:
    """Set one dimension of the ring state everywhere it is declared (input tensor and state entry)."""
    step = m["graphs"]["step"]
    for t in step["inputs"]:
        if t["role"] == "state":
            t["shape"][axis] = value
    _ring(m)["shape"][axis] = value


def _rows(m: dict) -> int:
    return _ring(m)["shape"][1]


# ---- hostile manifests (sanitizer build) -----------------------------------------------------------------
# (id, mutation of the plain export's manifest, expected message, level). level "manifest": every
# program rejects it; "plan": only what plans the step graph (wn_generate, wn_manifest_check) does.
MANIFEST_CASES = [
    ("ring-offset-int64-max", lambda m: _ring(m)["rings"][0].update(offset=2**63 - 1),
     "'offset' = 9223372036854775807 is out of range", "manifest"),
    ("ring-offset-beyond-int64", lambda m: _ring(m)["rings"][0].update(offset=2**64 + 1),
     "'offset' = 1.8446744073709552e+19 is out of range", "manifest"),
    ("ring-offset-negative", lambda m: _ring(m)["rings"][0].update(offset=-1), "is out of range", "manifest"),
    ("ring-length-zero", lambda m: _ring(m)["rings"][0].update(length=0), "is out of range", "manifest"),
    ("ring-at-state-end", lambda m: _ring(m)["rings"][0].update(offset=_rows(m), length=1),
     "lies outside state", "plan"),
    ("ring-far-outside-state", lambda m: _ring(m)["rings"][0].update(offset=100, length=1),  # a heap overflow
     "lies outside state", "plan"),                                                          # without the check
    ("ring-longer-than-state", lambda m: _ring(m)["rings"][0].update(offset=0, length=_rows(m) + 1),
     "lies outside state", "plan"),
    ("ring-max-offset-max-length", lambda m: _ring(m)["rings"][0].update(offset=2**31 - 2, length=2**31 - 1),
     "lies outside state", "plan"),
    ("rings-short", lambda m: _ring(m).update(rings=_ring(m)["rings"][:-1]), "rings but its update has", "plan"),
    ("rings-string", lambda m: _ring(m).update(rings="abc"), "'rings' must be a list", "manifest"),
    ("rings-entry-number", lambda m: _ring(m)["rings"].__setitem__(0, 5), "must be objects", "manifest"),
    ("state-zero-dim", lambda m: _state_dim(m, 1, 0), "= 0 is out of range [1,", "manifest"),
    ("state-dim-1e12", lambda m: _state_dim(m, 1, 10**12), "= 1000000000000 is out of range", "manifest"),
    ("state-dim-negative", lambda m: _state_dim(m, 2, -5), "= -5 is out of range", "manifest"),
    ("state-dim-float", lambda m: _state_dim(m, 2, 4.5), "shape entries must be integers", "manifest"),
    ("state-batch-fixed", lambda m: _state_dim(m, 0, 3), "must be (batch, rows, …)", "plan"),
    ("state-needs-16-eib", lambda m: (_state_dim(m, 1, 2**31 - 1), _state_dim(m, 2, 2**31 - 1)),
     "more than the host allocates", "plan"),
    ("state-symbolic-1e9-rows", lambda m: _state_dim(m, 1, "batch+999999999"), "more than the host allocates",
     "plan"),
    ("state-bad-symbol", lambda m: _state_dim(m, 1, "batch*2"), "shape entries must be integers", "manifest"),
    ("shape-rank-9", lambda m: m["graphs"]["step"]["inputs"][0].update(shape=["batch"] + [1] * 8),
     "rank 9", "manifest"),
    ("state-init-1e300", lambda m: _ring(m).update(init=1e300), "is not a finite float32", "manifest"),
    ("state-init-string", lambda m: _ring(m).update(init="0"), "'init' must be a number", "manifest"),
    ("state-listed-twice", lambda m: m["graphs"]["step"]["state"].append(_ring(m)), "reuses a tensor", "plan"),
    ("graphs-list", lambda m: m.update(graphs=[]), "'graphs' must be an object, got a list", "manifest"),
    ("graphs-null", lambda m: m.update(graphs=None), "'graphs' must be an object, got null", "manifest"),
    ("graph-file-number", lambda m: m["graphs"]["step"].update(file=7), "'file' must be a string, got 7",
     "manifest"),
    ("graph-inputs-string", lambda m: m["graphs"]["step"].update(inputs="token"), "'inputs' must be a list",
     "manifest"),
    ("graph-input-null", lambda m: m["graphs"]["step"]["inputs"].__setitem__(0, None),
     "must be an object, got null", "manifest"),
    ("graph-state-object", lambda m: m["graphs"]["step"].update(state={}), "'state' must be a list", "manifest"),
    ("model-list", lambda m: m.update(model=[]), "'model' must be an object", "manifest"),
    ("quantization-zero", lambda m: m["model"].update(quantization_channels=0), "out of range [2, 65536]",
     "manifest"),
    ("quantization-2^40", lambda m: m["model"].update(quantization_channels=2**40), "out of range", "manifest"),
    ("quantization-string", lambda m: m["model"].update(quantization_channels="16"), "must be an integer",
     "manifest"),
    ("quantization-not-the-logits", lambda m: m["model"].update(quantization_channels=32),
     "16 logits per sample but quantization_channels is 32", "manifest"),
    ("logits-classes-zero", lambda m: m["graphs"]["step"]["outputs"][0].update(shape=["batch", 0]),
     "is out of range", "manifest"),
    ("receptive-field-negative", lambda m: m.update(receptive_field=-1), "out of range", "manifest"),
    ("receptive-field-float", lambda m: m.update(receptive_field=1.5), "must be an integer", "manifest"),
    ("sample-rate-zero", lambda m: m["model"].update(sample_rate=0), "out of range", "manifest"),
    ("speakers-negative", lambda m: m["model"].update(speakers=-1), "out of range", "manifest"),
    ("hop-size-zero", lambda m: m["model"].update(hop_size=0), "out of range", "manifest"),
    ("format-nested", lambda m: m.update(format={"a": [1]}), "unsupported manifest format", "manifest"),
    ("engines-list", lambda m: m.update(engines=[]), "'engines' must be an object", "manifest"),
    ("engine-file-number", lambda m: m.update(engines={"step": {"file": 3}}), "'file' must be a string",
     "manifest"),
    ("engine-without-file", lambda m: m.update(engines={"step": {"graph": "step"}}), "has no 'file'",
     "manifest"),
    ("position-shape-2", lambda m: next(t for t in m["graphs"]["step"]["inputs"] if t["role"] == "position")
     .update(shape=[2]), "must be int64 (1,)", "plan"),
    ("token-float32", lambda m: m["graphs"]["step"]["inputs"][0].update(dtype="float32"), "must be int64 (batch,)",
     "plan"),
    ("dtype-complex", lambda m: m["graphs"]["step"]["inputs"][0].update(dtype="complex64"), "unsupported dtype",
     "manifest"),
    ("name-empty", lambda m: m["graphs"]["step"]["inputs"][0].update(name=""), "'name' is empty", "manifest"),
]
RAW_MANIFESTS = [  # (id, text, expected message)
    ("nested-100000", '{"format": "wn-export/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests deeper than"),
    ("not-json", '{"format": "wn-export/1", ', "is not valid JSON"),
    ("json-list", "[1, 2, 3]", "unsupported manifest format"),
    ("nan-literal", '{"format": "wn-export/1", "receptive_field": NaN}', "is not valid JSON"),
    ("empty", "", "is not valid JSON"),
]


def _programs(build: Path, tree: Tree, export: str = "plain"):
    """The three readers of a manifest with arguments that would succeed on a valid export."""
    tokens = tree.root / "tokens.i64"
    if not tokens.exists():
        np.arange(40, dtype=np.int64).reshape(2, 20).__mod__(16).tofile(tokens)
    return [
        (build / "wn_manifest_check", [export, "-q"], ()),
        (build / "wn_generate", [export, "-o", "out/a.wav", "-n", 16, "-q"], ("out/a.wav",)),
        (build / "wn_score", [export, "--tokens", "tokens.i64", "--batch", 2], ()),
    ]


@pytest.mark.parametrize("name, mutate, message, level", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_hostile_manifest_is_one_clear_error(asan, tree, name, mutate, message, level):
    m = tree.manifest()
    mutate(m)
    tree.write_manifest(m)
    for exe, args, owns in _programs(asan, tree):
        if level == "plan" and exe.name == "wn_score":  # it never plans the step graph: runs, writes nothing
            tree.run(exe, *args, code=0)
        else:
            tree.run(exe, *args, code=1, message=message, owns=owns)


@pytest.mark.parametrize("name, text, message", RAW_MANIFESTS, ids=[c[0] for c in RAW_MANIFESTS])
def test_malformed_manifest_text_is_one_clear_error(asan, tree, name, text, message):
    tree.write_manifest(text)
    for exe, args, _ in _programs(asan, tree):
        tree.run(exe, *args, code=1, message=message)


def test_oversized_manifest_is_refused_before_it_is_read(asan, tree):
    m = tree.manifest()
    m["padding"] = " " * (17 << 20)
    tree.write_manifest(m)
    tree.run(asan / "wn_manifest_check", "plain", code=1, message="more than the host reads (16.0 MiB")


def test_valid_manifest_passes_every_reader(asan, tree):
    """The control: the unmodified export runs through all three programs, under the sanitizers."""
    for exe, args, owns in _programs(asan, tree):
        tree.run(exe, *args, code=0, owns=owns)
    with wave.open(str(tree.root / "out" / "a.wav")) as w:
        assert w.getnframes() == 16


# ---- manifest files confined to the export directory -------------------------------------------------------
def _outside_copy(tree: Tree) -> None:
    """tree/outside/ holds an exact copy of step.onnx: the sha256 check alone would accept it."""
    (tree.root / "outside").mkdir(exist_ok=True)
    shutil.copy(tree.root / "plain" / "step.onnx", tree.root / "outside" / "step.onnx")


PATH_CASES = [  # (id, set-up returning the manifest `file` value, engine?, message)
    ("absolute", lambda t: str(t.root / "outside" / "step.onnx"), False, "is an absolute path"),
    ("dotdot", lambda t: "../outside/step.onnx", False, "has a '..' component"),
    ("dotdot-inside", lambda t: "sub/../../outside/step.onnx", False, "has a '..' component"),
    ("symlink-file", lambda t: (t.root / "plain" / "link.onnx").symlink_to("../outside/step.onnx")
     or "link.onnx", False, "resolves outside the export directory"),
    ("symlink-dir", lambda t: (t.root / "plain" / "sub").symlink_to(t.root / "outside")
     or "sub/step.onnx", False, "resolves outside the export directory"),
    ("control-char", lambda t: "step.onnx\n", False, "contains a control character"),
    ("empty", lambda t: "", False, "'file' is empty"),
    ("engine-dotdot", lambda t: "../outside/step.onnx", True, "has a '..' component"),
    ("engine-absolute", lambda t: "/etc/passwd", True, "is an absolute path"),
    ("engine-symlink", lambda t: (t.root / "plain" / "e.engine").symlink_to("/etc/passwd") or "e.engine", True,
     "resolves outside the export directory"),
]


@pytest.mark.parametrize("name, setup, engine, message", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_manifest_files_stay_inside_the_export_directory(asan, tree, name, setup, engine, message):
    _outside_copy(tree)
    file = setup(tree)
    m = tree.manifest()
    if engine:
        m["engines"] = {"step": {"file": file, "graph": "step"}}
    else:
        m["graphs"]["step"]["file"] = file
    tree.write_manifest(m)
    for exe, args, _ in _programs(asan, tree):
        tree.run(exe, *args, code=1, message=message)


def test_a_symlink_inside_the_export_directory_is_fine(asan, tree):
    """Confinement is about where a file resolves, not about links as such."""
    (tree.root / "plain" / "graphs").mkdir()
    (tree.root / "plain" / "step.onnx").rename(tree.root / "plain" / "graphs" / "step.onnx")
    (tree.root / "plain" / "step.onnx").symlink_to("graphs/step.onnx")
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 8, "-q", code=0, owns=["out/a.wav"])


# ---- outputs: never an input, never partial, limits before any file ---------------------------------------------
OUTPUT_CASES = [  # (id, arguments after EXPORT_DIR, exit code, message)
    ("output-is-the-step-graph", ["-o", "plain/step.onnx"], 1, "inside the export directory"),
    ("output-is-the-manifest", ["-o", "plain/manifest.json"], 1, "inside the export directory"),
    ("tokens-is-the-scoring-graph", ["-o", "out/a.wav", "--tokens", "plain/scoring.onnx"], 1,
     "inside the export directory"),
    ("output-new-file-in-export", ["-o", "plain/new.wav"], 1, "inside the export directory"),
    ("output-twice", ["-o", "out/a.wav", "--tokens", "out/a.wav"], 1, "two outputs of this run are the same file"),
    ("stream-file-is-tokens", ["-o", "out/a.wav", "--batch", 2, "--tokens", "out/a_1.wav"], 1, "two outputs"),
    ("output-directory-missing", ["-o", "missing/a.wav"], 1, "cannot write missing/a.wav: directory missing"),
    ("output-is-a-directory", ["-o", "out"], 1, "it is a directory"),
    ("tokens-cannot-be-created", ["-o", "out/a.wav", "--tokens", "/proc/t.i64"], 1, "cannot write /proc/t.i64"),
    ("batch-100000", ["-o", "out/a.wav", "--batch", 100000], 2, "--batch must be <= 4096"),
    ("samples-2^31", ["-o", "out/a.wav", "-n", 2**31], 2, "--samples must be <= 2147483616"),
    ("seconds-inf", ["-o", "out/a.wav", "--seconds", "inf"], 2, "--seconds must be > 0"),
    ("seconds-nan", ["-o", "out/a.wav", "--seconds", "nan"], 2, "--seconds must be > 0"),
    ("seconds-1e300", ["-o", "out/a.wav", "--seconds", "1e300"], 2, "--seconds must be > 0 and at most"),
    ("threads-huge", ["-o", "out/a.wav", "--threads", 10**11], 2, "--threads must be <= 1024"),
    ("chunk-zero", ["-o", "out/a.wav", "--chunk", 0], 2, "--chunk must be >= 1"),
    ("seed-negative", ["-o", "out/a.wav", "--seed", -1], 2, "--seed must be an integer"),
]


@pytest.mark.parametrize("name, args, code, message", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_bad_output_is_refused_before_anything_is_written(asan, tree, name, args, code, message):
    tree.run(asan / "wn_generate", "plain", "-n", 64, "-q", *args, code=code, message=message)


@pytest.mark.parametrize("temperature", ["1e-310", "0", "-1", "inf", "-inf", "nan", "1e-300"])
def test_degenerate_temperature_is_refused(asan, tree, temperature):
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 64, "-q", "--temperature", temperature,
             code=1, message="temperature must be > 0, finite and at least 1.9e-270")


def test_output_that_is_not_a_regular_file_is_refused(asan, tree):
    """A FIFO (or device) would be replaced by the rename: refused, directly or through a link."""
    os.mkfifo(tree.root / "out" / "fifo.wav")
    (tree.root / "out" / "link.wav").symlink_to("fifo.wav")
    for out in ("out/fifo.wav", "out/link.wav"):
        tree.run(asan / "wn_generate", "plain", "-o", out, "-n", 8, "-q", code=1, message="not a regular file")


def test_output_through_a_symlink_replaces_the_link_not_its_target(asan, tree):
    victim = tree.root / "victim.txt"
    victim.write_text("precious\n")
    (tree.root / "out" / "link.wav").symlink_to(victim)
    tree.run(asan / "wn_generate", "plain", "-o", "out/link.wav", "-n", 32, "-q", code=0, owns=["out/link.wav"])
    assert victim.read_text() == "precious\n"
    assert not (tree.root / "out" / "link.wav").is_symlink()
    with wave.open(str(tree.root / "out" / "link.wav")) as w:
        assert w.getnframes() == 32


def test_output_that_is_an_input_is_refused(asan, tree):
    """--cond's file as -o, or reached through a link: refused, the file unchanged."""
    cond = tree.root / "cond.f32"
    np.zeros((1, 2, 64), np.float32).tofile(cond)
    (tree.root / "out" / "link.wav").symlink_to(cond)
    common = ["--speaker", 0, "--cond", "cond.f32", "-n", 64, "-q"]
    for out in ("cond.f32", "out/link.wav"):
        tree.run(asan / "wn_generate", "local", "-o", out, *common, code=1, message="an input of this run")
    tree.run(asan / "wn_generate", "local", "-o", "out/a.wav", "--tokens", "cond.f32", *common, code=1,
             message="an input of this run")


def test_failure_after_the_outputs_are_created_leaves_nothing(asan, tree):
    """NaN logits at the first step: the outputs' temporary files exist by then and are removed."""
    tree.run(asan / "wn_generate", "nan", "-o", "out/a.wav", "--batch", 3, "--tokens", "out/t.i64", "-n", 64, "-q",
             code=1, message="the step graph produced NaN or infinite logits")


def test_batch_beyond_the_open_file_limit_fails_before_any_file(asan, tree):
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "--batch", 300, "-n", 8, "-q", code=1,
             message="this process may open only 256", preexec_fn=limit)


def test_outputs_are_complete_and_only_what_was_asked(asan, tree):
    owns = ["out/a_0.wav", "out/a_1.wav", "out/a_2.wav", "out/t.i64"]
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "--batch", 3, "--tokens", "out/t.i64", "-n", 100,
             "--chunk", 30, "-q", code=0, owns=owns)
    tokens = np.fromfile(tree.root / "out" / "t.i64", np.int64)
    assert tokens.shape == (300,) and tokens.min() >= 0 and tokens.max() < 16
    for i in range(3):
        with wave.open(str(tree.root / "out" / f"a_{i}.wav")) as w:
            assert (w.getnframes(), w.getframerate()) == (100, 16000)


# ---- kills: no partial output (SIGKILL cannot be handled: its temporary file is a valid WAV) ----------------
def _start_long_run(host: Path, tree: Tree) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([str(host / "wn_generate"), "plain", "-o", "out/a.wav", "-n", "20000000", "-q",
                             "--chunk", "1000"], cwd=tree.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = [p for p in (tree.root / "out").iterdir() if TEMP_FILE.match(p.name)]
        if temps and temps[0].stat().st_size > 44 + 2 * 3000:  # a few chunks and their header updates done
            return proc, temps[0]
        time.sleep(0.02)
    proc.kill()
    pytest.fail("wn_generate did not start writing within 60 s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_killed_generation_leaves_no_file(host, tree, sig):
    before = tree.snapshot()
    proc, _ = _start_long_run(host, tree)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -sig, err
    assert tree.snapshot() == before  # no output, no temporary file, inputs unchanged


def test_sigkill_leaves_only_a_valid_temporary_wav(host, tree):
    before = tree.snapshot()
    proc, temp = _start_long_run(host, tree)
    proc.kill()
    proc.communicate(timeout=60)
    after = tree.snapshot()
    assert set(after) - set(before) == {f"out/{temp.name}"}  # never out/a.wav
    assert all(after[p] == before[p] for p in before)
    size = temp.stat().st_size
    with wave.open(str(temp)) as w:  # the header was kept current: a valid, shorter WAV
        assert 3000 <= w.getnframes() <= (size - 44) // 2


# ---- conditioning -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("option", ["--cond", "--cond-frames"])
def test_non_finite_conditioning_is_refused(asan, tree, option, value):
    cond = np.zeros((1, 2, 64), np.float32)
    cond[0, 1, 10] = value
    cond.tofile(tree.root / "cond.f32")
    tree.run(asan / "wn_generate", "local", "-o", "out/a.wav", "--speaker", 1, option, "cond.f32", "-n", 64, "-q",
             code=1, message=f"{option} cond.f32 holds a non-finite value")


def test_non_finite_conditioning_is_refused_by_wn_score(asan, tree):
    np.zeros((1, 20), np.int64).tofile(tree.root / "t.i64")
    cond = np.zeros((1, 2, 20), np.float32)
    cond[0, 0, 3] = np.nan
    cond.tofile(tree.root / "cond.f32")
    tree.run(asan / "wn_score", "local", "--tokens", "t.i64", "--speaker", 0, "--cond", "cond.f32", code=1,
             message="--cond cond.f32 holds a non-finite value")
    np.zeros((1, 2, 2**20), np.float32)[:, :, :21].tofile(tree.root / "cond.f32")  # wrong size: before reading
    tree.run(asan / "wn_score", "local", "--tokens", "t.i64", "--speaker", 0, "--cond", "cond.f32", code=1,
             message="168 bytes, expected float32 (1, 2, 20) = 160 bytes")


# ---- hostile WAV input to wn_score (sanitizer build) --------------------------------------------------------
def _chunk(cid: bytes, payload: bytes, size: int | None = None) -> bytes:
    return cid + struct.pack("<I", len(payload) if size is None else size) + payload


def _fmt(fmt=1, channels=1, rate=16000, bits=16, align=None, size=16) -> bytes:
    align = channels * bits // 8 if align is None else align
    body = struct.pack("<HHIIHH", fmt, channels, rate, rate * align, align, bits)
    return _chunk(b"fmt ", body[:size], size)


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


PCM = np.arange(100, dtype="<i2").tobytes()
WAV_CASES = [  # (id, file bytes, message)
    ("empty", b"", "not a RIFF/WAVE file"),
    ("riff-only", b"RIFF\0\0\0\0", "not a RIFF/WAVE file"),
    ("truncated-data", _riff(_fmt(), _chunk(b"data", PCM, 400)), "truncated: chunk 'data' declares 400 bytes"),
    ("data-declares-4-gib", _riff(_fmt(), _chunk(b"data", PCM, 0xFFFFFFFF)), "declares 4294967295 bytes"),
    ("chunk-declares-4-gib", _riff(_chunk(b"LIST", b"", 0xFFFFFFFE), _fmt(), _chunk(b"data", PCM)), "truncated"),
    ("no-data-chunk", _riff(_fmt()), "missing fmt or data chunk"),
    ("data-before-fmt", _riff(_chunk(b"data", PCM), _fmt()), "data chunk before the fmt chunk"),
    ("short-fmt", _riff(_fmt(size=8), _chunk(b"data", PCM)), "fmt chunk of 8 bytes"),
    ("float-format", _riff(_fmt(fmt=3, bits=32), _chunk(b"data", PCM)), "only PCM WAV"),
    ("8-bit", _riff(_fmt(bits=8), _chunk(b"data", PCM)), "only 16-bit PCM"),
    ("zero-channels", _riff(_fmt(channels=0, align=2), _chunk(b"data", PCM)), "declares 0 channels"),
    ("align-mismatch", _riff(_fmt(channels=2, align=2), _chunk(b"data", PCM)), "block align 2"),
    ("odd-data", _riff(_fmt(), _chunk(b"data", PCM + b"\0")), "not a whole number of frames"),
    ("rate-zero", _riff(_fmt(rate=0), _chunk(b"data", PCM)), "sample rate 0 is out of range"),
    ("rate-mismatch", _riff(_fmt(rate=8000), _chunk(b"data", PCM)), "is 8000 Hz but the model expects 16000"),
    ("one-sample", _riff(_fmt(), _chunk(b"data", PCM[:2])), "at least 2 tokens"),
]


@pytest.mark.parametrize("name, data, message", WAV_CASES, ids=[c[0] for c in WAV_CASES])
def test_hostile_wav_is_one_clear_error(asan, tree, name, data, message):
    (tree.root / "in.wav").write_bytes(data)
    tree.run(asan / "wn_score", "plain", "--wav", "in.wav", code=1, message=message)


def test_huge_and_odd_wav_paths_are_refused_before_reading(asan, tree):
    with open(tree.root / "huge.wav", "wb") as f:  # sparse: 2 GiB declared by the file system, nothing read
        f.truncate(2 << 30)
    tree.run(asan / "wn_score", "plain", "--wav", "huge.wav", code=1, message="is 2.0 GiB, more than the host reads")
    tree.run(asan / "wn_score", "plain", "--wav", "out", code=1, message="it is a directory")
    tree.run(asan / "wn_score", "plain", "--wav", "missing.wav", code=1, message="No such file")


def test_valid_stereo_wav_is_scored(asan, tree):
    stereo = np.stack([np.arange(100), -np.arange(100)], 1).astype("<i2").tobytes()
    (tree.root / "in.wav").write_bytes(_riff(_fmt(channels=2), _chunk(b"data", stereo)))
    tree.run(asan / "wn_score", "plain", "--wav", "in.wav", code=0)


# ---- hostile token files to wn_score (sanitizer build) -------------------------------------------------------
TOKEN_CASES = [  # (id, file bytes, extra arguments, exit code, message)
    ("not-int64", b"\0" * 12, [], 1, "12 bytes is not int64 (batch=1, time)"),
    ("not-a-whole-batch", b"\0" * 24, ["--batch", 2], 1, "24 bytes is not int64 (batch=2, time)"),
    ("empty", b"", [], 1, "0 bytes is not int64"),
    ("one-token", np.zeros(1, np.int64).tobytes(), [], 1, "at least 2 tokens"),
    ("negative", np.array([-1, 0], np.int64).tobytes(), [], 1, "token -1 at index 0 is outside [0, 16)"),
    ("too-large", np.array([3, 16], np.int64).tobytes(), [], 1, "token 16 at index 1 is outside [0, 16)"),
    ("int64-min", np.array([1, -2**63], np.int64).tobytes(), [], 1, "is outside [0, 16)"),
    ("batch-4097", np.zeros(4097 * 2, np.int64).tobytes(), ["--batch", 4097], 2, "--batch must be <= 4096"),
    ("batch-2^62", np.zeros(2, np.int64).tobytes(), ["--batch", 2**62], 2, "--batch must be <= 4096"),
    ("batch-2^64", np.zeros(2, np.int64).tobytes(), ["--batch", 2**64], 2, "--batch needs an integer"),
]


@pytest.mark.parametrize("name, data, args, code, message", TOKEN_CASES, ids=[c[0] for c in TOKEN_CASES])
def test_hostile_tokens_are_one_clear_error(asan, tree, name, data, args, code, message):
    (tree.root / "t.i64").write_bytes(data)
    tree.run(asan / "wn_score", "plain", "--tokens", "t.i64", *args, code=code, message=message)


def test_huge_token_file_is_refused_before_reading(asan, tree):
    with open(tree.root / "t.i64", "wb") as f:
        f.truncate(3 << 30)
    tree.run(asan / "wn_score", "plain", "--tokens", "t.i64", code=1, message="is 3.0 GiB, more than the host reads")


# ---- seeded mutation fuzzing of the manifest reader ------------------------------------------------------------
FUZZ_CASES = 300  # manifests through wn_manifest_check; every FUZZ_RUN_EVERY-th also through wn_generate/wn_score
FUZZ_RUN_EVERY = 3
NUMBERS = [0, -1, 1, 2, 7, 2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1, 2**63, 2**64 + 5, -(2**63), 10**12, -(10**12),
           0.5, -0.0, 1e308, -1e308, 1e-320]
STRINGS = ["", "batch", "time-1", "batch+999999999", "batch-5", "x" * 5000, "float128", "int64", "ring", "replace",
           "../step.onnx", "/etc/passwd", "step.onnx/..", "sub/../step.onnx", "escape.onnx", "scoring.onnx",
           "step.onnx", "\u0000", "state", "token", "logits", "position"]
SHAPES = [[], [0], ["batch", 0, 4], ["batch", 2**31 - 1, 2**31 - 1], [-1], ["batch"] * 9, [1, 1], ["batch", 7, 4]]


def _nodes(value, path=()):
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, path + (i,))


def _set(root, path, value):
    parent = root
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value


def _mutate(manifest: dict, rng: random.Random) -> str:
    """1-3 mutations: delete, type swap, huge/negative/near numbers, strings and path tricks, shapes,
    duplicated entries, deep nesting; sometimes the text is cut short."""
    m = copy.deepcopy(manifest)
    for _ in range(rng.randint(1, 3)):
        nodes = [(p, v) for p, v in _nodes(m) if p]
        path, value = rng.choice(nodes)
        kind = rng.choice(["delete", "type", "number", "near", "string", "shape", "dup", "deep", "file"])
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "type":
            _set(m, path, rng.choice([None, True, "7", 1.5, [], {}, [1, 2], {"a": 1}]))
        elif kind == "number":
            _set(m, path, rng.choice(NUMBERS))
        elif kind == "near" and isinstance(value, int) and not isinstance(value, bool):
            _set(m, path, rng.choice([value - 1, value + 1, value * 2, value * 1000, -value, value + 2**31]))
        elif kind == "string":
            _set(m, path, rng.choice(STRINGS))
        elif kind == "shape":
            _set(m, path, copy.deepcopy(rng.choice(SHAPES)))
        elif kind == "dup" and isinstance(value, list) and value:
            value.append(copy.deepcopy(rng.choice(value)))
        elif kind == "deep":
            nested = 0
            for _ in range(rng.choice([31, 40, 5000])):
                nested = [nested]
            _set(m, path, nested)
        elif kind == "file":
            graph = m.get("graphs", {}).get("step") if isinstance(m.get("graphs"), dict) else None
            if isinstance(graph, dict):
                graph["file"] = rng.choice(["../outside/step.onnx", "/etc/passwd", "escape.onnx", "sub/../step.onnx",
                                            "./step.onnx", "step.onnx/", "", "s\tep.onnx"])
    text = json.dumps(m)
    if rng.random() < 0.05:
        text = text[: rng.randrange(len(text))]
    return text


@pytest.fixture
def deep_recursion():
    """json.dumps and deepcopy of the deeply nested mutations."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    yield
    sys.setrecursionlimit(limit)


def test_fuzzed_manifests_never_crash_a_reader(asan, tree, deep_recursion):
    _outside_copy(tree)
    (tree.root / "plain" / "escape.onnx").symlink_to("../outside/step.onnx")
    original = tree.manifest()
    rng = random.Random(14)
    outcomes = {0: 0, 1: 0}
    for i in range(FUZZ_CASES):
        text = _mutate(original, rng)
        tree.write_manifest(text)
        programs = _programs(asan, tree)
        if i % FUZZ_RUN_EVERY:
            programs = programs[:1]
        for exe, args, owns in programs:
            proc = subprocess.run([str(exe), *map(str, args)], cwd=tree.root, capture_output=True, text=True,
                                  timeout=120, env={**os.environ, **SANITIZER_ENV})
            assert proc.returncode in (0, 1), f"case {i}: {exe.name} exit {proc.returncode}\n{text[:2000]}\n" \
                                              f"{proc.stderr[-4000:]}"
            try:
                assert_outcome(proc, exe.name, proc.returncode)
            except AssertionError as e:
                raise AssertionError(f"case {i}: {e}\nmanifest: {text[:2000]}") from None
            if exe.name == "wn_manifest_check":
                outcomes[proc.returncode] += 1
            leftovers = [f"out/{p.name}" for p in (tree.root / "out").iterdir()
                         if f"out/{p.name}" not in owns or proc.returncode]
            assert not leftovers, f"case {i}: {exe.name} exit {proc.returncode} left {leftovers}"
            for p in (tree.root / "out").iterdir():
                p.unlink()
    print(f"\nfuzzed manifests: {outcomes[0]} accepted, {outcomes[1]} rejected with one line")
    assert outcomes[1] > FUZZ_CASES // 2  # the mutations do reach the checks


# ---- the native loop's plan file (sanitizer build) -------------------------------------------------------------
PLAN = "step.native.safetensors"


def _read_plan(path: Path) -> tuple[dict, list]:
    """(metadata, [[name, dtype, shape, bytes], …] in data order) of a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return meta, [[k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]] for k, v in entries]


def _plan_bytes(meta: dict, tensors: list, patch=None) -> bytes:
    """A safetensors file of these tensors (consistent offsets), the header then changed by `patch(header)`."""
    header, at = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(data)]}
        at += len(data)
    header["__metadata__"] = meta
    if patch is not None:
        patch(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def _tensor(tensors: list, name: str) -> list:
    return next(t for t in tensors if t[0] == name)


def _values(t: list, fn) -> None:
    """Replace tensor t's bytes by fn(its values as a writable array)."""
    dtype = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "F16": "<f2"}[t[1]]
    a = np.frombuffer(t[3], dtype).copy()
    fn(a)
    t[3] = a.tobytes()


def _drop(tensors: list, name: str) -> list:
    return [t for t in tensors if t[0] != name]


def _meta(**changes):
    def patch(h):
        for k, v in changes.items():
            if v is None:
                del h["__metadata__"][k]
            else:
                h["__metadata__"][k] = v
    return patch


def _entry(name: str, **changes):
    def patch(h):
        h[name].update(changes)
    return patch


# (id, build(metadata, tensors, original bytes) → file bytes, expected message)
PLAN_CASES = [
    ("empty", lambda m, t, raw: b"", "fewer than a safetensors header's 8"),
    ("header-size-2^64-1", lambda m, t, raw: b"\xff" * 8 + raw[8:], "its header declares 18446744073709551615 bytes"),
    ("header-size-beyond-file", lambda m, t, raw: struct.pack("<Q", len(raw)) + raw[8:], "its header declares"),
    ("header-size-2MiB", lambda m, t, raw: struct.pack("<Q", 2 << 20) + raw[8:] + b" " * (2 << 20),
     "the host reads at most 1.0 MiB of header"),
    ("header-not-json", lambda m, t, raw: struct.pack("<Q", 9) + b"{not json", "its header is not JSON"),
    ("header-a-list", lambda m, t, raw: struct.pack("<Q", 6) + b"[1, 2]", "not an object"),
    ("header-deep", lambda m, t, raw: _plan_bytes(m, t, lambda h: h.update(x=[[[[[[1]]]]]])), "nests deeper than 4"),
    ("truncated", lambda m, t, raw: raw[:-100], "outside the data section"),
    ("trailing-bytes", lambda m, t, raw: raw + b"\0" * 8, "8 bytes after the last tensor"),
    ("dtype-unknown", lambda m, t, raw: _plan_bytes(m, t, _entry("w_gate", dtype="Q8")), "has dtype \"Q8\""),
    ("dtype-number", lambda m, t, raw: _plan_bytes(m, t, _entry("w_gate", dtype=3)), "has dtype 3"),
    ("dtype-same-size-wrong", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", dtype="I32")),
     "tensor 'embed' is int32, expected float32"),
    ("shape-bytes-mismatch", lambda m, t, raw: _plan_bytes(m, t, lambda h: h["embed"]["shape"].__setitem__(0, 17)),
     "'embed' has 256 bytes of data but its shape (17, 4) of float32 needs 272"),
    ("shape-transposed", lambda m, t, raw: _plan_bytes(m, t, lambda h: h["embed"].update(shape=[4, 16])),
     "tensor 'embed' has shape (4, 16), expected (16, 4)"),
    ("shape-overflow", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", shape=[2**31 - 1] * 4)), "overflows"),
    ("shape-negative", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", shape=[-16, -4])), "outside [0,"),
    ("shape-float", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", shape=[16.0, 4])), "outside [0,"),
    ("shape-rank-9", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", shape=[1] * 9)), "rank > 8"),
    ("offsets-reversed", lambda m, t, raw: _plan_bytes(m, t, lambda h: h["embed"].update(
        data_offsets=h["embed"]["data_offsets"][::-1])), "outside the data section"),
    ("offsets-2^40", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", data_offsets=[0, 2**40])),
     "outside the data section"),
    ("offsets-2^64", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", data_offsets=[2**64, 2**64 + 4])),
     "outside the data section"),
    ("offsets-three", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", data_offsets=[0, 4, 8])),
     "not [begin, end]"),
    ("offsets-overlap", lambda m, t, raw: _plan_bytes(m, t, lambda h: h["alpha"].update(
        data_offsets=h["beta"]["data_offsets"])), "two tensors' data overlap"),
    ("entry-unknown-key", lambda m, t, raw: _plan_bytes(m, t, _entry("embed", strides=[4, 1])), "unknown key"),
    ("metadata-number", lambda m, t, raw: _plan_bytes(m, t, _meta(R=64)), "is 64, not a string"),
    ("metadata-a-list", lambda m, t, raw: _plan_bytes(m, t, lambda h: h.update(__metadata__=[])), "not an object"),
    ("tensor-missing", lambda m, t, raw: _plan_bytes(m, _drop(t, "w_skip")), "lacks the tensor 'w_skip'"),
    ("tensor-unknown", lambda m, t, raw: _plan_bytes(m, t + [["bogus", "F32", [1], b"\0" * 4]]),
     "unknown tensor 'bogus'"),
    ("tensor-not-taken", lambda m, t, raw: _plan_bytes(m, t + [["speaker_gate", "F32", [1, 18], b"\0" * 72]]),
     "a tensor 'speaker_gate' this graph does not take"),
    ("format-missing", lambda m, t, raw: _plan_bytes(m, t, _meta(format=None)), "its metadata lacks 'format'"),
    ("format-2", lambda m, t, raw: _plan_bytes(m, t, _meta(format="wn-native-loop/2")), "its format is not"),
    ("graph-other", lambda m, t, raw: _plan_bytes(m, t, _meta(graph="step.w16")), "derived from another graph"),
    ("graph-sha-other", lambda m, t, raw: _plan_bytes(m, t, _meta(graph_sha256="0" * 64)),
     "derived from another step.onnx"),
    ("weights-w16", lambda m, t, raw: _plan_bytes(m, t, _meta(weights="w16")),
     "tensor 'w_gate' is float32, expected float16"),
    ("weights-bf16", lambda m, t, raw: _plan_bytes(m, t, _meta(weights="bf16")), "neither fp32 nor w16"),
    ("dim-not-integer", lambda m, t, raw: _plan_bytes(m, t, _meta(R="4.0")), "R is not a decimal integer"),
    ("dim-negative", lambda m, t, raw: _plan_bytes(m, t, _meta(R="-4")), "R is not a decimal integer"),
    ("dim-11-digits", lambda m, t, raw: _plan_bytes(m, t, _meta(L="99999999999")), "L is not a decimal integer"),
    ("dim-2^31", lambda m, t, raw: _plan_bytes(m, t, _meta(S="2147483648")), "S = 2147483648 is outside"),
    ("dim-zero", lambda m, t, raw: _plan_bytes(m, t, _meta(G="0")), "G = 0 is outside [1,"),
    ("dim-P", lambda m, t, raw: _plan_bytes(m, t, _meta(P="5")), "P is not (kernel - 1) * R"),
    ("dim-layers", lambda m, t, raw: _plan_bytes(m, t, _meta(L="4")), "are not the graph's state"),
    ("dim-state-rows", lambda m, t, raw: _plan_bytes(m, t, _meta(state_rows="1000000")), "are not the graph's state"),
    ("dim-classes", lambda m, t, raw: _plan_bytes(m, t, _meta(Q="32", tokens="32")), "classes (Q = 32"),
    ("dim-cond", lambda m, t, raw: _plan_bytes(m, t, _meta(cond_channels="2")), "takes 2 conditioning channels"),
    ("nan-weight", lambda m, t, raw: (_values(_tensor(t, "w_gate"), lambda a: a.__setitem__(5, np.nan)),
                                      _plan_bytes(m, t))[1], "tensor 'w_gate' holds a non-finite value"),
    ("inf-scale", lambda m, t, raw: (_values(_tensor(t, "skip_scale"), lambda a: a.__setitem__(0, np.inf)),
                                     _plan_bytes(m, t))[1], "tensor 'skip_scale' holds a non-finite value"),
    ("ring-offset", lambda m, t, raw: (_values(_tensor(t, "ring_offset"), lambda a: a.__setitem__(2, a[2] + 1)),
                                       _plan_bytes(m, t))[1], "its ring 2 (4, 4) is not the manifest's (3, 4)"),
    ("ring-far-outside", lambda m, t, raw: (_values(_tensor(t, "ring_offset"), lambda a: a.__setitem__(0, 2**40)),
                                            _plan_bytes(m, t))[1], "is not the manifest's"),
]


def _write_plan(tree: Tree, data: bytes, export: str = "plain") -> None:
    """The plan file, and its sha256 in the manifest (so the content itself is what is checked)."""
    (tree.root / export / PLAN).write_bytes(data)
    m = tree.manifest(export)
    m["native_loops"]["step"]["sha256"] = hashlib.sha256(data).hexdigest()
    tree.write_manifest(m, export)


def test_the_plan_cases_start_from_a_valid_plan(asan, tree):
    """The control: the plan rebuilt by this test's writer is accepted, and the dimensions the messages name are
    the plain export's."""
    meta, tensors = _read_plan(tree.root / "plain" / PLAN)
    assert (meta["R"], meta["L"], meta["Q"]) == ("4", "3", "16")
    _write_plan(tree, _plan_bytes(meta, tensors))
    for exe, args, owns in _programs(asan, tree):
        tree.run(exe, *args, code=0, owns=owns)
    proc = subprocess.run([str(asan / "wn_generate"), "plain", "-o", "out/b.wav", "-n", "16"], cwd=tree.root,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **SANITIZER_ENV})
    assert proc.returncode == 0 and "native loop" in proc.stderr.splitlines()[0], proc.stderr


@pytest.mark.parametrize("name, build, message", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_hostile_plan_file_is_one_clear_error(asan, tree, name, build, message):
    """wn_generate and wn_manifest_check refuse it with one line; wn_score never reads it; --no-native steps the
    graph instead."""
    path = tree.root / "plain" / PLAN
    meta, tensors = _read_plan(path)
    _write_plan(tree, build(meta, tensors, path.read_bytes()))
    for exe, args, owns in _programs(asan, tree):
        tree.run(exe, *args, code=0 if exe.name == "wn_score" else 1, message=message, owns=owns)
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 16, "-q", "--no-native", code=0,
             owns=["out/a.wav"])


NATIVE_RECORD_CASES = [  # (id, mutation of the manifest's native_loops, expected message)
    ("section-a-list", lambda m: m.update(native_loops=[]), "'native_loops' must be an object, got a list"),
    ("entry-a-string", lambda m: m["native_loops"].update(step="x"), "must be an object, got \"x\""),
    ("file-dotdot", lambda m: m["native_loops"]["step"].update(file="../outside/" + PLAN), "has a '..' component"),
    ("file-absolute", lambda m: m["native_loops"]["step"].update(file="/etc/passwd"), "is an absolute path"),
    ("file-number", lambda m: m["native_loops"]["step"].update(file=3), "'file' must be a string, got 3"),
    ("file-missing", lambda m: m["native_loops"]["step"].update(file="gone.safetensors"), "is missing"),
    ("graph-unknown", lambda m: m["native_loops"].update(nope={**m["native_loops"]["step"], "graph": "nope"}),
     "is the plan of a graph the manifest does not have"),
    ("graph-scoring", lambda m: m["native_loops"].update(scoring={**m["native_loops"]["step"], "graph": "scoring"}),
     "graph 'scoring' is not a step graph with the ring state layout"),
    ("key-not-graph", lambda m: m["native_loops"]["step"].update(graph="scoring"), "keyed by the graph"),
    ("format-unknown", lambda m: m["native_loops"]["step"].update(format="wn-native-loop/9"),
     "unsupported plan format 'wn-native-loop/9'"),
    ("sha-other", lambda m: m["native_loops"]["step"].update(sha256="0" * 64),
     "step.native.safetensors does not match the manifest's sha256"),
    ("graph-sha-other", lambda m: m["native_loops"]["step"].update(graph_sha256="0" * 64),
     "was derived from another step.onnx than the manifest's"),
]


@pytest.mark.parametrize("name, mutate, message", NATIVE_RECORD_CASES, ids=[c[0] for c in NATIVE_RECORD_CASES])
def test_hostile_native_loop_record_is_one_clear_error(asan, tree, name, mutate, message):
    _outside_copy(tree)
    shutil.copy(tree.root / "plain" / PLAN, tree.root / "outside" / PLAN)  # a valid plan outside the directory
    m = tree.manifest()
    mutate(m)
    tree.write_manifest(m)
    for exe, args, _ in _programs(asan, tree):
        tree.run(exe, *args, code=1, message=message)


def test_plan_files_that_are_not_regular_files_are_refused(asan, tree):
    plan = tree.root / "plain" / PLAN
    plan.unlink()
    plan.symlink_to("/dev/zero")  # resolves outside the directory
    tree.run(asan / "wn_manifest_check", "plain", code=1, message="resolves outside the export directory")
    plan.unlink()
    os.mkfifo(plan)  # never opened: it would block
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 8, "-q", code=1, message="is missing")
    plan.unlink()
    with open(plan, "wb") as f:  # sparse: 5 GiB declared, refused before its header is read
        f.truncate(5 << 30)
    tree.run(asan / "wn_manifest_check", "plain", "--no-verify", code=1,
             message="it is 5.0 GiB, more than the host reads (4.0 GiB, wn::limits::kMaxPlanBytes)")


def test_native_loop_failure_leaves_nothing(asan, tree):
    """Finite weights that overflow: the first block's logits are not finite; the outputs' temporary files are
    removed."""
    path = tree.root / "plain" / PLAN
    meta, tensors = _read_plan(path)
    for t in tensors:
        if t[1] == "F32" and t[0] not in ("alpha", "beta"):
            _values(t, lambda a: a.__setitem__(slice(None), 1e30))
    _write_plan(tree, _plan_bytes(meta, tensors))
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "--batch", 2, "--tokens", "out/t.i64", "-n", 64,
             "-q", code=1, message="the native loop produced NaN or infinite logits")


PLAN_FUZZ_CASES = 80  # mutated plans through wn_manifest_check; every PLAN_FUZZ_RUN_EVERY-th also wn_generate
PLAN_FUZZ_RUN_EVERY = 4


def _mutate_plan(raw: bytes, rng: random.Random) -> bytes:
    """Byte flips in the header or the data, numbers of the header's JSON replaced, cuts, inserted bytes."""
    n = struct.unpack("<Q", raw[:8])[0]
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["header-byte", "data-byte", "number", "cut", "insert", "size"])
        n = min(n, max(0, len(data) - 8))  # after a cut
        if kind == "header-byte" and n > 0:
            data[rng.randrange(8, 8 + n)] = rng.randrange(256)
        elif kind == "data-byte" and len(data) > 8 + n:
            data[rng.randrange(8 + n, len(data))] = rng.randrange(256)
        elif kind == "number":
            text = data[8:8 + n].decode("utf-8", "replace")
            numbers = [m for m in re.finditer(r"-?\d+", text)]
            if numbers:
                m = rng.choice(numbers)
                value = str(rng.choice([0, -1, 1, 2**31, 2**32 + 3, 2**63, 2**64 + 1, int(m.group()) + 1,
                                        int(m.group()) * 3, 10**30]))
                text = text[:m.start()] + value + text[m.end():]
                header = text.encode()
                data = bytearray(struct.pack("<Q", len(header)) + header + bytes(data[8 + n:]))
                n = len(header)
        elif kind == "cut" and data:
            data = data[:rng.randrange(len(data))]
        elif kind == "insert" and data:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == "size" and len(data) >= 8:
            data[:8] = struct.pack("<Q", rng.choice([0, 1, max(0, n - 1), n + 1, n + 8, 2**32, 2**63]))
    return bytes(data)


def test_fuzzed_plan_files_never_crash_a_reader(asan, tree):
    original = (tree.root / "plain" / PLAN).read_bytes()
    rng = random.Random(21)
    outcomes = {0: 0, 1: 0}
    for i in range(PLAN_FUZZ_CASES):
        data = _mutate_plan(original, rng)
        _write_plan(tree, data)
        programs = [(asan / "wn_manifest_check", ["plain", "-q"], ())]
        if i % PLAN_FUZZ_RUN_EVERY == 0:
            programs.append((asan / "wn_generate", ["plain", "-o", "out/a.wav", "-n", 16, "-q"], ("out/a.wav",)))
        for exe, args, owns in programs:
            proc = subprocess.run([str(exe), *map(str, args)], cwd=tree.root, capture_output=True, text=True,
                                  timeout=120, env={**os.environ, **SANITIZER_ENV})
            try:
                assert_outcome(proc, exe.name, proc.returncode)
                assert proc.returncode in (0, 1)
            except AssertionError as e:
                raise AssertionError(f"case {i}: {e}") from None
            if exe.name == "wn_manifest_check":
                outcomes[proc.returncode] += 1
            for p in (tree.root / "out").iterdir():
                assert proc.returncode == 0 and f"out/{p.name}" in owns, f"case {i}: {exe.name} left {p.name}"
                p.unlink()
    print(f"\nfuzzed plans: {outcomes[0]} accepted, {outcomes[1]} rejected with one line")
    assert outcomes[1] > PLAN_FUZZ_CASES // 2  # the mutations do reach the checks


# ---- what a run asks for: options that cannot apply, buffers beyond the limits, plans beyond the files' -----------
MISUSE_CASES = [  # (id, arguments after EXPORT_DIR, exit code, message)
    ("split-with-no-native", ["--split", "rows", "--no-native"], 2,
     "--split rows shares the native loop's steps, but it does not run here (--no-native)"),
    ("split-with-tensorrt", ["--split", "alone", "--backend", "tensorrt"], 2, "(the tensorrt backend)"),
    ("cuda-graph-with-onnxruntime", ["--cuda-graph"], 2, "--cuda-graph is a TensorRT option"),
    ("engine-with-onnxruntime", ["--engine", "plain/step.onnx"], 2, "--engine is a TensorRT option"),
    ("device-with-onnxruntime", ["--device", 1], 2, "--device is a TensorRT option"),
]


@pytest.mark.parametrize("name, args, code, message", MISUSE_CASES, ids=[c[0] for c in MISUSE_CASES])
def test_an_option_that_cannot_apply_is_refused_not_ignored(asan, tree, name, args, code, message):
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 8, "-q", *args, code=code, message=message)


def test_split_without_a_plan_is_refused(asan, tree):
    m = tree.manifest()
    del m["native_loops"]
    tree.write_manifest(m)
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 8, "--split", "pipeline", code=2,
             message="the manifest has no native loop plan for graph 'step'")
    tree.run(asan / "wn_generate", "plain", "-o", "out/a.wav", "-n", 8, "-q", "--split", "auto", code=0,
             owns=["out/a.wav"])


def _address_space(limit: int):
    """preexec_fn: the child may map at most `limit` bytes, so an allocation beyond the host's checks fails at once
    (std::bad_alloc: "out of memory") instead of taking the machine's memory. Release build only: the sanitizers
    reserve terabytes of address space."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _wide_head_plan(tree: Tree, H: int) -> None:
    """The plain export's plan with a head of H hidden units (zeros, sparse: head_w1, head_b1, head_w2 grow, ≈84·H
    bytes): consistent in itself, and H is no dimension of the manifest, so it is a valid plan whose loop needs
    B·H floats of scratch per step."""
    meta, tensors = _read_plan(tree.root / "plain" / PLAN)
    meta = {**meta, "H": str(H)}
    S, Q = int(meta["S"]), int(meta["Q"])
    wide = {"head_w1": [-(-H // 16), S, 16], "head_b1": [H], "head_w2": [-(-Q // 16), H, 16]}
    header, at, blobs = {}, 0, []
    for name, dtype, shape, data in tensors:
        if name in wide:
            shape, data = wide[name], None
        size = len(data) if data is not None else 4 * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + size]}
        blobs.append((data, size))
        at += size
    header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tree.root / "plain" / PLAN
    digest = hashlib.sha256(struct.pack("<Q", len(text)) + text)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for data, size in blobs:
            if data is None:
                f.seek(size, os.SEEK_CUR)
                for _ in range(size // (1 << 20)):
                    digest.update(bytes(1 << 20))
                digest.update(bytes(size % (1 << 20)))
            else:
                f.write(data)
                digest.update(data)
        f.truncate(f.tell())
    m = tree.manifest()
    m["native_loops"]["step"]["sha256"] = digest.hexdigest()
    tree.write_manifest(m)


def test_a_plan_whose_loop_needs_gigabytes_per_step_is_refused_before_allocating(host, tree):
    """A 66 MB plan with a head of 786,432 hidden units runs at batch 1; at batch 4096 its loop would need 12 GiB
    of scratch per step: refused by the size check (not by the allocator) before any file is created."""
    _wide_head_plan(tree, 3 << 18)
    tree.run(host / "wn_generate", "plain", "-o", "out/a.wav", "-n", 2, "-q", code=0, owns=["out/a.wav"],
             preexec_fn=_address_space(4 << 30))
    tree.run(host / "wn_generate", "plain", "-o", "out/a.wav", "-n", 2, "--batch", 4096, "-q", code=1,
             message="the native loop's buffers need 12.0 GiB for 4096 streams", preexec_fn=_address_space(4 << 30))
    tree.run(host / "wn_manifest_check", "plain", "--batch", 4096, code=1,
             message="the native loop's buffers need 12.0 GiB for 4096 streams")


@pytest.mark.parametrize("args, message", [
    (["--no-native"], "the chunk buffer of 16 streams x 100000000 samples needs 11.9 GiB"),
    ([], "the native loop's buffers need 35.8 GiB for 16 streams in chunks of 100000000 samples"),
], ids=["per-step", "native"])
def test_a_chunk_beyond_the_memory_limit_is_refused_before_allocating(host, tree, args, message):
    tree.run(host / "wn_generate", "plain", "-o", "out/a.wav", "-n", 10**8, "--chunk", 10**8, "--batch", 16, "-q",
             *args, code=1, message=message, preexec_fn=_address_space(4 << 30))


def test_a_terabyte_plan_is_refused_before_it_is_hashed(asan, tree):
    """A sparse file costs nothing to make; hashing 1 TiB would take the reader an hour."""
    with open(tree.root / "plain" / PLAN, "r+b") as f:
        f.truncate(1 << 40)
    for exe, args, _ in _programs(asan, tree)[:2]:
        tree.run(exe, *args, code=1, timeout=60,
                 message="file step.native.safetensors: it is 1.0 TiB, more than the host reads (4.0 GiB")
