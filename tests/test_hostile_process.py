"""Hostile and careless use that needs real processes: the installed entry point's error path, files that
block or never end, SIGTERM and SIGKILL in the middle of a write, and concurrent writers of one export
directory (`contract/lock.py`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reference_model import WaveNetConfig, save_checkpoint
from tests.conftest import random_model
from tests.hostile_tools import assert_one_line_error, tree, tree_diff
from wn_export.contract.lock import LOCK_NAME, export_lock
from wn_export.contract.manifest import read_manifest, sha256

CONFIG = dict(quantization_channels=16, residual_channels=4, gate_channels=8, skip_channels=4, kernel_size=2,
              layers=4, stacks=2)


def _start(*args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wn_export.cli", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _wait_for(proc: subprocess.Popen, fragment: str) -> list[str]:
    """Read the process's stderr until a line containing `fragment` → the lines read."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if fragment in line:
            return lines
    raise AssertionError(f"{fragment!r} never appeared on stderr: {''.join(lines)}")


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _debris(root: Path) -> list[str]:
    """Staging directories, temporary and partial files and lock files anywhere under root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if ".staging-" in p.name or p.name.endswith((".tmp", ".partial")) or p.name == LOCK_NAME)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("proc") / "m.safetensors"
    save_checkpoint(random_model(WaveNetConfig(**CONFIG), seed=1), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint) -> Path:
    """An fp32 + fp16 export, copied by the tests that change it."""
    d = tmp_path_factory.mktemp("proc-export") / "exp"
    proc = _start("onnx", "-c", checkpoint, "-o", d, "--fp16", cwd=d.parent)
    assert _finish(proc)[0] == 0
    return d


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_entry_point_errors_are_one_line(tmp_path, exported):
    """Through `python -m wn_export.cli`: blocking and endless files, bad options — one line each, nothing
    written, nothing blocks (every case runs at once; a blocked one would hit the timeout)."""
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    os.mkfifo(blocked / "manifest.json")
    cases = {
        "config /dev/zero": (["init", "--config", "/dev/zero", "-o", tmp_path / "m.safetensors"], "regular file"),
        "config FIFO": (["init", "--config", fifo, "-o", tmp_path / "m.safetensors"], "regular file"),
        "manifest FIFO": (["inspect", blocked], "manifest"),
        "hparams FIFO": (["import", "r9y9", exported / "step.onnx", "--hparams", fifo, "-o", tmp_path / "m.pth"],
                         "regular file"),
        "temperature nan": (["generate", exported, "-n", 4, "-o", tmp_path / "o.wav", "--temperature", "nan"],
                            "temperature"),
        "seed -1": (["parity", exported, "--seed", "-1"], "seed"),
    }
    before = tree(tmp_path)
    procs = {name: _start(*args, cwd=tmp_path) for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        code, err = _finish(proc, timeout=120)
        assert_one_line_error(code, err, cases[name][1])
    assert tree_diff(before, tree(tmp_path)) == []


def test_sigterm_during_export_leaves_nothing(tmp_path, checkpoint, exported):
    """SIGTERM is handled like Ctrl-C: the staging directory and the lock go, a new directory is not
    created, an existing one is untouched."""
    fresh = tmp_path / "fresh"
    old = _copy(exported, tmp_path / "old")
    before = tree(tmp_path)
    for d in (fresh, old):
        proc = _start("onnx", "-c", checkpoint, "-o", d, "--fp16", cwd=tmp_path)
        _wait_for(proc, "exporting")
        proc.send_signal(signal.SIGTERM)
        code, err = _finish(proc)
        assert code != 0 and "Aborted" in err and "Traceback" not in err, err
    assert tree_diff(before, tree(tmp_path)) == []


def test_sigkill_debris_is_removed_by_the_next_export(tmp_path, checkpoint):
    d = tmp_path / "exp"
    proc = _start("onnx", "-c", checkpoint, "-o", d, "--fp16", cwd=tmp_path)
    _wait_for(proc, "exporting")
    proc.kill()
    proc.wait()
    assert _debris(tmp_path), "a killed export leaves its staging directory (and the lock file)"
    code, err = _finish(_start("onnx", "-c", checkpoint, "-o", d, cwd=tmp_path))
    assert code == 0, err
    assert _debris(tmp_path) == []
    assert sorted(read_manifest(d).graphs) == ["scoring", "step"]


def test_a_second_writer_waits_for_the_lock(tmp_path, checkpoint, exported):
    """While the directory is locked, `onnx` and `trt` wait and say so once; after a timeout they fail
    with one line and change nothing."""
    d = _copy(exported, tmp_path / "exp")
    with export_lock(d):
        before = tree(tmp_path)
        code, err = _finish(_start("trt", d, "--compute-capability", "8.6", cwd=tmp_path,
                                   env={"WN_EXPORT_LOCK_TIMEOUT": "2"}))
        waiting, failed = err.splitlines()
        assert code == 1 and "waiting for another wn-export" in waiting, err
        assert failed.startswith("Error: ") and "still being written" in failed
        assert tree_diff(before, tree(tmp_path)) == []
        proc = _start("onnx", "-c", checkpoint, "-o", d, cwd=tmp_path)
        waited = _wait_for(proc, "waiting for another wn-export")
        assert f"(pid {os.getpid()})" in waited[-1]
    code, err = _finish(proc)
    assert code == 0 and "waiting for" not in err, err  # said once
    assert sorted(read_manifest(d).graphs) == ["scoring", "step"] and _debris(tmp_path) == []


def test_concurrent_exports_and_engine_builds_end_consistent(tmp_path, checkpoint, exported):
    """Two `onnx` into one directory, then `trt` and `trt --fp16` together: every run succeeds, the
    manifest records every engine and every recorded file matches its sha256, nothing is left over."""
    d = tmp_path / "exp"
    runs = [_start("onnx", "-c", checkpoint, "-o", d, *flags, cwd=tmp_path) for flags in (["--fp16"], [])]
    for proc in runs:
        code, err = _finish(proc)
        assert code == 0, err
    m = read_manifest(d)  # verifies every graph's sha256
    assert set(m.graphs) in ({"scoring", "step"}, {"scoring", "step", "scoring.fp16", "step.fp16"})
    d = _copy(exported, tmp_path / "both")
    runs = [_start("trt", d, *flags, "--compute-capability", "8.6", cwd=tmp_path) for flags in (["--fp16"], [])]
    for proc in runs:
        code, err = _finish(proc)
        assert code == 0, err
    engines = json.loads((d / "manifest.json").read_text())["engines"]
    assert set(engines) == {"scoring", "step", "scoring.fp16", "step.fp16"}
    assert all(sha256(d / e["file"]) == e["sha256"] for e in engines.values())
    assert sorted(p.name for p in d.glob("*.engine")) == sorted(e["file"] for e in engines.values())
    assert _debris(tmp_path) == []


def test_killed_engine_build_never_leaves_a_recorded_engine_changed(tmp_path, exported):
    """SIGKILL between two engines: the first is recorded with its bytes, the second is not recorded;
    the next run removes the partial engine and records both."""
    d = _copy(exported, tmp_path / "exp")
    proc = _start("trt", d, "--compute-capability", "8.6", cwd=tmp_path)
    _wait_for(proc, "[2/2] building")
    proc.kill()
    proc.wait()
    engines = json.loads((d / "manifest.json").read_text()).get("engines", {})
    assert set(engines) == {"scoring"}
    assert all(sha256(d / e["file"]) == e["sha256"] for e in engines.values())
    code, err = _finish(_start("trt", d, "--compute-capability", "8.6", cwd=tmp_path))
    assert code == 0, err
    engines = json.loads((d / "manifest.json").read_text())["engines"]
    assert set(engines) == {"scoring", "step"}
    assert sorted(p.name for p in d.glob("*.engine")) == sorted(e["file"] for e in engines.values())
    assert _debris(tmp_path) == []
