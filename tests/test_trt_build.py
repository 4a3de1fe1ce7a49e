"""wn_export.trt_build on small hand-made ONNX graphs, built ahead of time with TensorRT-RTX (CPU-only).

Engines cannot be deserialized without a GPU, so inspection is checked against the build facts only
where a GPU is present; on CPU the test checks that inspection fails clearly instead.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from wn_export.backends.tensorrt import build as trt_build
from wn_export.errors import ArtifactError, BackendError, ExportError

OPSET = 17
CC = "8.6"


def _save(path, nodes, inputs, outputs, inits=(), check=True):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _init(name, arr):
    return numpy_helper.from_array(arr, name)


def make_fp32(path):
    """(a) y = tanh(x @ W + b), dynamic batch."""
    rng = np.random.default_rng(0)
    return _save(path, [helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
                        helper.make_node("Add", ["m", "b"], ["a"], name="add"),
                        helper.make_node("Tanh", ["a"], ["y"], name="tanh")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                 [_init("W", rng.standard_normal((16, 8), np.float32)), _init("b", np.zeros(8, np.float32))])


def make_fp16(path):
    """(b) float32 x -> Cast fp16 -> MatMul/Add/Tanh in fp16 -> y (cast back to float32) and h16 (fp16)."""
    rng = np.random.default_rng(1)
    return _save(path, [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="to_fp16"),
                        helper.make_node("MatMul", ["x16", "W"], ["m"], name="matmul16"),
                        helper.make_node("Add", ["m", "b"], ["a"], name="add16"),
                        helper.make_node("Tanh", ["a"], ["h16"], name="tanh16"),
                        helper.make_node("Cast", ["h16"], ["y"], to=TensorProto.FLOAT, name="to_fp32")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
                  helper.make_tensor_value_info("h16", TensorProto.FLOAT16, ["batch", 8])],
                 [_init("W", rng.standard_normal((16, 8)).astype(np.float16)), _init("b", np.zeros(8, np.float16))])


def make_embed_conv(path):
    """(c) int64 tokens -> Gather (embedding) -> [B,C,T] ++ cond -> dilated Conv1d; int32 side output."""
    rng = np.random.default_rng(2)
    return _save(path, [helper.make_node("Gather", ["table", "tokens"], ["emb"], axis=0, name="embed"),
                        helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[0, 2, 1], name="to_nct"),
                        helper.make_node("Concat", ["emb_t", "cond"], ["cat"], axis=1, name="concat"),
                        helper.make_node("Conv", ["cat", "Wc", "bc"], ["out"], dilations=[4], kernel_shape=[2],
                                         name="dilated_conv"),
                        helper.make_node("Cast", ["tokens"], ["tok32"], to=TensorProto.INT32, name="tok_i32")],
                 [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"]),
                  helper.make_tensor_value_info("cond", TensorProto.FLOAT, ["batch", 4, "time"])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6, "time_out"]),
                  helper.make_tensor_value_info("tok32", TensorProto.INT32, ["batch", "time"])],
                 [_init("table", rng.standard_normal((256, 8), np.float32)),
                  _init("Wc", rng.standard_normal((6, 12, 2), np.float32)), _init("bc", np.zeros(6, np.float32))])


def make_broken(path):
    """(d) a valid Relu followed by an op no importer knows."""
    return _save(path, [helper.make_node("Relu", ["x"], ["r"], name="relu_ok"),
                        helper.make_node("FrobnicateWaves", ["r"], ["y"], name="bad_node")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], check=False)


BATCH = ((1, 16), (4, 16), (32, 16))
CASES = {
    "fp32": (make_fp32, {"x": BATCH}),
    "fp16": (make_fp16, {"x": BATCH}),
    "embed_conv": (make_embed_conv, {"tokens": ((1, 8), (2, 64), (4, 512)),
                                     "cond": ((1, 4, 8), (2, 4, 64), (4, 4, 512))}),
}


@pytest.fixture(scope="module")
def trt_rtx():
    return pytest.importorskip("tensorrt_rtx_bindings")


@pytest.fixture(scope="module")
def built(trt_rtx, tmp_path_factory):
    """Build every case once for compute capability 8.6; returns {case: (onnx, facts, events)}."""
    root = tmp_path_factory.mktemp("trt")
    out = {}
    for name, (make, profile) in CASES.items():
        events = []
        onnx_path = make(root / f"{name}.onnx")
        facts = trt_build.build_engine(onnx_path, root / f"{name}.engine", profiles=profile,
                                       backend="tensorrt-rtx", compute_capability=CC,
                                       progress=lambda *a, ev=events: ev.append(a))
        print(f"{name}: built in {facts['build_seconds']} s, {facts['bytes']} bytes")
        out[name] = (onnx_path, facts, events)
    return out


def _io(facts):
    return {t["name"]: (t["dtype"], t["shape"], t["mode"]) for t in facts["io"]}


def test_fp32_facts(built):
    onnx_path, facts, _ = built["fp32"]
    data = open(facts["file"], "rb").read()
    assert data and facts["bytes"] == len(data)
    assert facts["backend"] == "tensorrt-rtx" and facts["version"].startswith("1.")
    assert facts["compute_capability"] == ["86"] and facts["onnx"] == str(onnx_path)
    assert facts["tf32"] is False and len(facts["sha256"]) == 64
    assert _io(facts) == {"x": ("float32", [-1, 16], "input"), "y": ("float32", [-1, 8], "output")}
    assert facts["profiles"] == [{"x": {"min": [1, 16], "opt": [4, 16], "max": [32, 16]}}]


def test_fp16_casts_keep_declared_dtypes(built):
    assert _io(built["fp16"][1]) == {"x": ("float32", [-1, 16], "input"), "y": ("float32", [-1, 8], "output"),
                                     "h16": ("float16", [-1, 8], "output")}


def test_int64_embedding_concat_dilated_conv(built):
    facts = built["embed_conv"][1]
    assert _io(facts) == {"tokens": ("int64", [-1, -1], "input"), "cond": ("float32", [-1, 4, -1], "input"),
                          "out": ("float32", [-1, 6, -1], "output"), "tok32": ("int32", [-1, -1], "output")}
    assert facts["profiles"][0]["cond"] == {"min": [1, 4, 8], "opt": [2, 4, 64], "max": [4, 4, 512]}


def test_progress_reports_start_and_finish(built):
    for _, _, events in built.values():
        assert events and events[0][1] == 0
        assert all(isinstance(p, str) and 0 <= d <= t for p, d, t in events)
        assert events[-1][1] == events[-1][2]


def test_parser_error_names_the_node(trt_rtx, tmp_path):
    path = make_broken(tmp_path / "broken.onnx")
    with pytest.raises(ExportError) as err:
        trt_build.build_engine(path, tmp_path / "broken.engine", backend="tensorrt-rtx")
    msg = str(err.value)
    assert "node 1" in msg and "'bad_node'" in msg and "FrobnicateWaves" in msg and "\n" not in msg
    assert not (tmp_path / "broken.engine").exists()


def test_failed_build_leaves_no_file(trt_rtx, tmp_path):
    # TensorRT-RTX cannot compile an FP32 GEMM for Turing (SM75): build_serialized_network returns None.
    path = make_fp32(tmp_path / "a.onnx")
    with pytest.raises(BackendError, match="failed to build"):
        trt_build.build_engine(path, tmp_path / "a.engine", profiles={"x": BATCH}, backend="tensorrt-rtx",
                               compute_capability="sm75")
    assert list(tmp_path.iterdir()) == [path]


def test_targets_change_the_engine(trt_rtx, built, tmp_path):
    onnx_path, facts86, _ = built["fp32"]
    facts89 = trt_build.build_engine(onnx_path, tmp_path / "a89.engine", profiles={"x": BATCH},
                                     backend="tensorrt-rtx", compute_capability="sm_89,12.0")
    assert facts89["compute_capability"] == ["89", "120"] and facts89["sha256"] != facts86["sha256"]
    with pytest.raises(BackendError, match="not a TensorRT-RTX target"):
        trt_build.build_engine(onnx_path, tmp_path / "x.engine", profiles={"x": BATCH},
                               backend="tensorrt-rtx", compute_capability="9.0")


def test_profile_errors(trt_rtx, built, tmp_path):
    onnx_path = built["fp32"][0]
    with pytest.raises(ExportError, match="dynamic inputs"):
        trt_build.build_engine(onnx_path, tmp_path / "e", backend="tensorrt-rtx")
    with pytest.raises(ExportError, match="unknown inputs"):
        trt_build.build_engine(onnx_path, tmp_path / "e", profiles={"x": BATCH, "z": BATCH},
                               backend="tensorrt-rtx")
    with pytest.raises(ExportError, match="min <= opt <= max"):
        trt_build.Profile({"x": ((4, 16), (1, 16), (8, 16))})
    assert not (tmp_path / "e").exists()


def test_timing_cache_is_ignored_by_rtx(trt_rtx, built, tmp_path):
    facts = trt_build.build_engine(built["fp32"][0], tmp_path / "a.engine", profiles={"x": BATCH},
                                   backend="tensorrt-rtx", timing_cache=tmp_path / "cache.bin")
    assert facts["timing_cache"] is None and not (tmp_path / "cache.bin").exists()
    assert facts["compute_capability"] is None  # default: portable engine


def test_inspect_matches_build_or_needs_gpu(built):
    for _, facts, _ in built.values():
        try:
            info = trt_build.inspect_engine(facts["file"], backend="tensorrt-rtx")
        except BackendError as e:  # CPU-only machine: deserialization needs a GPU
            assert "needs a CUDA GPU" in str(e)
            continue
        assert info["sha256"] == facts["sha256"]
        assert _io(info) == _io(facts) and info["profiles"] == facts["profiles"]


def test_inspect_rejects_bad_files(trt_rtx, tmp_path):
    with pytest.raises(ArtifactError, match="missing or empty"):
        trt_build.inspect_engine(tmp_path / "none.engine", backend="tensorrt-rtx")
    (tmp_path / "junk.engine").write_bytes(b"not an engine" * 50)
    with pytest.raises(ArtifactError, match="malformed"):
        trt_build.inspect_engine(tmp_path / "junk.engine", backend="tensorrt-rtx")


def test_load_trt_choices(monkeypatch):
    with pytest.raises(BackendError, match="unknown TensorRT backend"):
        trt_build.load_trt("onnxruntime")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # make `import tensorrt` fail
    with pytest.raises(BackendError, match="pip install tensorrt$"):
        trt_build.load_trt("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    with pytest.raises(BackendError, match="tensorrt-rtx-cu13-bindings"):
        trt_build.load_trt("auto")


def test_auto_falls_back_to_rtx(trt_rtx, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert trt_build.load_trt("auto") == (trt_rtx, "tensorrt-rtx")


def test_compute_capability_refused_for_datacenter(trt_rtx, built, monkeypatch, tmp_path):
    monkeypatch.setattr(trt_build, "load_trt", lambda backend: (trt_rtx, "tensorrt"))
    with pytest.raises(BackendError, match="TensorRT-RTX option"):
        trt_build.build_engine(built["fp32"][0], tmp_path / "e", profiles={"x": BATCH}, compute_capability="8.6")


def test_static_graph_and_several_profiles(trt_rtx, built, tmp_path):
    static = _save(tmp_path / "static.onnx", [helper.make_node("Relu", ["x"], ["y"], name="relu")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    facts = trt_build.build_engine(static, tmp_path / "static.engine", backend="tensorrt-rtx")
    assert facts["profiles"] == [{"x": {"min": [2, 3], "opt": [2, 3], "max": [2, 3]}}]  # TensorRT's implicit one
    two = [trt_build.Profile({"x": ((1, 16), (1, 16), (1, 16))}), {"x": BATCH}]
    facts = trt_build.build_engine(built["fp32"][0], tmp_path / "two.engine", profiles=two, backend="tensorrt-rtx")
    assert [p["x"]["max"] for p in facts["profiles"]] == [[1, 16], [32, 16]]


def test_raising_progress_cancels_the_build(trt_rtx, built, tmp_path):
    def stop(phase, done, total):
        if done == 2:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        trt_build.build_engine(built["fp32"][0], tmp_path / "a.engine", profiles={"x": BATCH},
                               backend="tensorrt-rtx", progress=stop)
    assert not list(tmp_path.iterdir())


def test_gc_of_tensorrt_objects_during_callbacks_does_not_deadlock(trt_rtx, built, tmp_path):
    # TensorRT-RTX deadlocks if the GC frees a Builder inside a TensorRT callback (logger/progress);
    # build_engine pauses the GC during TensorRT calls. Run in a subprocess so a regression cannot hang CI.
    script = textwrap.dedent(f"""
        import gc, logging, tensorrt_rtx_bindings as trt
        from wn_export.backends.tensorrt import build as trt_build
        class GcOnLog(logging.Handler):  # allocations that trigger an automatic collection
            def emit(self, record): [[] for _ in range(60000)]
        logger = logging.getLogger("wn_export.backends.tensorrt.build")
        logger.setLevel(logging.DEBUG); logger.addHandler(GcOnLog())
        gc.collect(); gc.set_threshold(50000)  # no automatic collection before the handler's
        class Holder: pass
        h = Holder(); h.cycle = h; h.builder = trt.Builder(trt.Logger(trt.Logger.ERROR)); del h
        # TensorRT logs "logger differs" through our logger while creating the new Builder; the
        # handler's GC then frees the old Builder inside that callback.
        trt_build.build_engine({str(built["fp32"][0])!r}, {str(tmp_path / "a.engine")!r},
                               profiles={{"x": {BATCH!r}}}, backend="tensorrt-rtx")
        print("built")
    """)
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        pytest.fail("build_engine deadlocked when the GC freed a TensorRT Builder inside a log callback")
    assert run.returncode == 0 and "built" in run.stdout, run.stderr[-2000:]
