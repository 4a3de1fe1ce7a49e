"""The CLI through click's runner: init, info, and user errors (non-zero exit, one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from click.testing import CliRunner

from reference_model import load_checkpoint
from tests.conftest import CONFIGS
from wn_export.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def _assert_user_error(result, message):
    assert result.exit_code != 0, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_init_and_info(tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(CONFIGS["conditioned"].to_json())
    out = tmp_path / "m.safetensors"
    r = _run("init", "--config", cfg_path, "-o", out, "--seed", 3)
    assert r.exit_code == 0, r.output
    assert "receptive field 13 samples" in r.output
    assert load_checkpoint(out).cfg == CONFIGS["conditioned"]
    r2 = _run("init", "--config", cfg_path, "-o", tmp_path / "m2.safetensors", "--seed", 3)
    assert r2.exit_code == 0, r2.output
    a, b = load_checkpoint(out).state_dict(), load_checkpoint(tmp_path / "m2.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded (bytes differ: metadata is a hash map)
    assert _run("init", "--config", cfg_path, "-o", tmp_path / "m3.safetensors", "--seed", 4).exit_code == 0
    c = load_checkpoint(tmp_path / "m3.safetensors").state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)

    r = _run("info", out)
    assert r.exit_code == 0, r.output
    assert "receptive field      13" in r.output and "3 speakers" in r.output
    n_params = sum(p.numel() for p in load_checkpoint(out).parameters())
    assert f"parameters           {n_params:,}" in r.output


def test_user_errors(tmp_path):
    _assert_user_error(_run("info", tmp_path / "none.safetensors"), "does not exist")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    _assert_user_error(_run("info", bad), "not a readable safetensors")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps({"gate_channels": 3}))
    _assert_user_error(_run("init", "--config", cfg_path, "-o", tmp_path / "o.safetensors"),
                       "gate_channels must be even")
    assert not (tmp_path / "o.safetensors").exists()
    _assert_user_error(_run("init", "--config", tmp_path / "nope.json", "-o", tmp_path / "o.safetensors"),
                       "cannot read config")


def test_help_works_without_heavy_backends():
    # --help must not import onnxruntime, tensorrt or torch
    code = ("import sys, cli; from click.testing import CliRunner; r = CliRunner().invoke(cli.main, ['--help']);"
            "assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('onnxruntime', 'tensorrt', 'tensorrt_rtx_bindings', 'torch') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
