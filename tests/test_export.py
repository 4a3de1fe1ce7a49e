"""`wn-export onnx`: files, manifest contract, graph hygiene, atomic writes, and a manifest-only host."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from cli import main
from reference_model import load_checkpoint
from tests.conftest import CONFIGS
from wn_export.backends.torch_ref import TorchScoringRunner
from wn_export.contract.manifest import read_manifest, sha256
from wn_export.errors import ExportError
from wn_export.export.hygiene import TRT_OPS, check_graph
from wn_export.export.pipeline import export_directory

ROLES = {"tokens", "token", "cond", "speaker", "state", "position", "logits", "log_prob", "cond_samples"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every test config exported with FP16, ring layout, plus k3-odd in the full layout."""
    from reference_model import save_checkpoint
    from tests.conftest import random_model

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, cfg in CONFIGS.items():
        ckpt = root / f"{name}.safetensors"
        save_checkpoint(random_model(cfg), ckpt)
        out[name] = (export_directory(root / name, ckpt, fp16=True), root / name, ckpt)
    ckpt = root / "k3-odd.safetensors"
    out["k3-odd-full"] = (export_directory(root / "k3-odd-full", ckpt, fp16=True, layout="full"),
                          root / "k3-odd-full", ckpt)
    return out


def test_manifest_contract(exports):
    for name, (manifest, directory, ckpt) in exports.items():
        cfg = load_checkpoint(ckpt).cfg
        assert manifest == json.loads((directory / "manifest.json").read_text())
        assert manifest["format"] == "wn-export/1"
        assert manifest["receptive_field"] == cfg.receptive_field
        assert manifest["quantization_channels"] == cfg.quantization_channels
        assert manifest["sample_rate"] == cfg.sample_rate and manifest["model"] == cfg.to_dict()
        expected = {"scoring", "step", "scoring.fp16", "step.fp16"} | ({"upsample"} if cfg.local else set())
        assert set(manifest["graphs"]) == expected
        for gname, g in manifest["graphs"].items():
            assert sha256(directory / g["file"]) == g["sha256"]
            assert g["precision"] == ("fp16" if gname.endswith("fp16") else "fp32")
            for t in g["inputs"] + g["outputs"]:
                assert t["role"] in ROLES and set(t) == {"name", "role", "dtype", "shape"}
            graph = onnx.load(str(directory / g["file"]))
            assert [i.name for i in graph.graph.input] == [t["name"] for t in g["inputs"]]
            assert [o.name for o in graph.graph.output] == [t["name"] for t in g["outputs"]]
            for vi, t in zip([*graph.graph.input, *graph.graph.output], g["inputs"] + g["outputs"]):
                dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
                assert dims == t["shape"], (gname, t["name"])
                assert helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name == t["dtype"]
        step = manifest["graphs"]["step"]
        state_inputs = [t["name"] for t in step["inputs"] if t["role"] == "state"]
        assert [s["input"] for s in step["state"]] == state_inputs
        if step["layout"] == "ring":
            (s,) = step["state"]
            assert s["update"] == "ring" and s["position"] == "position"
            assert [r["length"] for r in s["rings"]] == list(cfg.state_lengths)
            assert s["shape"] == ["batch", sum(cfg.state_lengths), cfg.residual_channels]
        else:
            assert [s["shape"][2] for s in step["state"]] == list(cfg.state_lengths)
        assert manifest["graphs"]["step.fp16"]["state"][0]["dtype"] == "float16"
        assert manifest["graphs"]["scoring.fp16"]["outputs"][0]["dtype"] == "float32"  # policy: fp32 logits


def test_graph_hygiene_of_written_files(exports):
    for name, (manifest, directory, _) in exports.items():
        for g in manifest["graphs"].values():
            model = onnx.load(str(directory / g["file"]))
            dims = {d for t in g["inputs"] + g["outputs"] for d in t["shape"] if isinstance(d, str)}
            stats = check_graph(model, dims, g["file"])
            assert stats["nodes"] == g["nodes"] and set(stats["ops"]) <= TRT_OPS


def test_fp16_policy_is_mixed_not_blind(exports):
    manifest, directory, _ = exports["k2"]
    graph = onnx.load(str(directory / manifest["graphs"]["scoring.fp16"]["file"]))
    types = {i.name: i.data_type for i in graph.graph.initializer}
    weights = [n for n in types if n.endswith("weight")]
    assert weights and all(types[n] == TensorProto.FLOAT16 for n in weights)
    inferred = onnx.shape_inference.infer_shapes(graph)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    log_softmax = [n for n in graph.graph.node if n.op_type == "LogSoftmax"]
    assert log_softmax and all(elem.get(n.output[0]) == TensorProto.FLOAT for n in log_softmax)
    tanh = [n for n in graph.graph.node if n.op_type == "Tanh"]
    assert tanh and all(elem.get(n.output[0]) == TensorProto.FLOAT16 for n in tanh)
    # the skip sum runs in fp32: every skip conv output is cast up before the adds
    casts_to_fp32 = [n for n in graph.graph.node if n.op_type == "Cast"
                     and helper.get_attribute_value(n.attribute[0]) == TensorProto.FLOAT]
    assert len(casts_to_fp32) >= CONFIGS["k2"].layers


def _manifest_only_host(directory, graph_name, tokens, cond, speaker):
    """A generic host written against manifest.json alone (no wn_export code): teacher-forced step."""
    m = json.loads((directory / "manifest.json").read_text())
    g = m["graphs"][graph_name]
    sess = ort.InferenceSession(str(directory / g["file"]), providers=["CPUExecutionProvider"])
    B, T = tokens.shape
    buffers = {s["input"]: np.full([B if d == "batch" else d for d in s["shape"]], s["init"], dtype=s["dtype"])
               for s in g["state"]}
    out = []
    for t in range(T):
        feeds = dict(buffers)
        for i in g["inputs"]:
            if i["role"] == "token":
                feeds[i["name"]] = tokens[:, t].astype(i["dtype"])
            elif i["role"] == "cond":
                feeds[i["name"]] = cond[:, :, t].astype(i["dtype"])
            elif i["role"] == "speaker":
                feeds[i["name"]] = speaker.astype(i["dtype"])
            elif i["role"] == "position":
                feeds[i["name"]] = np.array([t], dtype=i["dtype"])
        names = [o["name"] for o in g["outputs"]]
        res = dict(zip(names, sess.run(names, feeds)))
        out.append(res[next(o["name"] for o in g["outputs"] if o["role"] == "logits")])
        for s in g["state"]:
            if s["update"] == "replace":
                buffers[s["input"]] = res[s["output"]]
            else:
                for row, ring in enumerate(s["rings"]):
                    buffers[s["input"]][:, ring["offset"] + t % ring["length"], :] = res[s["output"]][:, row, :]
    return np.stack(out, axis=1)


@pytest.mark.parametrize("name", ["k3-odd", "k3-odd-full", "conditioned"])
def test_manifest_only_host_reproduces_scoring(exports, name):
    manifest, directory, ckpt = exports[name]
    cfg = load_checkpoint(ckpt).cfg
    rng = np.random.default_rng(1)
    B, T = 2, 3 * cfg.receptive_field
    tokens = rng.integers(0, cfg.quantization_channels, (B, T))
    cond = speaker = None
    if cfg.local:
        up = ort.InferenceSession(str(directory / "upsample.onnx"), providers=["CPUExecutionProvider"])
        frames = rng.standard_normal((B, cfg.local_channels, -(-T // cfg.hop_size))).astype(np.float32)
        cond = up.run(None, {"cond": frames})[0][:, :, :T]
    if cfg.global_:
        speaker = rng.integers(0, cfg.speakers, B)
    stepped = _manifest_only_host(directory, "step", tokens, cond, speaker)
    feeds = {"tokens": tokens} | ({"cond": cond} if cond is not None else {}) | (
        {"speaker": speaker} if speaker is not None else {})
    sess = ort.InferenceSession(str(directory / "scoring.onnx"), providers=["CPUExecutionProvider"])
    scored = sess.run(["logits"], feeds)[0]
    np.testing.assert_allclose(stepped, scored, rtol=0, atol=1e-4)
    ref = TorchScoringRunner(load_checkpoint(ckpt)).infer(tokens, cond, speaker)["logits"]
    np.testing.assert_allclose(scored, ref, rtol=0, atol=1e-4)
    assert np.abs(ref).max() > 0.5


def test_hygiene_rejects_bad_graphs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])

    def model(nodes, inits=()):
        g = helper.make_graph(nodes, "g", [x], [y], list(inits))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    ok = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w])
    assert check_graph(ok, {"batch"}, "ok")["nodes"] == 1
    with pytest.raises(ExportError, match="unused initializers: unused"):
        check_graph(model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w, unused]), {"batch"}, "g")
    with pytest.raises(ExportError, match="not supported by TensorRT.*Hardmax"):
        check_graph(model([helper.make_node("Hardmax", ["x"], ["y"])]), {"batch"}, "g")
    folded = model([helper.make_node("Neg", ["w"], ["nw"]), helper.make_node("MatMul", ["x", "nw"], ["y"])], [w])
    with pytest.raises(ExportError, match="unfolded constant subgraphs at: Neg"):
        check_graph(folded, {"batch"}, "g")
    # the one exception: a float16 weight widened to float32 (w16 graphs store weights that way) …
    w16 = numpy_helper.from_array(np.ones((4, 4), np.float16), "w16")
    widen = helper.make_node("Cast", ["w16"], ["w32"], name="widen", to=TensorProto.FLOAT)
    assert check_graph(model([widen, helper.make_node("MatMul", ["x", "w32"], ["y"])], [w16]), {"batch"}, "ok")
    cast32 = helper.make_node("Cast", ["w"], ["w32"], name="cast", to=TensorProto.FLOAT)  # … not any Cast
    with pytest.raises(ExportError, match="unfolded constant subgraphs at: Cast"):
        check_graph(model([cast32, helper.make_node("MatMul", ["x", "w32"], ["y"])], [w]), {"batch"}, "g")
    narrow = helper.make_node("Cast", ["w16"], ["w8"], name="narrow", to=TensorProto.FLOAT16)
    with pytest.raises(ExportError, match="unfolded constant subgraphs at: Cast"):
        check_graph(model([narrow, helper.make_node("Cast", ["w8"], ["w32"], to=TensorProto.FLOAT),
                           helper.make_node("MatMul", ["x", "w32"], ["y"])], [w16]), {"batch"}, "g")


@pytest.mark.parametrize("name", ["k3-odd", "conditioned"])
def test_w16_graphs_store_their_weight_matrices_as_float16(tmp_path, checkpoint_factory, name):
    """`--w16`: step.w16.onnx and scoring.w16.onnx, precision "w16" in the manifest; every weight matrix a
    float16 initializer widened by one Cast where it is used; embeddings and biases float32; each function is
    its FP32 graph's up to the weights' rounding."""
    ckpt = checkpoint_factory(CONFIGS[name])
    manifest = export_directory(tmp_path / "d", ckpt, w16=True)
    assert set(manifest["graphs"]) >= {"scoring", "step", "scoring.w16", "step.w16"}
    assert "scoring.fp16" not in manifest["graphs"]
    for kind in ("step", "scoring"):
        entry = manifest["graphs"][f"{kind}.w16"]
        assert entry["precision"] == "w16" and entry["file"] == f"{kind}.w16.onnx"
        assert [(t["name"], t["dtype"]) for t in entry["inputs"]] == [
            (t["name"], t["dtype"]) for t in manifest["graphs"][kind]["inputs"]]  # the FP32 graph's I/O
        _check_w16_graph(tmp_path / "d", kind)


def _check_w16_graph(directory, kind: str) -> None:
    model = onnx.load(str(directory / f"{kind}.w16.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = [n.input[1] for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Conv")]
    assert weights
    for w in weights:
        cast = producers.get(w)
        assert cast is not None and cast.op_type == "Cast", f"{kind}: {w} is not widened from float16"
        assert inits[cast.input[0]].data_type == TensorProto.FLOAT16
    halves = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16}
    assert halves == {producers[w].input[0] for w in weights}
    embed = [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    assert embed and all(inits[e].data_type == TensorProto.FLOAT for e in embed)  # gathered rows stay float32
    plain = onnx.load(str(directory / f"{kind}.onnx"))
    plain_inits = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    for name16 in halves:
        assert np.array_equal(numpy_helper.to_array(inits[name16]), plain_inits[name16].astype(np.float16))
    feeds = {}
    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(str(directory / f), providers=["CPUExecutionProvider"])
                for f in (f"{kind}.onnx", f"{kind}.w16.onnx")]
    for i in sessions[0].get_inputs():
        shape = [{"time": 9}.get(d, 2) if isinstance(d, str) else d for d in i.shape]
        feeds[i.name] = (rng.integers(0, 3, shape) if i.type == "tensor(int64)" else
                         rng.standard_normal(shape).astype(np.float32))
    a, b = (s.run(None, feeds)[0] for s in sessions)
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(a).max()  # rounded weights: close, not equal


def test_export_is_atomic(tmp_path, checkpoint_factory, monkeypatch):
    ckpt = checkpoint_factory(CONFIGS["k2"])
    out = tmp_path / "out"
    export_directory(out, ckpt)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import wn_export.export.pipeline as ex

    real, calls = ex.export_graph, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ExportError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "export_graph", failing)
    with pytest.raises(ExportError, match="boom"):
        export_directory(out, ckpt, fp16=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", ckpt.name])  # no staging dir left


def test_every_file_is_on_disk_before_its_name_is_published(tmp_path, checkpoint_factory, monkeypatch):
    """Durability: each file's data is fsynced before it is renamed into the export directory, and the
    directory itself is fsynced before the manifest names the graphs and after the manifest is in place."""
    import os
    from pathlib import Path

    import reference_model.atomic as atomic
    import wn_export.export.pipeline as ex

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a), str(b))) or real_replace(a, b))
    real_path_replace = type(tmp_path).replace
    monkeypatch.setattr(type(tmp_path), "replace",
                        lambda self, target: events.append(("replace", str(self), str(target)))
                        or real_path_replace(self, target))
    out = tmp_path / "out"
    export_directory(out, checkpoint_factory(CONFIGS["k2"]))
    assert ex.fsync_file is atomic.fsync_file
    published = [(i, e) for i, e in enumerate(events) if e[0] == "replace" and Path(e[2]).parent == out]
    assert {Path(e[2]).name for _, e in published} == {"scoring.onnx", "step.onnx", "manifest.json"}
    def flushed(name: str, before: int) -> bool:  # fsynced under this name, or under a name renamed to it
        for j in range(before - 1, -1, -1):
            if events[j] == ("fsync", name):
                return True
            if events[j][0] == "replace" and events[j][2] == name:
                return flushed(events[j][1], j)
        return False
    for i, (_, source, _target) in published:
        assert flushed(source, i), f"{source} renamed before it was flushed"
    manifest_at = next(i for i, e in published if e[2].endswith("manifest.json"))
    assert ("fsync", str(out)) in events[published[0][0]:manifest_at]  # the graphs' entries, first
    assert ("fsync", str(out)) in events[manifest_at:]


def test_cli_onnx_and_inspect(tmp_path, checkpoint_factory):
    ckpt = checkpoint_factory(CONFIGS["conditioned"])
    r = CliRunner().invoke(main, ["onnx", "-c", str(ckpt), "-o", str(tmp_path / "d"), "--fp16"])
    assert r.exit_code == 0, r.output
    manifest = read_manifest(tmp_path / "d")
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    for name, g in manifest.graphs.items():
        assert f"{name}: {g.path.name}  {g.precision}  {g.data['nodes']} nodes" in r.output
    assert "state state → state_update: ring over 4 layers" in r.output
    assert "native loop plan of step: step.native.safetensors (wn-native-loop/1)" in r.output
    assert "native loop plan of step.fp16" not in r.output  # FP16 state: stepped per sample


@pytest.mark.parametrize("args, message", [
    (["--opset", "11"], "opset 11 is too old"),
    (["--opset", "99"], "newer than this onnx supports"),
])
def test_cli_onnx_errors(tmp_path, checkpoint_factory, args, message):
    ckpt = checkpoint_factory(CONFIGS["k2"])
    r = CliRunner().invoke(main, ["onnx", "-c", str(ckpt), "-o", str(tmp_path / "d"), *args])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "d").exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    r = CliRunner().invoke(main, ["onnx", "-c", str(bad), "-o", str(tmp_path / "d")])
    assert r.exit_code != 0 and "not a readable safetensors" in r.output
