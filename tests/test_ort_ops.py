"""The native ONNX Runtime host library (plugins/ort): the fused `WaveNetLayers` and `WaveNetHead` ops
against float64 references, the session-time fusion of lowered step graphs, the native sampler, and the build's errors.

Speed lives in `wn-export bench` (rows `onnxruntime` vs `onnxruntime (standard ops)`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import CONFIGS, random_model
from onnx import TensorProto, helper, numpy_helper

from reference_model import save_checkpoint
from reference_model.sampling import draw
from wn_export.backends.onnxruntime import native as ort_ops
from wn_export.backends.onnxruntime.fusion import HEAD_OP, OP, fuse_layers, pack_panels
from wn_export.backends.onnxruntime.runner import OrtStepRunner
from wn_export.contract.manifest import read_manifest
from wn_export.errors import BackendError
from wn_export.export.pipeline import export_directory
from wn_export.generation.generator import Sampler


@pytest.fixture(scope="module")
def lib():
    return str(ort_ops.library())


def session(model: onnx.ModelProto, lib: str | None):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if lib:
        opts.register_custom_ops_library(lib)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def layers_model(w_gate, w_out, w_skip, b_skip, R, alpha, beta, shared_gate_in=False, skip_scale=None):
    """One WaveNetLayers node; w_gate (L, P + R, 2G) holds the past-tap rows, then the current tap's.
    The weights are given as matrices (float32, or float16: 16-bit weights) and stored packed, as the op
    takes them."""
    L, PR, G2 = w_gate.shape
    P, S = PR - R, w_skip.shape[2]
    attrs = dict(alpha=list(alpha), beta=list(beta)) if L > 1 else {}
    if skip_scale is not None:
        attrs["skip_scale"] = float(skip_scale)
    node = helper.make_node(OP, ["x0", "taps", "gate_in", "w_gate", "w_out", "w_skip", "b_skip"], ["skip", "x"],
                            domain=ort_ops.DOMAIN, **attrs)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "layers",
        [helper.make_tensor_value_info("x0", f, ["B", R]), helper.make_tensor_value_info("taps", f, ["B", L, P]),
         helper.make_tensor_value_info("gate_in", f, [L * G2] if shared_gate_in else ["B", L * G2])],
        [helper.make_tensor_value_info("skip", f, ["B", S]), helper.make_tensor_value_info("x", f, ["B", L * R])],
        [numpy_helper.from_array(w, n) for w, n in ((pack_panels(w_gate), "w_gate"), (pack_panels(w_out), "w_out"),
                                                    (pack_panels(w_skip), "w_skip"), (b_skip, "b_skip"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ort_ops.DOMAIN, 1)])


def layers_reference(x0, taps, gate_in, w_gate, w_out, w_skip, b_skip, alpha, beta, skip_scale=1.0):
    """The op's contract (plugins/ort/README.md) in float64 → (skip, x)."""
    L, _, G2 = w_gate.shape
    G = G2 // 2
    x = x0.astype(np.float64)
    gate_in = np.broadcast_to(gate_in, (x0.shape[0], L * G2)).astype(np.float64)
    skip, xs = np.broadcast_to(b_skip.astype(np.float64), (x0.shape[0], w_skip.shape[2])).copy(), []
    for layer in range(L):
        xs.append(x)
        inputs = np.concatenate([taps[:, layer].astype(np.float64), x], axis=1)  # [past taps | x_l]
        acc = gate_in[:, layer * G2:(layer + 1) * G2] + inputs @ w_gate[layer].astype(np.float64)
        h = np.tanh(acc[:, :G]) / (1.0 + np.exp(-acc[:, G:]))
        skip += h @ w_skip[layer].astype(np.float64)
        if layer + 1 < L:
            x = alpha[layer] * (h @ w_out[layer].astype(np.float64)) + beta[layer] * x
    return skip * skip_scale, np.concatenate(xs, axis=1)


def random_layers(rng, B, R, G, L, K, S, shared=False):
    """Weights, attributes and inputs of a random WaveNetLayers problem."""
    P = (K - 1) * R
    w = dict(w_gate=(rng.standard_normal((L, P + R, 2 * G)) / np.sqrt(P + R)).astype(np.float32),
             w_out=(rng.standard_normal((L - 1, G, R)) / np.sqrt(G)).astype(np.float32),
             w_skip=(rng.standard_normal((L, G, S)) / np.sqrt(G)).astype(np.float32),
             b_skip=rng.standard_normal(S).astype(np.float32))
    alpha, beta = rng.uniform(0.5, 1.0, L - 1).astype(np.float32), rng.uniform(0.5, 1.0, L - 1).astype(np.float32)
    feeds = {"x0": rng.standard_normal((B, R)).astype(np.float32),
             "taps": rng.standard_normal((B, L, P)).astype(np.float32),
             "gate_in": rng.standard_normal((L * 2 * G,) if shared else (B, L * 2 * G)).astype(np.float32)}
    return w, alpha, beta, feeds


# ---- the op ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B, R, G, L, K, S, shared", [
    (1, 64, 64, 30, 2, 256, False), (64, 64, 64, 3, 2, 32, False), (2, 6, 5, 3, 3, 7, False),
    (5, 13, 20, 4, 2, 9, True), (7, 24, 16, 2, 4, 16, False), (13, 8, 3, 5, 2, 5, False), (6, 17, 9, 3, 3, 24, True),
    (3, 4, 4, 1, 2, 3, False), (20, 8, 8, 3, 2, 8, False)])
def test_layers_op_matches_the_float64_contract(lib, B, R, G, L, K, S, shared):
    w, alpha, beta, feeds = random_layers(np.random.default_rng(B * 100 + R + G + L), B, R, G, L, K, S, shared)
    model = layers_model(w["w_gate"], w["w_out"], w["w_skip"], w["b_skip"], R, alpha, beta, shared_gate_in=shared)
    skip, x = session(model, lib).run(None, feeds)
    want_skip, want_x = layers_reference(feeds["x0"], feeds["taps"], feeds["gate_in"], w["w_gate"], w["w_out"],
                                         w["w_skip"], w["b_skip"], alpha, beta)
    assert skip.shape == want_skip.shape and x.shape == want_x.shape
    assert np.abs(skip - want_skip).max() < 1e-5 * max(1.0, np.abs(want_skip).max())
    assert np.abs(x - want_x).max() < 1e-5 * max(1.0, np.abs(want_x).max())


@pytest.mark.parametrize("op", [OP, HEAD_OP])
@pytest.mark.parametrize("B", [1, 2, 3, 8, 16, 17])
def test_the_helper_thread_changes_no_bit(lib, B, op):
    """With the helper thread (the pipeline up to batch 16, half the streams each from 17 on) and without it the
    ops return identical bits, call after call: the skip projections accumulate in layer order whichever thread
    computes them, and each head column or stream is computed by the same code on either thread."""
    import ctypes
    import time

    native = ctypes.CDLL(lib)
    native.wn_ort_ops_helped_tasks.restype = ctypes.c_int64
    rng = np.random.default_rng(B)
    if op == OP:
        w, alpha, beta, _ = random_layers(rng, B, 16, 8, 12, 2, 24)
        sess = session(layers_model(w["w_gate"], w["w_out"], w["w_skip"], w["b_skip"], 16, alpha, beta), lib)
        problems = [random_layers(rng, B, 16, 8, 12, 2, 24)[3] for _ in range(7)]  # different inputs each call
    else:
        sess = session(head_model(*random_head(rng, 24, 40, 33)), lib)
        problems = [{"skip": rng.standard_normal((B, 24)).astype(np.float32)} for _ in range(7)]
    try:
        native.wn_ort_ops_set_helper(0)
        alone = [sess.run(None, feeds) for feeds in problems]
        native.wn_ort_ops_set_helper(1)
        before, calls, start = native.wn_ort_ops_helped_tasks(), 0, time.monotonic()
        while calls < 200 or (native.wn_ort_ops_helped_tasks() == before
                              and time.monotonic() - start < 5):
            for a, b in zip(alone[calls % 7], sess.run(None, problems[calls % 7])):
                assert np.array_equal(a, b)
            calls += 1
        helped = native.wn_ort_ops_helped_tasks() - before
        assert helped > 0  # the helper took part: the pipeline up to batch 16, half the streams from 17 on
    finally:
        native.wn_ort_ops_set_helper(1)


@pytest.mark.parametrize("R, G", [(24, 11), (16, 11), (24, 8), (40, 64)])
def test_every_split_gives_the_same_bits(lib, R, G):
    """The pipeline (the helper's past-tap layers continue on the caller as x_l's rows), the caller alone (one GEMM
    over [taps_l | x_l]) and the two halves of the batch give identical bits, for widths whose gate (2G) or residual
    (R) is no multiple of the 16-column panel (the scalar column tail, where the compiler once fused one form and not
    the other)."""
    import ctypes

    native = ctypes.CDLL(lib)
    native.wn_ort_ops_set_policy.argtypes = [ctypes.c_int64, ctypes.c_int64]
    outs = {}
    try:
        for name, policy in (("alone", (0, 10**9)), ("pipeline", (10**9, 10**9)), ("rows", (0, 2))):
            native.wn_ort_ops_set_policy(*policy)
            for B in (1, 3, 8):
                w, alpha, beta, feeds = random_layers(np.random.default_rng(B), B, R, G, 12, 2, 24)
                sess = session(layers_model(w["w_gate"], w["w_out"], w["w_skip"], w["b_skip"], R, alpha, beta), lib)
                outs[name, B] = sess.run(None, feeds)
    finally:
        native.wn_ort_ops_set_policy(16, 17)
    for B in (1, 3, 8):
        for name in ("pipeline",) + (("rows",) if B > 1 else ()):
            for a, b in zip(outs["alone", B], outs[name, B]):
                assert np.array_equal(a, b), (name, B)


def test_the_last_skip_projection_waits_for_the_layers_before(lib):
    """The last layer's skip projection is two tasks, its column halves, one per thread; each must start after the
    layers before it (the skip sum accumulates in layer order). With skip projections far heavier than the chain,
    the helper is still on earlier layers when the caller turns to them: the bits must still be one thread's."""
    import ctypes

    native = ctypes.CDLL(lib)
    rng = np.random.default_rng(5)
    w, alpha, beta, _ = random_layers(rng, 1, 8, 8, 6, 2, 4096)
    sess = session(layers_model(w["w_gate"], w["w_out"], w["w_skip"], w["b_skip"], 8, alpha, beta), lib)
    problems = [random_layers(rng, 1, 8, 8, 6, 2, 4096)[3] for _ in range(5)]
    try:
        native.wn_ort_ops_set_helper(0)
        alone = [sess.run(None, feeds)[0] for feeds in problems]
        native.wn_ort_ops_set_helper(1)
        for call in range(300):
            assert np.array_equal(alone[call % 5], sess.run(None, problems[call % 5])[0])
    finally:
        native.wn_ort_ops_set_helper(1)


@pytest.mark.parametrize("B, R, G, L, K, S, shared", [
    (1, 64, 64, 30, 2, 256, False), (2, 6, 5, 3, 3, 7, False), (5, 13, 20, 4, 2, 9, True), (20, 8, 8, 3, 2, 8, False)])
def test_layers_op_with_16_bit_weights_matches_the_float64_contract(lib, B, R, G, L, K, S, shared):
    """float16 weights, float32 arithmetic: the contract evaluated in float64 on the float16 values."""
    w, alpha, beta, feeds = random_layers(np.random.default_rng(B + R + G + L), B, R, G, L, K, S, shared)
    half = {k: v.astype(np.float16) for k, v in w.items() if k != "b_skip"}
    model = layers_model(half["w_gate"], half["w_out"], half["w_skip"], w["b_skip"], R, alpha, beta,
                         shared_gate_in=shared, skip_scale=0.7)
    assert {i.data_type for i in model.graph.initializer if i.name != "b_skip"} == {TensorProto.FLOAT16}
    skip, x = session(model, lib).run(None, feeds)
    want_skip, want_x = layers_reference(feeds["x0"], feeds["taps"], feeds["gate_in"], half["w_gate"], half["w_out"],
                                         half["w_skip"], w["b_skip"], alpha, beta, skip_scale=0.7)
    assert np.abs(skip - want_skip).max() < 1e-5 * max(1.0, np.abs(want_skip).max())
    assert np.abs(x - want_x).max() < 1e-5 * max(1.0, np.abs(want_x).max())


def test_ops_refuse_weights_of_mixed_precision(lib):
    w, alpha, beta, feeds = random_layers(np.random.default_rng(0), 2, 8, 4, 3, 2, 5)
    model = layers_model(w["w_gate"].astype(np.float16), w["w_out"], w["w_skip"], w["b_skip"], 8, alpha, beta)
    with pytest.raises(Exception, match="WaveNetLayers: w_gate, w_out and w_skip must all be float32 or all float16"):
        session(model, lib).run(None, feeds)
    w1, b1, w2, b2 = random_head(np.random.default_rng(0), 8, 6, 4)
    with pytest.raises(Exception, match="WaveNetHead: w1 and w2 must both be float32 or both float16"):
        session(head_model(w1.astype(np.float16), b1, w2, b2), lib).run(None, {"skip": np.zeros((2, 8), np.float32)})


def test_gate_activations_are_accurate_over_the_whole_range(lib):
    """With zero weights h = tanh(C_a)·σ(C_b): tanh and σ against float64 from −88 to 88 and near 0."""
    n = 4096
    v = np.concatenate([np.linspace(-30, 30, n - 16), [1e-8, -1e-8, 1e-5, -1e-5, 1e-3, -1e-3, 0.0, -0.0,
                                                       7.9, 8.0, -7.9, -8.0, 9.0, 10.0, 88.0, -88.0]]).astype(np.float32)
    big = np.full_like(v, 30.0)  # σ(30) = 1 − 9e-14, tanh(30) = 1 in float32
    gate_in = np.concatenate([v, big, big, v])[None]  # layer 0: tanh(v)·σ(30); layer 1: tanh(30)·σ(v)
    eye = np.zeros((2, n, 2 * n), np.float32)  # the skip projection of layer l copies h_l into columns l·n …
    eye[0, :, :n] = eye[1, :, n:] = np.eye(n, dtype=np.float32)
    model = layers_model(np.zeros((2, 2, 2 * n), np.float32), np.zeros((1, n, 1), np.float32), eye,
                         np.zeros(2 * n, np.float32), 1, [1.0], [1.0])
    h, _ = session(model, lib).run(None, {"x0": np.zeros((1, 1), np.float32), "taps": np.zeros((1, 2, 1), np.float32),
                                          "gate_in": gate_in})
    vd = v.astype(np.float64)
    assert np.abs(h[0, :n] - np.tanh(vd) / (1 + np.exp(-30.0))).max() < 1e-6
    assert np.abs(h[0, n:] - np.tanh(30.0) / (1 + np.exp(-vd))).max() < 1e-6
    assert np.all(np.abs(h) <= 1.0)


def test_layers_op_reports_inconsistent_shapes(lib):
    model = layers_model(np.zeros((3, 8, 6), np.float32), np.zeros((2, 3, 4), np.float32),
                         np.zeros((3, 3, 5), np.float32), np.zeros(5, np.float32), 4, [1.0], [1.0])
    with pytest.raises(Exception, match="WaveNetLayers: inconsistent shapes.*alpha/beta 1/1"):
        session(model, lib).run(None, {"x0": np.zeros((2, 4), np.float32), "taps": np.zeros((2, 3, 4), np.float32),
                                       "gate_in": np.zeros((2, 18), np.float32)})


def head_model(w1, b1, w2, b2):
    """One WaveNetHead node over matrices w1 (S, H), w2 (H, Q), stored packed."""
    f = TensorProto.FLOAT
    node = helper.make_node(HEAD_OP, ["skip", "w1", "b1", "w2", "b2"], ["out"], domain=ort_ops.DOMAIN)
    graph = helper.make_graph(
        [node], "head", [helper.make_tensor_value_info("skip", f, ["B", "S"])],
        [helper.make_tensor_value_info("out", f, ["B", w2.shape[1]])],
        [numpy_helper.from_array(pack_panels(w1), "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(pack_panels(w2), "w2"), numpy_helper.from_array(b2, "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ort_ops.DOMAIN, 1)])


def random_head(rng, S, H, Q):
    return [(rng.standard_normal(shape) / np.sqrt(shape[0] if len(shape) == 2 else 1)).astype(np.float32)
            for shape in ((S, H), (H,), (H, Q), (Q,))]


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("B, S, H, Q", [(1, 256, 256, 256), (3, 7, 5, 9), (16, 40, 33, 17), (17, 64, 48, 256),
                                        (70, 24, 16, 10), (2, 5, 1, 3)])
def test_head_op_matches_the_float64_contract(lib, B, S, H, Q, half):
    rng = np.random.default_rng(B + S + H + Q)
    w1, b1, w2, b2 = random_head(rng, S, H, Q)
    if half:  # 16-bit weights: the contract on the float16 values
        w1, w2 = w1.astype(np.float16), w2.astype(np.float16)
    skip = rng.standard_normal((B, S)).astype(np.float32)
    (out,) = session(head_model(w1, b1, w2, b2), lib).run(None, {"skip": skip})
    f = lambda a: a.astype(np.float64)  # noqa: E731
    want = np.maximum(np.maximum(f(skip), 0) @ f(w1) + f(b1), 0) @ f(w2) + f(b2)
    assert out.shape == (B, Q)
    assert np.abs(out - want).max() < 1e-5 * max(1.0, np.abs(want).max())


def test_head_op_reports_inconsistent_shapes(lib):
    w1, b1, w2, b2 = random_head(np.random.default_rng(0), 8, 6, 4)
    with pytest.raises(Exception, match=r"WaveNetHead: inconsistent shapes.*got \(2,9\)"):
        session(head_model(w1, b1, w2, b2), lib).run(None, {"skip": np.zeros((2, 9), np.float32)})


# ---- the fusion ----------------------------------------------------------------------------------
FUSED_EXPORTS = [("k2", "ring"), ("k3-odd", "ring"), ("conditioned", "ring"), ("explicit-dilations", "ring")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    out = {}
    for name, layout in [*FUSED_EXPORTS, ("k2", "full")]:
        ckpt = root / f"{name}.safetensors"
        if not ckpt.exists():
            save_checkpoint(random_model(CONFIGS[name], seed=5), ckpt)
        out[name, layout] = root / f"{name}-{layout}"
        export_directory(out[name, layout], ckpt, layout=layout, fp16=True, w16=layout == "ring")
    return out


def random_feeds(sess, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch if isinstance(d, str) else d for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(0, 3, shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float16 if "float16" in i.type else np.float32)
    return feeds


@pytest.mark.parametrize("graph", ["step", "step.w16"])
@pytest.mark.parametrize("name, layout", FUSED_EXPORTS)
def test_fusion_replaces_the_layer_chain_and_computes_the_same_step(exports, lib, name, layout, graph):
    """The fused session computes what the standard session of the same graph computes: for step.w16 both use
    the float16 weights (the standard one widens them once, the fused ops as they stream them)."""
    lowered = onnx.load(str(exports[name, layout] / f"{graph}.onnx"))
    fused = fuse_layers(lowered)
    assert fused is not None
    packed = {i.name: i.data_type for i in fused.graph.initializer if i.name.startswith("wn_fused.w_")}
    assert set(packed.values()) == {TensorProto.FLOAT16 if graph == "step.w16" else TensorProto.FLOAT}
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count(OP) == 1 and ops.count(HEAD_OP) == 1
    assert not {"Tanh", "Sigmoid", "Split", "MatMul", "Transpose", "Relu"} & set(ops)
    assert ops.count("Gemm") <= 2  # conditioning only: the skip and head Gemms are in the ops
    assert len(fused.graph.node) < len(lowered.graph.node) - 3 * CONFIGS[name].layers
    onnx.checker.check_model(fused)
    plain, fast = session(lowered, None), session(fused, lib)
    for batch in (1, 3):
        feeds = random_feeds(plain, batch, seed=batch)
        for a, b in zip(plain.run(None, feeds), fast.run(None, feeds)):
            assert a.shape == b.shape
            assert np.abs(a - b).max() < 1e-5 * max(1.0, np.abs(a).max())


def test_fusion_declines_graphs_it_does_not_know(exports):
    d = exports["k2", "ring"]
    assert fuse_layers(onnx.load(str(d / "step.fp16.onnx"))) is None  # FP16 graphs are not lowered
    assert fuse_layers(onnx.load(str(d / "scoring.onnx"))) is None
    assert fuse_layers(onnx.load(str(exports["k2", "full"] / "step.onnx"))) is None  # per-layer state updates
    lowered = onnx.load(str(d / "step.onnx"))
    tapped = onnx.ModelProto()
    tapped.CopyFrom(lowered)  # an intermediate that is also a graph output cannot disappear
    mul = next(n for n in tapped.graph.node if n.op_type == "Mul")
    tapped.graph.output.append(helper.make_tensor_value_info(mul.output[0], TensorProto.FLOAT, None))
    assert fuse_layers(tapped) is None
    relu = onnx.ModelProto()
    relu.CopyFrom(lowered)  # a different activation is a different function
    next(n for n in relu.graph.node if n.op_type == "Tanh").op_type = "Relu"
    assert fuse_layers(relu) is None
    assert fuse_layers(lowered) is not None  # the originals are untouched


def test_runner_uses_the_fused_chain_where_it_applies(exports, lib):
    manifest = read_manifest(exports["k2", "ring"])
    with OrtStepRunner(manifest) as runner:
        assert runner.setup.startswith("fused") and runner.is_fused
    with OrtStepRunner(manifest, fused=False) as runner:
        assert runner.setup == "standard ONNX ops" and not runner.is_fused
    with OrtStepRunner(manifest, "step.fp16") as runner:
        assert runner.setup == "standard ONNX ops"
        assert runner.unfused.startswith("step.fp16.onnx has no fusable layer chain")
    with OrtStepRunner(read_manifest(exports["k2", "full"])) as runner:
        assert runner.setup == "standard ONNX ops" and "ring state layout" in runner.unfused
    with pytest.raises(BackendError, match="no fusable layer chain"):
        OrtStepRunner(manifest, "step.fp16", fused=True).activate()


# ---- the build ---------------------------------------------------------------------------------------
@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty library cache and no memoised library or sampler."""
    monkeypatch.setenv("WN_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_ops, "_cache", {})
    monkeypatch.setattr(ort_ops, "_sampler", [])
    return tmp_path


def test_missing_compiler_is_one_clear_error_and_the_host_falls_back(fresh_build, monkeypatch, exports):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(BackendError, match="needs a C\\+\\+17 compiler: 'no-such-compiler' was not found"):
        ort_ops.library()
    manifest = read_manifest(exports["k2", "ring"])
    with OrtStepRunner(manifest) as runner:
        assert runner.setup == "standard ONNX ops"
        assert runner.unfused.startswith("the native ONNX Runtime host library needs a C++17 compiler")
    with pytest.raises(BackendError, match="fused ONNX Runtime layers unavailable"):
        OrtStepRunner(manifest, fused=True).activate()
    assert Sampler(1, 8)._native is None
    with pytest.raises(BackendError, match="compiler"):
        Sampler(1, 8, native=True)


def test_a_failing_compile_names_the_error_and_leaves_no_library(fresh_build, monkeypatch):
    plugins = fresh_build / "plugins" / "ort"
    (plugins / "third_party" / "onnxruntime").mkdir(parents=True)
    src = ort_ops.plugin_dir()
    for name in (*ort_ops.SOURCES, *ort_ops.HEADERS):
        (plugins / name).write_text((src / name).read_text())
    header = "third_party/onnxruntime/onnxruntime_c_api.h"
    (plugins / header).write_text((src / header).read_text())
    (plugins / "sampler.cc").write_text("this is not C++\n")
    monkeypatch.setenv("WN_EXPORT_PLUGINS", str(fresh_build / "plugins"))
    with pytest.raises(BackendError, match="compiling libwn_ort_ops.so failed .*sampler.cc.*error"):
        ort_ops.library()
    cache = fresh_build / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no library, no temporary left behind
    (plugins / "wn_ort_ops.cc").unlink()
    with pytest.raises(BackendError, match="wn_ort_ops.cc are missing|wn_ort_ops.cc is missing|are missing"):
        ort_ops.library()


def test_the_library_is_built_once_and_reused(fresh_build):
    first = ort_ops.library()
    assert first.is_file() and first.parent.parent == fresh_build / "cache" / "ort_ops"
    mtime = first.stat().st_mtime_ns
    ort_ops._cache.clear()
    assert ort_ops.library() == first and first.stat().st_mtime_ns == mtime  # the cache, not a rebuild


# ---- the native sampler ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch, classes, temperature", [(1, 256, 1.0), (1, 256, 0.6), (3, 17, 1.0),
                                                         (8, 256, 1.4), (64, 32, 0.9)])
def test_native_sampler_draws_exactly_the_reference_tokens(batch, classes, temperature):
    native = Sampler(batch, classes, "sample", temperature, native=True)
    numpy_ = Sampler(batch, classes, "sample", temperature, native=False)
    assert native._native is not None and numpy_._native is None
    rng = np.random.default_rng(batch + classes)
    for _ in range(400):
        logits = (rng.standard_normal((batch, classes)) * rng.uniform(0.1, 30)).astype(np.float32)
        u = rng.random((batch, 1))
        want = draw(logits, "sample", u[:, 0], temperature)
        assert np.array_equal(native(logits, u), want)
        assert np.array_equal(numpy_(logits, u), want)


def test_native_sampler_handles_degenerate_rows_like_numpy():
    logits = np.array([[0.0, np.nan, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0], [-1e30, 0.0, -1e30, -1e30]], np.float32)
    u = np.array([[0.5], [0.999999], [0.0]])
    want = draw(logits, "sample", u[:, 0], 1.0)
    assert np.array_equal(Sampler(3, 4, native=True)(logits, u), want)
    assert want.tolist() == [0, 3, 1]
