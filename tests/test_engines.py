"""`wn-export trt`: real FP16 and FP32 engines built ahead of time on the CPU with TensorRT-RTX,
checked against the manifest; TensorRT runners on a GPU (marked `gpu`, skipped without one)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import CONFIGS
from wn_export.backends.tensorrt.engines import DEFAULT_BATCH, DEFAULT_TIME
from wn_export.contract.manifest import read_manifest, sha256
from wn_export.errors import BackendError
from wn_export.export.pipeline import export_directory

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is installed by scripts/setup.sh (extra rtx)")


def _trt(*args):
    return CliRunner().invoke(main, ["trt", *map(str, args)])


def _check_engines(directory, precision, batch, time=None):
    m = read_manifest(directory)
    engines = {k: e.data for k, e in m.engines.items() if e.precision == precision}
    assert set(engines) == {n for n, g in m.graphs.items() if g.precision == precision}
    for name, e in engines.items():
        g = m.graph(name)
        path = directory / e["file"]
        assert path.stat().st_size > 1000 and sha256(path) == e["sha256"]
        assert e["onnx"] == g.path.name and e["backend"] == "tensorrt-rtx" and e["version"]
        io = {t["name"]: t for t in e["io"]}
        for mode, tensors in (("input", g.inputs), ("output", g.outputs)):
            for t in tensors:
                assert io[t.name]["mode"] == mode and io[t.name]["dtype"] == t.dtype
                assert [d if isinstance(d, int) else -1 for d in t.shape] == io[t.name]["shape"], t
        (profile,) = e["profiles"]
        b = batch or DEFAULT_BATCH[g.kind]
        for t in g.inputs:
            p = profile[t.name]
            if "batch" in t.shape:
                assert (p["min"][0], p["opt"][0], p["max"][0]) == (b.min, b.opt, b.max)
            if "time" in t.shape:
                tr = time or DEFAULT_TIME
                assert (p["min"][-1], p["opt"][-1], p["max"][-1]) == (tr.min, tr.opt, tr.max)
    return engines


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo") / "export"
    export_directory(d, fp16=True)
    return d


def test_demo_fp16_and_fp32_engines(demo_export):
    r = _trt(demo_export, "--fp16", "--compute-capability", "8.6")
    assert r.exit_code == 0, r.output
    engines = _check_engines(demo_export, "fp16", None)
    assert all(e["compute_capability"] == ["86"] for e in engines.values())
    assert {t["dtype"] for t in engines["step.fp16"]["io"] if t["name"] == "state"} == {"float16"}
    r = _trt(demo_export, "--batch", "1,2,16", "--time", "2,1000,8000")
    assert r.exit_code == 0, r.output
    from wn_export.backends.tensorrt.engines import Range

    _check_engines(demo_export, "fp32", Range(1, 2, 16), Range(2, 1000, 8000))
    assert set(json.loads((demo_export / "manifest.json").read_text())["engines"]) == {
        "scoring", "step", "scoring.fp16", "step.fp16"}  # the fp16 entries survived the fp32 build
    r = CliRunner().invoke(main, ["inspect", str(demo_export)])
    file = read_manifest(demo_export).engine("step.fp16").file
    assert re.fullmatch(r"step\.fp16\.[0-9a-f]{16}\.engine", file)  # named by its content: never rewritten
    assert f"engine step.fp16: {file} (tensorrt-rtx" in r.output
    assert sorted(p.name for p in demo_export.glob("*.engine")) == sorted(
        e["file"] for e in json.loads((demo_export / "manifest.json").read_text())["engines"].values())


def test_conditioned_config_engines(tmp_path, checkpoint_factory):
    d = tmp_path / "d"
    export_directory(d, checkpoint_factory(CONFIGS["conditioned"]), fp16=True)
    for flags in (["--fp16"], []):
        r = _trt(d, *flags, "--time", "2,64,512")
        assert r.exit_code == 0, r.output
    from wn_export.backends.tensorrt.engines import Range

    _check_engines(d, "fp16", None, Range(2, 64, 512))
    engines = _check_engines(d, "fp32", None, Range(2, 64, 512))
    assert "upsample" in engines
    frames = engines["upsample"]["profiles"][0]["cond"]
    assert (frames["min"][-1], frames["max"][-1]) == (1, 128)  # time 512 / hop 4


def test_trt_errors(tmp_path, checkpoint_factory):
    r = _trt(tmp_path / "missing")
    assert r.exit_code != 0 and "does not exist" in r.output
    d = tmp_path / "d"
    export_directory(d, checkpoint_factory(CONFIGS["k2"]))
    r = _trt(d, "--fp16")
    assert r.exit_code != 0 and "no fp16 graphs" in r.output and "wn-export onnx --fp16" in r.output
    r = _trt(d, "--batch", "4,2,8")
    assert r.exit_code != 0 and "MIN <= OPT <= MAX" in r.output
    r = _trt(d, "--batch", "x")
    assert r.exit_code != 0 and "MIN,OPT,MAX integers" in r.output
    r = _trt(d, "--backend", "tensorrt")
    assert r.exit_code != 0 and "tensorrt is not usable" in r.output and "Traceback" not in r.output
    r = _trt(d, "--compute-capability", "9.9")
    assert r.exit_code != 0 and "not a TensorRT-RTX target" in r.output
    assert not list(d.glob("*.engine")) and "engines" not in json.loads((d / "manifest.json").read_text())


def test_trt_runners_without_gpu_fail_clearly(demo_export):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the no-GPU message")
    from wn_export.backends import open_step

    if "step.fp16" not in read_manifest(demo_export).data.get("engines", {}):
        assert _trt(demo_export, "--fp16").exit_code == 0
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        with open_step(read_manifest(demo_export), "tensorrt", "step.fp16"):
            pass
    r = CliRunner().invoke(main, ["parity", str(demo_export), "--backend", "tensorrt"])
    assert r.exit_code != 0 and "needs a CUDA GPU" in r.output


@pytest.mark.gpu
def test_parity_on_tensorrt(demo_export):
    for flags in (["--fp16"], []):
        assert _trt(demo_export, *flags).exit_code == 0
    from wn_export.parity.harness import run_parity

    report = run_parity(demo_export, "tensorrt")
    assert report, [c for c in report.checks if not c]


@pytest.mark.gpu
def test_tensorrt_step_generation_matches_onnxruntime(demo_export):
    assert _trt(demo_export).exit_code == 0
    from wn_export.backends import open_step
    from wn_export.generation.loop import generate

    m = read_manifest(demo_export)
    with open_step(m, "tensorrt", "step") as trt_runner:
        got = generate(trt_runner, 500, 2, seed=3)
    with open_step(m, "onnxruntime", "step") as ort_runner:
        want = generate(ort_runner, 500, 2, seed=3)
    assert np.array_equal(got, want)
