"""The native loop's plan as an export artifact (`backends.onnxruntime.native_plan`): written for the step graphs
that have a native loop, recorded in the manifest, and bit for bit the plan the ONNX Runtime host derives from
the graph (one truth for both hosts). The C++ host's reading of it: tests/test_cpp_host.py (tokens) and
tests/test_cpp_hostile.py (hostile files)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import CONFIGS, LOOP_MODELS, export_with_plan_in_plans

from wn_export.backends.onnxruntime import native, native_plan
from wn_export.backends.onnxruntime.native_loop import LoopPlan, speaker_table
from wn_export.backends.onnxruntime.runner import OrtStepRunner
from wn_export.backends.torch_ref import TorchStepRunner, reference_model_for
from wn_export.contract.manifest import read_manifest, sha256
from wn_export.errors import ArtifactError
from wn_export.export.pipeline import export_directory
from wn_export.generation.loop import generate

NAMES = LOOP_MODELS


@pytest.fixture
def exports(loop_exports):
    return loop_exports


def _same(a, b) -> bool:
    """Equal bit for bit: dtype, shape and bytes (or both absent)."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("graph", ["step", "step.w16"])
@pytest.mark.parametrize("name", NAMES)
def test_the_plan_file_is_the_plan_the_host_derives_from_the_graph(exports, name, graph):
    manifest = read_manifest(exports[name])
    record = manifest.native_loops[graph]
    assert record.file == f"{graph}.native.safetensors" and record.graph_sha256 == manifest.graph(graph).sha256
    arrays, dims, meta = native_plan.read(record.path)
    with OrtStepRunner(manifest, graph) as runner:  # what `wn-export generate` plans from the graph
        assert runner.loop is not None
        want = runner.loop.arrays
        assert dims == runner.loop.dims
    assert set(arrays) == set(want)
    different = [k for k in want if not _same(arrays[k], want[k])]
    assert not different, different
    assert meta["graph"] == graph and meta["weights"] == ("w16" if graph == "step.w16" else "fp32")
    assert (arrays["speaker_gate"] is not None) == CONFIGS[name].global_
    assert (arrays["w_cond"] is not None) == CONFIGS[name].local


def test_a_loop_on_the_files_arrays_draws_the_reference_tokens(exports):
    """The file alone is a complete plan: the library's loop on its arrays draws the reference contract's tokens."""
    manifest = read_manifest(exports["conditioned"])
    cfg = manifest.config
    arrays, dims, _ = native_plan.read(manifest.native_loops["step"].path)
    plan = LoopPlan(str(native.library()), arrays, dims)
    rng = np.random.default_rng(0)
    batch, n = 2, 200
    cond = rng.standard_normal((batch, cfg.local_channels, n)).astype(np.float32)
    speaker = np.array([2, 0])
    with TorchStepRunner(reference_model_for(manifest, None)) as reference:
        want = generate(reference, n, batch, seed=7, cond=cond, speaker=speaker, cfg=cfg)
    state = np.zeros((batch, dims["state_rows"], dims["R"]), np.float32)
    out = np.empty((n, batch), np.int64)
    from reference_model.sampling import uniforms

    plan.run(state=state, position=0, first=np.full(batch, cfg.quantization_channels // 2, np.int64), out=out,
             gate_base=plan.gate_base(batch, speaker), u=uniforms(7, n, batch), temperature=1.0, cond=cond,
             logits=np.zeros((batch, dims["Q"]), np.float32), split="alone")
    assert np.array_equal(out.T, want)


def test_the_speaker_table_is_summed_in_a_fixed_order():
    """float64 products and sums in order, rounded once: independent of BLAS (not a float32 matmul)."""
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(40).astype(np.float32)
    embed = rng.standard_normal((5, 7)).astype(np.float32)
    w = rng.standard_normal((7, 40)).astype(np.float16)
    want = bias.astype(np.float64) + sum(embed[:, k, None].astype(np.float64) * w[k].astype(np.float64)
                                         for k in range(7))
    got = speaker_table(bias, embed, w)
    assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))


def test_only_graphs_with_a_native_loop_get_a_plan(exports):
    manifest = read_manifest(exports["k2"])
    assert set(manifest.native_loops) == {"step", "step.w16"}  # not step.fp16, not the scoring graph
    assert not (exports["k2"] / "step.fp16.native.safetensors").exists()
    full = read_manifest(exports["k2-full"])
    assert full.native_loops == {} and not list(exports["k2-full"].glob("*.native.safetensors"))
    assert "native_loops" not in json.loads((exports["k2-full"] / "manifest.json").read_text())


def test_a_re_export_without_a_loop_removes_the_stale_plan(exports, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(exports["k2"], d)
    export_directory(d, exports["k2"].parent / "k2.safetensors", layout="full")
    assert read_manifest(d).native_loops == {} and not (d / "step.native.safetensors").exists()


def _edited(exports, tmp_path, edit) -> str:
    d = tmp_path / "e"
    shutil.copytree(exports["k2"], d)
    data = json.loads((d / "manifest.json").read_text())
    edit(d, data)
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as e:
        read_manifest(d)
    return str(e.value)


@pytest.mark.parametrize("case, message", [
    ("modified", "does not match the manifest's sha256"),
    ("other-graph", "was derived from another step.onnx"),
    ("outside", "must be a plain name inside the export directory"),
    ("scoring", "is not a ring-layout step graph"),
    ("format", "is not one of wn-native-loop/1"),
    ("missing", "is missing"),
    ("not-an-object", "native_loops must be of type dict"),
    ("5-GiB", "step.native.safetensors is 5.0 GiB, more than a native loop plan can be (4 GiB)"),  # not hashed
    ("graph-1-TiB", "step.onnx is 1024.0 GiB, more than a self-contained ONNX model can be (2 GiB)"),  # not read
])
def test_the_manifest_reader_checks_the_plan_record(exports, tmp_path, case, message):
    def edit(d, data):
        rec = data["native_loops"]["step"]
        if case == "modified":
            with open(d / rec["file"], "ab") as f:
                f.write(b"\0")
        elif case == "other-graph":
            rec["graph_sha256"] = sha256(d / "scoring.onnx")
        elif case == "outside":
            rec["file"] = "../step.native.safetensors"
        elif case == "scoring":
            data["native_loops"]["scoring"] = {**rec, "graph": "scoring"}
        elif case == "format":
            rec["format"] = "wn-native-loop/2"
        elif case == "missing":
            (d / rec["file"]).unlink()
        elif case == "5-GiB":  # sparse files: nothing is written
            os.truncate(d / rec["file"], 5 << 30)
        elif case == "graph-1-TiB":
            os.truncate(d / "step.onnx", 1 << 40)
        else:
            data["native_loops"] = []
    assert message in _edited(exports, tmp_path, edit)


def test_a_file_that_is_not_a_plan_is_refused(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    with pytest.raises(ArtifactError, match="unsupported native loop plan format"):
        native_plan.read(tmp_path / "x.safetensors")
    (tmp_path / "y.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="is not a native loop plan"):
        native_plan.read(tmp_path / "y.safetensors")


def test_files_the_manifest_keeps_in_sub_folders_are_inputs_no_output_may_replace(exports, tmp_path):
    """A manifest may keep its plan and graphs in sub-folders: `--json` / `-o` onto one of them (here bench's, which
    overwrote the plan) is refused before any work, like an output onto a top-level graph."""
    from click.testing import CliRunner

    from cli import main
    from wn_export.contract.manifest import export_files

    d, _, rec = export_with_plan_in_plans(exports["k2"], tmp_path / "exp")
    plan = d / rec["file"]
    before = plan.read_bytes()
    assert plan in export_files(d) and read_manifest(d).native_loops["step"].path == plan
    r = CliRunner().invoke(main, ["bench", str(d), "--batch", "1", "--seconds", "0.01", "--rounds", "1",
                                  "--no-scoring", "--no-cpp", "--json", str(plan)])
    assert r.exit_code == 1 and "is also an input of this command" in r.output, r.output
    assert plan.read_bytes() == before
    (d / "manifest.json").write_text("{not json")  # unreadable: the top-level files only, and no error here
    assert set(export_files(d)) == {d / "manifest.json", *(p for p in d.iterdir() if p.suffix in (".onnx", ".safetensors"))}
