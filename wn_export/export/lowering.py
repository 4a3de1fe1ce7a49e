"""Lowering of the exported FP32 step graph to a 2-D Gemm graph: an ONNX rewrite after export.

The step graph is first traced from the one code path, `WaveNet.run` (via `StepGraph`), so it computes
the reference function by construction. That traced graph keeps the sequence model's (batch, channels,
time) layout with time = 1: every 1×1 convolution is a `Conv` on a length-1 signal, the dilated
convolution a `Conv` over a (K-column) window, and the skip sum an `Add` chain of L terms. On a CPU
backend each of those nodes costs more in dispatch than in arithmetic. This pass matches the traced
graph node by node and re-emits the same function with the time axis dropped:

| traced (per layer)                                     | lowered                                        |
|--------------------------------------------------------|------------------------------------------------|
| Concat(past taps, x) on time → Conv(W, b), 1 output   | past taps of ALL layers: one batched MatMul    |
|                                                        | (+ biases, cond and speaker projections: Gemms)|
|                                                        | split into per-layer, per-half Gemm C inputs   |
| … → Split → Tanh, Sigmoid → Mul                        | Gemm(x, W_cur half, C) → Tanh / Sigmoid (ORT   |
|                                                        | fuses each pair into one FusedGemm) → Mul      |
| out Conv 1×1 + Slice(window) + Add [× √0.5]            | Gemm(h, W_out, C = x) [α = β = √0.5]: the      |
|                                                        | residual biases are folded (below)             |
| skip Conv 1×1 → Add chain over the layers [× scalars]  | Concat(h₀…h_L−1) → one Gemm (Σ of the biases)  |
| head ReLU–Conv–ReLU–Conv, Transpose, Gather(time 0)    | ReLU–Gemm–ReLU–Gemm                            |

Four nodes per layer remain (two fused Gemms, Mul, Gemm): on a CPU each node costs ~0.5–1 µs of
dispatch, which is what the step loop pays at batch 1. The residual biases are folded: the chain
carries x̃_l = x_l − c_l (c₀ = 0, c_{l+1} = s·(c_l + b_out,l)); each gate adds W_cur·c_l to its bias
and the ring update adds c back (the state holds the true layer inputs, as the contract says).

Weights are the traced graph's own initializers (re-laid out, never re-derived from the model). The
match is strict: every node of the traced graph must be accounted for, or `NoMatch` is
raised and the caller keeps the traced graph. `StepGraph.lower_onnx` then checks the lowered graph
numerically against the wrapper (the traced function) before it is written. Only the order of
summation changes (the packed skip Gemm sums the L skip projections inside one dot product, the
past/current taps and the residual biases are added separately), so FP32 results differ from the
traced graph at rounding level (~1e-7 relative). FP16 graphs are not lowered: their precision policy
(skip sum in FP32) is spelled out per layer, and TensorRT fuses such graphs itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from wn_export.errors import ExportError
from wn_export.export.graph_match import GraphIndex, NoMatch, fail
from wn_export.export.wrappers import example_inputs

_FLOAT = TensorProto.FLOAT
_BIG = 2**62  # Slice "to the end" ends are INT64_MAX in traced graphs


def _is_time_axis(axis) -> bool:
    return axis in (2, -1)


def _conv(t: GraphIndex, n, kernel: int, dilation: int | None = None):
    """A Conv1d node's (weight (O, I, K), bias or None), checking the attributes the lowering assumes."""
    a = t.attrs(n)
    if a.get("group", 1) != 1 or list(a.get("strides", [1])) != [1] or any(a.get("pads", [0, 0])):
        fail(f"conv {n.name} has groups, strides or padding")
    if dilation is not None and list(a.get("dilations", [1])) != [dilation]:
        fail(f"conv {n.name} has dilation {a.get('dilations')}, expected {dilation}")
    w = t.const(n.input[1])
    if w.ndim != 3 or w.shape[2] != kernel:
        fail(f"conv {n.name} weight {w.shape} is not a kernel-{kernel} Conv1d")
    b = t.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    return w.astype(np.float32), None if b is None else b.astype(np.float32)


def _split_sizes(t: GraphIndex, n) -> list[int]:
    if len(n.input) > 1 and n.input[1]:
        return [int(v) for v in t.const(n.input[1])]
    return [int(v) for v in t.attrs(n).get("split", [])]


def _slice(t: GraphIndex, n) -> tuple[int, int, int, int]:
    starts, ends = (int(t.const(n.input[i])[0]) for i in (1, 2))
    axes = int(t.const(n.input[3])[0]) if len(n.input) > 3 and n.input[3] else 0
    steps = int(t.const(n.input[4])[0]) if len(n.input) > 4 and n.input[4] else 1
    return starts, ends, axes, steps


def _scalar(t: GraphIndex, mul) -> tuple[str, float] | None:
    """Mul(x, scalar constant) → (x, scalar); None when it is not one."""
    for i, j in ((0, 1), (1, 0)):
        v = t.values.get(mul.input[j])
        if v is not None and v.size == 1:
            t.const(mul.input[j])
            return mul.input[i], float(v.reshape(()))
    return None


class _Layer:
    def __init__(self):
        self.past = self.x = self.h = self.x_next = self.window = None
        self.w = self.b = None  # dilated conv (G, R, K), (G,)
        self.cond_w = self.spk_w = None  # (G, C), (E, G)
        self.out_w = self.out_b = None
        self.skip_w = self.skip_b = None
        self.scale = None
        self.next_state = None  # full layout: name of the state output


def _match(model: onnx.ModelProto, spec, cfg) -> dict:
    """The traced step graph → its plan (weights and the tensors the lowered graph reads), or `NoMatch`."""
    t = GraphIndex(model)
    ring = spec.layout == "ring"
    names = {s.role: s.name for s in spec.inputs if s.role in ("token", "cond", "speaker", "position")}
    if "token" not in names or spec.layout not in ("ring", "full"):
        fail("only token-input models are lowered")
    outputs = [o.name for o in model.graph.output]
    if outputs[0] != "logits" or (ring and outputs[1:] != ["state_update"]):
        fail(f"unexpected outputs {outputs}")
    plan: dict = {"layers": []}
    x = _match_embedding(t, names["token"], plan)
    cond3, spk = _match_conditioning(t, cfg, names, plan)
    taps_split = _match_ring_taps(t, cfg, names["position"], plan) if ring else None
    convs = [n for n in t.nodes if n.op_type == "Conv" and list(t.attrs(n).get("kernel_shape", [])) == [cfg.kernel_size]]
    if len(convs) != cfg.layers:
        fail(f"found {len(convs)} kernel-{cfg.kernel_size} convolutions for {cfg.layers} layers")
    skip_terms = []
    for li, (cv, d) in enumerate(zip(convs, cfg.layer_dilations)):
        ly = _match_layer(t, cfg, li, cv, d, x, taps_split, cond3, spk, skip_terms)
        plan["layers"].append(ly)
        x = ly.x_next
    acc = _match_skip_sum(t, skip_terms, plan)
    _match_head(t, acc, plan)
    if ring:
        _match_state_update(t, plan)
    left = t.unmatched()
    if left:
        fail(f"unmatched nodes: {', '.join(left[:5])}")
    return plan


def _match_embedding(t: GraphIndex, token: str, plan: dict) -> str:
    """Unsqueeze(token) → Gather(embed) → Transpose(0, 2, 1): the first layer's input."""
    u = t.only_consumer(token, "Unsqueeze")
    emb = t.only_consumer(u.output[0], "Gather")
    if emb.input[1] != u.output[0] or t.attrs(emb).get("axis", 0) != 0:
        fail("unexpected embedding gather")
    t.const(u.input[1])
    plan["embed"] = t.const(emb.input[0]).astype(np.float32)
    tr = t.only_consumer(emb.output[0], "Transpose")
    if list(t.attrs(tr)["perm"]) != [0, 2, 1]:
        fail("unexpected embedding transpose")
    return tr.output[0]


def _match_conditioning(t: GraphIndex, cfg, names: dict, plan: dict) -> tuple[str | None, str | None]:
    """(the (B, C, 1) conditioning tensor, the gathered speaker embedding), each None when absent."""
    cond3 = spk = None
    if cfg.local:
        cond3 = t.skip_casts(names["cond"])
        unsq = t.only_consumer(cond3, "Unsqueeze")
        if [int(v) for v in t.const(unsq.input[1])] not in ([2], [-1]):
            fail("unexpected conditioning unsqueeze")
        cond3 = unsq.output[0]
    if cfg.global_:
        g = t.only_consumer(names["speaker"], "Gather")
        plan["speaker_embed"] = t.const(g.input[0]).astype(np.float32)
        spk = g.output[0]
    return cond3, spk


def _match_ring_taps(t: GraphIndex, cfg, position: str, plan: dict):
    """Gather(state, idx, axis=1) → Transpose(0, 2, 1) → Split(K−1 columns per layer); the index
    computation from `position` is kept as it is (plan["index"])."""
    K, L = cfg.kernel_size, cfg.layers
    gat = t.only_consumer("state", "Gather")
    if t.attrs(gat).get("axis") != 1 or gat.input[0] != "state":
        fail("unexpected ring gather")
    tr = t.only_consumer(gat.output[0], "Transpose")
    if list(t.attrs(tr)["perm"]) != [0, 2, 1]:
        fail("unexpected tap transpose")
    taps_split = t.only_consumer(tr.output[0], "Split")
    if not _is_time_axis(t.attrs(taps_split).get("axis")) or _split_sizes(t, taps_split) != [K - 1] * L:
        fail("unexpected tap split")
    idx_nodes, stack = [], [gat.input[1]]
    while stack:
        name = stack.pop()
        if name in t.inputs:
            if name != position:
                fail(f"tap index depends on input {name}")
            continue
        if name in t.values:
            t.const(name)
            continue
        n = t.producer.get(name) or fail(f"tap index input {name} has no producer")
        t.take(n)
        idx_nodes.append(n)
        stack.extend(n.input)
    plan["index"] = (gat.input[1], [n for n in t.nodes if n in idx_nodes])
    return taps_split


def _match_layer(t: GraphIndex, cfg, li: int, cv, d: int, x: str, taps_split, cond3, spk,
                 skip_terms: list) -> _Layer:
    """One residual layer from its dilated Conv: window, gate inputs, gate, projections, [full state]."""
    ring, K = taps_split is not None, cfg.kernel_size
    ly = _Layer()
    t.take(cv)
    dil = 1 if ring else d
    ly.w, ly.b = _conv(t, cv, K, dil)
    cat = t.made_by(cv.input[0], "Concat")
    if not _is_time_axis(t.attrs(cat)["axis"]) or len(cat.input) != 2 or cat.input[1] != x:
        fail(f"layer {li}: window is not Concat(past, layer input)")
    ly.window, ly.x, ly.past = cat.output[0], x, cat.input[0]
    if ring:
        if ly.past != taps_split.output[li]:
            fail(f"layer {li}: taps are not output {li} of the tap split")
    elif ly.past != f"state.{li}":
        fail(f"layer {li}: past is {ly.past}, expected state.{li}")
    split = _match_gate_inputs(t, li, cv.output[0], ly, cond3, spk)
    _match_gate(t, li, split, cfg.gate_channels // 2, ly)
    _match_projections(t, li, K, dil, ly, skip_terms)
    if ly.skip_w is None or (ly.out_w is None and li < cfg.layers - 1):
        fail(f"layer {li}: missing skip or residual projection")
    if not ring:
        _match_full_state(t, li, (K - 1) * d, ly)
    return ly


def _match_gate_inputs(t: GraphIndex, li: int, z: str, ly: _Layer, cond3, spk):
    """conv → [+ cond projection] [+ speaker projection] → the gate's Split node."""
    while True:
        n = t.only_consumer(z)
        if n.op_type != "Add":
            return n
        other = n.input[1] if n.input[0] == z else n.input[0]
        p = t.producer.get(other)
        if p is not None and p.op_type == "Conv" and cond3 is not None and p.input[0] == cond3 \
                and ly.cond_w is None:
            t.take(p)
            w, b = _conv(t, p, 1, 1)
            if b is not None:
                fail("conditioning projection with a bias")
            ly.cond_w = w[:, :, 0]
        elif p is not None and p.op_type == "Unsqueeze" and spk is not None and ly.spk_w is None:
            t.take(p)
            if [int(v) for v in t.const(p.input[1])] not in ([2], [-1]):
                fail("unexpected speaker unsqueeze")
            mm = t.made_by(p.input[0], "MatMul")
            if mm.input[0] != spk:
                fail("speaker projection of something else")
            ly.spk_w = t.const(mm.input[1]).astype(np.float32)
        else:
            fail(f"layer {li}: unexpected addend {p.op_type if p is not None else other}")
        z = n.output[0]


def _match_gate(t: GraphIndex, li: int, n, H: int, ly: _Layer) -> None:
    """Split in two halves → Tanh · Sigmoid."""
    if n.op_type != "Split" or t.attrs(n).get("axis") != 1 or _split_sizes(t, n) != [H, H]:
        fail(f"layer {li}: gate is not split in two halves")
    tanh = t.only_consumer(n.output[0], "Tanh")
    sig = t.only_consumer(n.output[1], "Sigmoid")
    mul = t.only_consumer(tanh.output[0], "Mul")
    if sorted(mul.input) != sorted([tanh.output[0], sig.output[0]]) or t.consumers[sig.output[0]] != [mul]:
        fail(f"layer {li}: gate is not tanh(a)·σ(b)")
    ly.h = mul.output[0]


def _match_projections(t: GraphIndex, li: int, K: int, dil: int, ly: _Layer, skip_terms: list) -> None:
    """h → skip 1×1 conv (→ skip sum) and out 1×1 conv (+ current input) [× scale]."""
    for c in t.consumers[ly.h]:
        if c.op_type != "Conv":
            fail(f"layer {li}: gate output feeds {c.op_type}")
        t.take(c)
        w, b = _conv(t, c, 1, 1)
        users = t.consumers.get(c.output[0], [])
        add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        other = None if add is None else (add.input[1] if add.input[0] == c.output[0] else add.input[0])
        sl = t.producer.get(other) if other else None
        if sl is not None and sl.op_type == "Slice" and sl.input[0] == ly.window:
            starts, ends, axis, step = _slice(t, sl)
            if (starts, step) != ((K - 1) * dil, 1) or not _is_time_axis(axis) or ends < (K - 1) * dil + 1:
                fail(f"layer {li}: residual slice is not the current input")
            t.take(sl, add)
            ly.out_w, ly.out_b = w[:, :, 0], b
            ly.x_next = add.output[0]
            users = t.consumers.get(ly.x_next, [])
            if len(users) == 1 and users[0].op_type == "Mul":
                sc = _scalar(t, users[0])
                if sc is not None and sc[0] == ly.x_next:
                    t.take(users[0])
                    ly.scale, ly.x_next = sc[1], users[0].output[0]
        else:
            if ly.skip_w is not None:
                fail(f"layer {li}: two skip convolutions")
            ly.skip_w, ly.skip_b = w[:, :, 0], b
            skip_terms.append(t.skip_casts(c.output[0]))


def _match_full_state(t: GraphIndex, li: int, n_past: int, ly: _Layer) -> None:
    """Full layout: the new state is the window's last (K−1)·d columns."""
    outs = [c for c in t.consumers[ly.window] if c.op_type == "Slice" and c.output[0] == f"state.{li}.next"]
    if len(outs) != 1:
        fail(f"layer {li}: no state.{li}.next slice")
    starts, ends, axis, step = _slice(t, outs[0])
    if starts not in (-n_past, 1) or step != 1 or not _is_time_axis(axis) or ends < n_past + 1:
        fail(f"layer {li}: state update slice is not the last {n_past} columns")
    t.take(outs[0])
    ly.next_state = outs[0].output[0]


def _match_skip_sum(t: GraphIndex, skip_terms: list[str], plan: dict) -> str:
    """s₀ + s₁ + … (an Add chain in layer order), with scalar Muls anywhere along it (skip scaling √(1/L),
    r9y9's legacy (s + s_l)·√0.5): each scales every term accumulated so far → plan["skip_coef"]."""
    L = len(skip_terms)
    coef = np.ones(L, np.float64)

    def scalings(acc: str, terms: int) -> str:
        while True:
            users = t.consumers.get(acc, [])
            if not (len(users) == 1 and users[0].op_type == "Mul"):
                return acc
            sc = _scalar(t, users[0])
            if sc is None or sc[0] != acc:
                fail("unexpected skip scaling")
            t.take(users[0])
            coef[:terms] *= sc[1]
            acc = users[0].output[0]

    acc = scalings(skip_terms[0], 1)
    for li in range(1, L):
        add = t.only_consumer(acc, "Add")
        if sorted(add.input) != sorted([acc, skip_terms[li]]):
            fail("skip sum is not a chain over the layers")
        acc = scalings(add.output[0], li + 1)
    plan["skip_coef"] = coef
    return t.skip_casts(acc)


def _match_head(t: GraphIndex, acc: str, plan: dict) -> None:
    """ReLU → 1×1 → ReLU → 1×1 → Transpose(0, 2, 1) → Gather(time 0) → logits."""
    head = []
    for _ in range(2):
        relu = t.only_consumer(acc, "Relu")
        conv = t.only_consumer(relu.output[0], "Conv")
        w, b = _conv(t, conv, 1, 1)
        head.append((w[:, :, 0], b))
        acc = conv.output[0]
    plan["head"] = head
    tr = t.only_consumer(acc, "Transpose")
    if list(t.attrs(tr)["perm"]) != [0, 2, 1]:
        fail("unexpected logits transpose")
    gat = t.only_consumer(tr.output[0], "Gather")
    if t.attrs(gat).get("axis") != 1 or t.const(gat.input[1]).reshape(-1).tolist() != [0]:
        fail("unexpected logits gather")
    if t.skip_casts(gat.output[0]) != "logits":
        fail("the head does not end in the logits output")


def _match_state_update(t: GraphIndex, plan: dict) -> None:
    """Ring layout: state_update = Transpose(Concat(x₀ … x_{L−1}) on time)."""
    xs = [ly.x for ly in plan["layers"]]
    cat = t.made_by("state_update", "Transpose")
    if list(t.attrs(cat)["perm"]) != [0, 2, 1]:
        fail("unexpected state_update transpose")
    cat = t.made_by(cat.input[0], "Concat")
    if not _is_time_axis(t.attrs(cat)["axis"]) or list(cat.input) != xs:
        fail("state_update is not the layers' inputs in order")


class _Builder:
    def __init__(self):
        self.nodes, self.inits = [], []
        self._n = 0

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d scalars
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self._n += 1
        out = out or f"/{op.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self._n}", **attrs))
        return out


def _emit(model: onnx.ModelProto, plan: dict, spec, cfg) -> onnx.ModelProto:
    """The plan → the lowered graph: 2-D Gemms over (B, channels), every layer's past taps projected at once."""
    ring = spec.layout == "ring"
    names = {s.role: s.name for s in spec.inputs if s.role in ("token", "cond", "speaker", "position")}
    b = _Builder()
    x = b.node("Gather", [b.init("embed", plan["embed"]), names["token"]])  # (B, R)
    c = _residual_offsets(plan["layers"], cfg.residual_channels)
    taps = _emit_taps(b, model, plan, cfg) if ring else _emit_full_taps(b, cfg)
    parts = _emit_gate_inputs(b, taps, plan, cfg, c, names)
    hs, xs = _emit_layers(b, x, parts, plan["layers"], cfg, c, ring)
    _emit_skip_and_head(b, hs, plan)
    if ring:  # the layers' true inputs x_l = x̃_l + c_l
        cat = b.node("Concat", xs, axis=1)  # (B, L·R)
        cat = b.node("Add", [cat, b.init("input_bias", np.concatenate(c).astype(np.float32))])
        b.node("Reshape", [cat, b.init("update_shape", np.array([0, cfg.layers, cfg.residual_channels], np.int64))],
               out="state_update")
    old = model.graph
    graph = helper.make_graph(b.nodes, old.name, list(old.input), list(old.output), b.inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             producer_name=model.producer_name, producer_version=model.producer_version)


def _residual_offsets(layers: list, R: int) -> list[np.ndarray]:
    """The residual biases, folded: the chain carries x̃_l = x_l − c_l with c₀ = 0,
    c_{l+1} = s_l·(c_l + b_out_l), so x̃_{l+1} = s_l·(h_l·W_out + x̃_l) is one Gemm (C = x̃_l); the gate
    Gemms of layer l add W_cur·c_l to their bias, and the state update adds c back once, for all layers."""
    c = [np.zeros(R, np.float64)]
    for ly in layers[:-1]:
        scale = 1.0 if ly.scale is None else ly.scale
        c.append(scale * (c[-1] + (0.0 if ly.out_b is None else ly.out_b.astype(np.float64))))
    return c


def _emit_taps(b: _Builder, model: onnx.ModelProto, plan: dict, cfg) -> str:
    """Ring layout: the traced index computation copied as it is, then one Gather → (B, L·(K−1), R)."""
    idx_out, idx_nodes = plan["index"]
    t = GraphIndex(model)
    for n in idx_nodes:
        for i in n.input:
            if i in t.values and all(i != init.name for init in b.inits):
                b.init(i, t.values[i])
        b.nodes.append(helper.make_node(n.op_type, list(n.input), list(n.output), name=n.name or None,
                                        **t.attrs(n)))
    return b.node("Gather", ["state", idx_out], axis=1)


def _emit_full_taps(b: _Builder, cfg) -> str:
    """Full layout: each layer's K−1 past columns → (B, L·(K−1)·R) or (B, L·(K−1), R)."""
    K, cols = cfg.kernel_size, []
    for li, d in enumerate(cfg.layer_dilations):
        index = np.array(0, np.int64) if K == 2 else np.arange(K - 1, dtype=np.int64) * d
        col = b.node("Gather", [f"state.{li}", b.init(f"tap_index.{li}", index)], axis=2)  # (B, R[, K−1])
        cols.append(col if K == 2 else b.node("Transpose", [col], perm=[0, 2, 1]))
    return b.node("Concat", cols, axis=1)


def _emit_gate_inputs(b: _Builder, taps: str, plan: dict, cfg, c: list, names: dict):
    """Every layer's past taps projected at once, + biases, + conditioning → the Split into 2L gate halves."""
    layers, L, K, H = plan["layers"], cfg.layers, cfg.kernel_size, cfg.gate_channels // 2
    G, KR = 2 * H, (K - 1) * cfg.residual_channels
    # past taps of every layer: (B, L, (K−1)·R), tap-major then channel (the conv weight's layout) …
    taps = b.node("Reshape", [taps, b.init("taps_shape", np.array([0, L, KR], np.int64))])
    # … projected by every layer's past-tap weights at once: (L, B, (K−1)R) @ (L, (K−1)R, G)
    w_past = np.stack([ly.w[:, :, :K - 1].transpose(2, 1, 0).reshape(KR, G) for ly in layers])
    past = b.node("MatMul", [b.node("Transpose", [taps], perm=[1, 0, 2]), b.init("gate.past", w_past)])
    past = b.node("Reshape", [b.node("Transpose", [past], perm=[1, 0, 2]),
                              b.init("gate_shape", np.array([0, L * G], np.int64))])  # (B, L·G)
    # + biases (dilated conv bias + W_cur·c_l), + conditioning and speaker projections of all layers
    bias = np.concatenate([(np.zeros(G) if ly.b is None else ly.b.astype(np.float64))
                           + ly.w[:, :, K - 1].astype(np.float64) @ c[li] for li, ly in enumerate(layers)])
    gates = b.node("Add", [past, b.init("gate.bias", bias.astype(np.float32))])
    if cfg.local:
        w = np.concatenate([ly.cond_w.T for ly in layers], axis=1)  # (C, L·G)
        gates = b.node("Gemm", [names["cond"], b.init("gate.cond", w), gates])
    if cfg.global_:
        e = b.node("Gather", [b.init("speaker_embed", plan["speaker_embed"]), names["speaker"]])
        w = np.concatenate([ly.spk_w for ly in layers], axis=1)  # (E, L·G)
        gates = b.node("Gemm", [e, b.init("gate.speaker", w), gates])
    parts = helper.make_node("Split", [gates, b.init("gate_split", np.full(2 * L, H, np.int64))],
                             [f"/gate_in_{i}" for i in range(2 * L)], name="Split_gate_in", axis=1)
    b.nodes.append(parts)
    return parts


def _emit_layers(b: _Builder, x: str, parts, layers: list, cfg, c: list, ring: bool) -> tuple[list, list]:
    """The residual chain: per layer the current tap's gate Gemms, tanh·σ, [full state], the out Gemm →
    (gate outputs, layer inputs)."""
    L, K, H = cfg.layers, cfg.kernel_size, cfg.gate_channels // 2
    hs, xs = [], []
    for li, ly in enumerate(layers):
        xs.append(x)
        w_cur = ly.w[:, :, K - 1].T  # (R, G)
        halves = []
        for j, act in enumerate(("Tanh", "Sigmoid")):  # Gemm + activation: one fused node in ORT
            w_half = b.init(f"layers.{li}.gate.{'ab'[j]}", np.ascontiguousarray(w_cur[:, j * H:(j + 1) * H]))
            gemm = b.node("Gemm", [x, w_half, parts.output[2 * li + j]])
            halves.append(b.node(act, [gemm]))
        h = b.node("Mul", halves)
        hs.append(h)
        if not ring:
            _emit_full_state(b, li, x, ly, (K - 1) * cfg.layer_dilations[li], c)
        if li < L - 1:
            scale = 1.0 if ly.scale is None else float(ly.scale)
            x = b.node("Gemm", [h, b.init(f"layers.{li}.out", np.ascontiguousarray(ly.out_w.T)), x],
                       alpha=scale, beta=scale)
    return hs, xs


def _emit_full_state(b: _Builder, li: int, x: str, ly: _Layer, n_past: int, c: list) -> None:
    """Full layout: the new state is the layer input appended to the last (K−1)·d − 1 past inputs."""
    true_x = x if li == 0 else b.node("Add", [x, b.init(f"layers.{li}.input_bias", c[li].astype(np.float32))])
    col = b.node("Unsqueeze", [true_x, b.init(f"unsqueeze_axes.{li}", np.array([2], np.int64))],
                 out=None if n_past > 1 else ly.next_state)
    if n_past > 1:
        kept = b.node("Slice", [f"state.{li}", b.init(f"keep_start.{li}", np.array([1], np.int64)),
                                b.init(f"keep_end.{li}", np.array([n_past], np.int64)),
                                b.init(f"keep_axis.{li}", np.array([2], np.int64))])
        b.node("Concat", [kept, col], out=ly.next_state, axis=2)


def _emit_skip_and_head(b: _Builder, hs: list, plan: dict) -> None:
    """All skip projections in one Gemm over the concatenated gate outputs; one common scale stays a Mul
    after it (as traced), per-layer scales (r9y9 legacy) are folded into the weights and biases; then the
    head ReLU–Gemm–ReLU–Gemm → logits."""
    layers, coef = plan["layers"], plan["skip_coef"]
    common = bool(np.all(coef == coef[0]))
    k = np.ones(len(layers)) if common else coef
    w = np.concatenate([(ly.skip_w.T.astype(np.float64) * k[i]).astype(np.float32)
                        for i, ly in enumerate(layers)], axis=0)  # (L·H, S)
    ins = [b.node("Concat", hs, axis=1), b.init("skip.w", w)]
    if any(ly.skip_b is not None for ly in layers):
        bias = sum(ly.skip_b.astype(np.float64) * k[i] for i, ly in enumerate(layers) if ly.skip_b is not None)
        ins.append(b.init("skip.b", bias.astype(np.float32)))
    s = b.node("Gemm", ins)
    if common and coef[0] != 1.0:
        s = b.node("Mul", [s, b.init("skip.scale", np.array(coef[0], np.float32))])
    for i, (w, bb) in enumerate(plan["head"]):
        ins = [b.node("Relu", [s]), b.init(f"head.{i}.w", np.ascontiguousarray(w.T))]
        if bb is not None:
            ins.append(b.init(f"head.{i}.b", bb))
        s = b.node("Gemm", ins, out="logits" if i == len(plan["head"]) - 1 else None)


def lower_step_graph(model: onnx.ModelProto, spec, cfg) -> onnx.ModelProto:
    """Traced FP32 step graph → the lowered graph with the same I/O. Raises `NoMatch`."""
    if spec.kind != "step" or spec.precision not in ("fp32", "w16"):
        fail(f"only FP32 (and w16) step graphs are lowered (got {spec.name})")
    return _emit(model, _match(model, spec, cfg), spec, cfg)


# ---- the export pass ----------------------------------------------------------------------------
# same I/O, same weights, checked against the wrapper's forward (the traced function) before it is kept
LOWERING_TOLERANCE = 1e-4  # max |lowered − traced| relative to max(1, max |traced|), FP32


def lower_pass(graph: onnx.ModelProto, wrapper) -> onnx.ModelProto:
    """Export pass: a traced FP32 step graph → the lowered graph, verified against the wrapper's forward
    (the traced function); other graphs, FP16, or a structure the lowering does not know keep the traced
    form (the reason goes into the model's metadata)."""
    if wrapper.spec.kind != "step":
        return graph

    def note(text: str):
        graph.metadata_props.append(onnx.StringStringEntryProto(key="wn_export.lowering", value=text))
        return graph

    if wrapper.precision.compute != torch.float32:
        return note("not lowered: FP16 graphs keep the traced form")
    try:
        lowered = lower_step_graph(graph, wrapper.spec, wrapper.cfg)
    except NoMatch as e:
        return note(f"not lowered: {e}")
    worst = lowering_error(wrapper, lowered)
    if worst > LOWERING_TOLERANCE:
        raise ExportError(f"the lowered step graph differs from the traced one by {worst:.2e} "
                          f"(> {LOWERING_TOLERANCE:g}): a bug in wn_export.export.lowering")
    lowered.metadata_props.append(onnx.StringStringEntryProto(
        key="wn_export.lowering", value=f"lowered to 2-D Gemms; max relative deviation {worst:.1e}"))
    return lowered


@torch.no_grad()
def lowering_error(wrapper, lowered: onnx.ModelProto, batch: int = 3) -> float:
    """max |lowered − forward| / max(1, max |forward|) over every output, on random inputs at
    several ring positions (ONNX's reference evaluator: no runtime needed at export)."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(lowered)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for position in (0, 5, 1_000_003):
        inputs = example_inputs(wrapper.spec, wrapper.cfg, batch=batch, time=position, generator=gen)
        want = wrapper(*inputs)
        got = evaluator.run(None, {t.name: v.numpy() for t, v in zip(wrapper.spec.inputs, inputs)})
        for w, g in zip(want, got):
            w = w.double().numpy()
            worst = max(worst, float(abs(g - w).max() / max(1.0, abs(w).max())))
    return worst
