"""The package as users get it: a host without torch, and a wheel installed outside the source tree.

- `wn_export.contract` and the ONNX Runtime backend import, read a manifest and generate with torch
  blocked (a host that only runs ONNX Runtime must not need it).
- A wheel built from this tree, installed into a fresh virtual environment away from the source tree,
  carries the native library's sources, compiles them into an empty cache and runs the fused session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from reference_model import WaveNetConfig, save_checkpoint
from wn_export.export.pipeline import export_directory

ROOT = Path(__file__).resolve().parents[1]
CFG = WaveNetConfig(quantization_channels=32, residual_channels=8, gate_channels=12, skip_channels=10,
                    kernel_size=2, layers=4, stacks=2)

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    import torch

    from reference_model import WaveNet

    root = tmp_path_factory.mktemp("pkg")
    torch.manual_seed(0)
    model = WaveNet(CFG).eval()
    save_checkpoint(model, root / "m.safetensors")
    export_directory(root / "export", root / "m.safetensors")
    return root / "export"


def _run(python: str, code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env or dict(os.environ))


def test_host_runs_without_torch(export, tmp_path):
    code = BLOCK_TORCH + f"""
import wn_export.contract, wn_export.backends.onnxruntime
from wn_export.contract import read_manifest
from wn_export.generation import open_generator
m = read_manifest({str(export)!r})
assert m.graph("step").feed.name == "token" and m.config.layers == {CFG.layers}
with open_generator({str(export)!r}) as gen:
    tokens = gen.generate(40, 2, seed=3)
assert tokens.shape == (2, 40)
assert "torch" not in sys.modules
print("ok", tokens[:, :5].tolist())
"""
    proc = _run(sys.executable, code, tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    # the block works: importing the exporter (which needs torch) fails in the same interpreter setup
    proc = _run(sys.executable, BLOCK_TORCH + "import wn_export.export.pipeline", tmp_path)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return next(out.glob("wn_export-*.whl"))


def test_wheel_ships_the_native_sources_and_no_top_level_cli(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    from wn_export.backends.onnxruntime.native import HEADERS, SOURCES

    for name in (*SOURCES, *HEADERS, "third_party/onnxruntime/onnxruntime_c_api.h"):
        assert f"wn_export/_plugins/ort/{name}" in names
    assert "cli.py" not in names and "wn_export/cli.py" in names  # no top-level `cli` module in site-packages
    assert "wn_export/inspect.py" not in names  # no module shadowing the standard library's name
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    base = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any("matplotlib" in line for line in base)  # the main job's plot needs no extra
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "wn-export = wn_export.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_wheel_runs_the_fused_path(wheel, export, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # the dependencies come from this environment's site-packages (appended after the wheel's own)
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = dict(os.environ, WN_EXPORT_CACHE=str(tmp_path / "cache"))  # compile from the wheel's sources
    env.pop("WN_EXPORT_PLUGINS", None)
    code = f"""
import json, wn_export
from wn_export.generation import open_generator
with open_generator({str(export)!r}) as gen:
    gen.generate(20, 1, seed=1)
    print(json.dumps({{"package": wn_export.__file__, "fused": gen.runner.is_fused, "setup": gen.runner.setup}}))
"""
    proc = _run(python, code, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(env_dir) in facts["package"] and str(ROOT) not in facts["package"]
    assert facts["fused"], facts["setup"]
    assert list((tmp_path / "cache").glob("ort_ops/*/libwn_ort_ops.so"))
    # the console script is the package's, and the main job runs from it on the fused path
    proc = subprocess.run([str(env_dir / "bin" / "wn-export"), "inspect", str(export)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "step" in proc.stdout, proc.stderr
    proc = subprocess.run([str(env_dir / "bin" / "wn-export"), "demo", "-c", str(export.parent / "m.safetensors"),
                           "-o", str(tmp_path / "demo")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "host: onnxruntime: fused layer chain" in proc.stdout and (tmp_path / "demo" / "demo.wav").is_file()
