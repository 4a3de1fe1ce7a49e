"""The parity harness: passes on honest exports, fails on corrupted ones, clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from cli import main
from tests.conftest import CONFIGS
from wn_export.contract.manifest import read_manifest, sha256
from wn_export.errors import ArtifactError, BackendError
from wn_export.export.pipeline import export_directory
from wn_export.parity.harness import TOLERANCES, judge, logit_metrics, run_parity


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from reference_model import save_checkpoint
    from tests.conftest import random_model

    root = tmp_path_factory.mktemp("parity")
    out = {}
    for name in ("k3-odd", "conditioned"):
        ckpt = root / f"{name}.safetensors"
        save_checkpoint(random_model(CONFIGS[name]), ckpt)
        export_directory(root / name, ckpt, fp16=True, w16=True)
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["k3-odd", "conditioned"])
def test_parity_passes_on_random_configs(exported, name):
    report = run_parity(exported[name], generation_samples=2000)
    assert report, [c for c in report.checks if not c]
    names = {(c.name, c.graph) for c in report.checks}
    for graph in ("scoring", "scoring.fp16"):
        assert {("scoring/speech/b1", graph), ("scoring/random/b3", graph)} <= names
    for graph in ("step", "step.fp16"):
        assert {("step/speech/b2/vs-reference", graph), ("step/speech/b2/vs-scoring", graph),
                ("step/generation", graph)} <= names
    gen32 = next(c for c in report.checks if c.name == "step/generation" and c.graph == "step")
    assert gen32.metrics["first_divergence"] == -1 and gen32.metrics["samples"] == 2000
    w16 = {c.name: c for c in report.checks if c.graph == "step.w16"}  # judged by its own row of TOLERANCES
    assert {"step/speech/b2/vs-reference", "step/random/b3/vs-reference", "step/generation"} <= set(w16)
    assert all(c.precision == "w16" for c in w16.values())
    assert 0 < w16["step/random/b3/vs-reference"].metrics["max_abs"] <= TOLERANCES["w16"].max_abs
    scored16 = {c.name: c for c in report.checks if c.graph == "scoring.w16"}  # Δ log p judged by the w16 row
    assert {"scoring/speech/b1", "scoring/random/b3"} <= set(scored16)
    assert all(c.precision == "w16" and 0 < c.metrics["ll_diff"] <= TOLERANCES["w16"].ll_diff
               for c in scored16.values())
    if name == "conditioned":
        assert ("upsample/random/b3", "upsample") in names
    data = json.loads(report.to_json())
    assert data["passed"] is True and data["tolerances"]["fp32"]["max_abs"] == TOLERANCES["fp32"].max_abs


def _perturb(directory, file, update_sha: bool):
    path = directory / file
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda i: np.prod(i.dims))  # a real weight matrix
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5 * (np.abs(w).max() + 1)
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    if update_sha:
        manifest_path = directory / "manifest.json"
        m = json.loads(manifest_path.read_text())
        name = next(k for k, g in m["graphs"].items() if g["file"] == file)
        m["graphs"][name]["sha256"] = sha256(path)
        manifest_path.write_text(json.dumps(m))
        if name in m.get("native_loops", {}):  # a consistent export of the corrupted graph: its plan too
            from wn_export.backends.onnxruntime import native_plan

            graph = read_manifest(directory, verify=False).graph(name)
            plan = directory / m["native_loops"][name]["file"]
            native_plan.write(plan, *native_plan.derive(graph), graph)
            m["native_loops"][name].update(sha256=sha256(plan), graph_sha256=graph.sha256)
            manifest_path.write_text(json.dumps(m))


def test_corrupted_weight_fails_parity(tmp_path, checkpoint_factory):
    ckpt = checkpoint_factory(CONFIGS["k2"])
    d = tmp_path / "d"
    export_directory(d, ckpt)
    _perturb(d, "step.onnx", update_sha=True)
    report = run_parity(d, generation_samples=200)
    assert not report
    failed = {(c.name, c.graph) for c in report.checks if not c}
    assert ("step/random/b3/vs-reference", "step") in failed and ("step/random/b3/vs-scoring", "step") in failed
    assert all(c for c in report.checks if c.graph == "scoring")  # only the corrupted graph fails
    r = CliRunner().invoke(main, ["parity", str(d), "--generation-samples", "200", "--json", str(tmp_path / "p.json")])
    assert r.exit_code == 1 and "parity FAILED" in r.output and "step/random/b3/vs-reference" in r.output
    assert json.loads((tmp_path / "p.json").read_text())["passed"] is False


def test_modified_graph_without_manifest_update_is_rejected(tmp_path, checkpoint_factory):
    ckpt = checkpoint_factory(CONFIGS["k2"])
    export_directory(tmp_path / "d", ckpt)
    _perturb(tmp_path / "d", "scoring.onnx", update_sha=False)
    with pytest.raises(ArtifactError, match="does not match the manifest's sha256"):
        run_parity(tmp_path / "d")


def test_bad_inputs_give_clear_errors(tmp_path, checkpoint_factory):
    runner = CliRunner()
    r = runner.invoke(main, ["parity", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output

    ckpt = checkpoint_factory(CONFIGS["k2"])
    d = tmp_path / "d"
    export_directory(d, ckpt)
    r = runner.invoke(main, ["parity", str(d), "--backend", "tflite"])
    assert r.exit_code != 0 and "unknown backend 'tflite'" in r.output
    with pytest.raises(BackendError, match="unknown backend"):
        run_parity(d, "tflite")

    m = json.loads((d / "manifest.json").read_text())
    m["graphs"]["step"]["inputs"][0]["name"] = "tok"  # manifest and graph disagree
    (d / "manifest.json").write_text(json.dumps(m))
    r = runner.invoke(main, ["parity", str(d)])
    assert r.exit_code != 0 and "does not match its model config at inputs[0].name" in r.output

    (d / "manifest.json").write_text("{broken")
    r = runner.invoke(main, ["parity", str(d)])
    assert r.exit_code != 0 and "not valid JSON" in r.output

    other = checkpoint_factory(CONFIGS["k3-odd"], name="other.safetensors")
    export_directory(tmp_path / "e", ckpt)
    r = runner.invoke(main, ["parity", str(tmp_path / "e"), "--checkpoint", str(other)])
    assert r.exit_code != 0 and "different config" in r.output


def test_metrics_and_judgement():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 50, 16))
    same = logit_metrics(ref.astype(np.float32), ref)
    assert same["max_abs"] < 1e-6 and same["kl_max"] < 1e-12 and same["top1"] == 1.0
    shifted = logit_metrics(ref + 7.0, ref)  # a constant shift leaves the distribution unchanged
    assert shifted["max_abs"] == pytest.approx(7.0) and shifted["kl_max"] < 1e-12
    noisy = logit_metrics(ref + rng.standard_normal(ref.shape), ref)
    assert noisy["kl_mean"] > 0.1 and noisy["top1"] < 0.9
    assert judge("x", "g", "fp32", same) and not judge("x", "g", "fp32", noisy)
    assert "generation diverged at sample 5" in judge("g", "step", "fp32", {"first_divergence": 5}).failures
    assert judge("g", "step.fp16", "fp16", {"first_divergence": 5})  # FP16 only reports divergence
    for key in ("max_abs", "rel_l2", "kl_mean", "kl_max", "ll_diff"):
        assert getattr(TOLERANCES["fp16"], key) > getattr(TOLERANCES["fp32"], key)
