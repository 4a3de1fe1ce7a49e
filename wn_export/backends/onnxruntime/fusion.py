"""Session-time fusion of a lowered step graph's layer chain into one `wn_export.WaveNetLayers` node,
and of its output head into one `wn_export.WaveNetHead` node.

`export.lowering` leaves four ONNX nodes per residual layer: two Gemms that ONNX Runtime fuses with their
Tanh / Sigmoid, the gate Mul and the residual Gemm. Around them sit a batched MatMul of the past taps,
which ONNX Runtime runs as L small GEMMs, and the packed skip Gemm. At batch 1 each node costs ~1 µs of
dispatch, more than its arithmetic. This pass replaces the whole chain by the custom op of
`plugins/ort/wn_ort_ops.cc` (its contract is in plugins/ort/README.md). It runs in memory when the ONNX
Runtime host opens a step graph, like ONNX Runtime's own graph optimisations; the artifact on disk stays
standard ONNX for every other backend.

    taps → Transpose → MatMul(W_past) → Transpose → Reshape → Add(bias) [→ conditioning Gemms] → Split
    → per layer l:  Gemm(x_l, W_a,l, C_a,l) → Tanh ┐
                    Gemm(x_l, W_b,l, C_b,l) → Sigmoid ┴ Mul → h_l
                    Gemm(h_l, W_out,l, C = x_l) [α_l, β_l] → x_{l+1}      (l < L−1)
    Concat(h_0 … h_L−1) → Gemm(W_skip, b_skip) → skip;  Concat(x_0 … x_L−1) → state update
      ⇒  [bias → conditioning Gemms →] WaveNetLayers(x_0, taps, gate_in, W_gate = [W_past; W_a | W_b]
              (L, P+R, 2G), W_out (L−1, G, R), W_skip (L, G, S), b_skip (S); α, β) → (skip, x)
         with the three weight tensors stored packed in 16-column panels (`pack_panels`)
    skip [→ Mul(scalar)] → Relu → Gemm(W1, b1) → Relu → Gemm(W2, b2) → logits
      ⇒  WaveNetHead(skip, W1, b1, W2, b2), weights packed; a head of another form stays standard ops

Weights are the graph's own initializers, re-packed. In a w16 graph (`export.precision`) each weight matrix
is a float16 initializer widened by a Cast; the fused ops then take the float16 matrices themselves (half the
bytes per sample, float32 arithmetic). A skip scaling is multiplied into float32 skip weights, and becomes
the op's `skip_scale` attribute with float16 ones (whose values must stay the graph's).

The match is strict, and anything else raises `NoMatch` (`try_fuse` → None) so the standard graph is used.
It requires:
- every intermediate consumed only inside the chain;
- default Gemm attributes;
- one Split into 2L equal parts, with L ≥ 2;
- the layer inputs gathered by one Concat. That is the `ring` state layout; the `full` layout updates
  each layer's state separately and is not fused;
- every weight of the chain float32, or every one float16.

Only the summation order, the skip-scaling product and the tanh/σ approximation change (fp32 rounding
level, ~1e-7). Parity on the `onnxruntime` backend checks the fused session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wn_export.backends.onnxruntime.native import DOMAIN
from wn_export.export.graph_match import GraphIndex, NoMatch, need

OP = "WaveNetLayers"
HEAD_OP = "WaveNetHead"
PANEL = 16  # packed weight panel width (kPanel in plugins/ort/kernels.h)
PREFIX = "wn_fused."


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def pack_panels(w: np.ndarray) -> np.ndarray:
    """Weights (..., K, N) → the op's packed layout (..., ⌈N/16⌉, K, 16), float16 if w is float16, else float32:
    column c of row k at panel c // 16, offset c % 16; the last panel zero-padded (plugins/ort/README.md)."""
    *lead, K, N = w.shape
    n = -(-N // PANEL)
    padded = np.zeros((*lead, K, n * PANEL), np.float16 if w.dtype == np.float16 else np.float32)
    padded[..., :N] = w
    return np.ascontiguousarray(np.moveaxis(padded.reshape(*lead, K, n, PANEL), -2, -3))


@dataclass
class Chain:
    """What the fusion found: the layer chain's and head's weights (matrices, float32 or float16), attributes,
    and the graph tensors the fused nodes read and write. `native_loop` builds the native loop from it."""

    L: int
    R: int
    G: int  # half the gate channels
    P: int  # past-tap inputs per layer, (K − 1)·R
    S: int
    w_gate: np.ndarray  # (L, P + R, 2G): past-tap rows, then the current input's; columns [filter | gate]
    w_out: np.ndarray  # (L − 1, G, R)
    w_skip: np.ndarray  # (L, G, S)
    b_skip: np.ndarray  # (S,) float32
    alpha: list[float]
    beta: list[float]
    skip_scale: float = 1.0
    head: tuple | None = None  # (w1 (S, H), b1, w2 (H, Q), b2)
    names: dict = field(default_factory=dict)  # x0, taps, gate_in, skip, x, logits (graph tensors)

    @property
    def half(self) -> bool:
        return self.w_gate.dtype == np.float16


class _Matcher:
    """The graph's index plus the lookups every stage uses."""

    def __init__(self, model: onnx.ModelProto):
        self.t = GraphIndex(model)
        self.inits = {i.name for i in model.graph.initializer}  # weights are initializers (values has Constants too)
        self.outputs = {o.name for o in model.graph.output}
        self.matched: list = []  # nodes the fused ones replace

    def only(self, name, op, slot=None):
        """The single consumer of `name` (not a graph output), of type `op`, using it at input `slot`."""
        users = self.t.consumers[name]
        need(len(users) == 1 and name not in self.outputs, f"{name}: {len(users)} consumers")
        u = users[0]
        need(u.op_type == op and (slot is None or list(u.input).index(name) == slot), f"{name} → {u.op_type}")
        return u

    def weight(self, name, shape=None, ndim=2) -> np.ndarray:
        """A float32 initializer, or (w16) a float16 one through the Cast that widens it."""
        cast = self.t.producer.get(name)
        if cast is not None and cast.op_type == "Cast" and _attrs(cast).get("to") == TensorProto.FLOAT:
            need(cast.input[0] in self.inits and self.t.values[cast.input[0]].dtype == np.float16,
                 f"{name} casts something else")
            need(len(self.t.consumers[name]) == 1 and name not in self.outputs, f"{name}: shared widened weight")
            self.matched.append(cast)
            w = self.t.values[cast.input[0]]
        else:
            need(name in self.inits, f"{name} is not an initializer")
            w = self.t.values[name]
            need(w.dtype == np.float32, f"{name} is {w.dtype}")
        need(w.ndim == ndim and (shape is None or w.shape == shape), f"{name} {w.shape}")
        return w

    @staticmethod
    def plain_gemm(n, scaled_ok=False) -> bool:
        a = _attrs(n)
        return a.get("transA", 0) == 0 and a.get("transB", 0) == 0 and (scaled_ok or not {"alpha", "beta"} & a.keys())


def _gate_split(m: _Matcher) -> tuple:
    """The one Split of the gate pre-activations into 2L parts → (split, L, G)."""
    t = m.t
    splits = [n for n in t.nodes if n.op_type == "Split" and len(n.output) >= 2
              and all(any(u.op_type == "Gemm" for u in t.consumers[o]) for o in n.output)]
    need(len(splits) == 1, "no unique gate Split")
    split = splits[0]
    L = len(split.output) // 2
    need(len(split.output) == 2 * L and L >= 2 and _attrs(split).get("axis", 0) in (1, -1), "split layout")
    need(len(split.input) == 2 and split.input[1] in m.inits, "split sizes are not a constant")
    sizes = t.values[split.input[1]]
    G = int(sizes[0])
    need(np.all(sizes == G) and G > 0, "unequal split")
    m.matched.append(split)
    return split, L, G


def _past_taps(m: _Matcher, split) -> dict:
    """The past taps of every layer: Transpose → batched MatMul → Transpose → Reshape (→ Add bias), then
    optional conditioning Gemms chained through C, into the Split. The op takes the taps and W_past; what
    remains (bias, conditioning) becomes its gate_in → {taps, w_past, bias, user, slot}."""
    t = m.t
    user, slot, cur = split, 0, split.input[0]
    while cur in t.producer and t.producer[cur].op_type == "Gemm" and len(t.producer[cur].input) == 3:
        user, slot, cur = t.producer[cur], 2, t.producer[cur].input[2]
    need(cur in t.producer and t.consumers[cur] == [user] and cur not in m.outputs, "gate pre-activation")
    node, bias = t.producer[cur], None
    if node.op_type == "Add":
        bias = next((i for i in node.input if i in m.inits), None)
        other = [i for i in node.input if i != bias]
        need(bias is not None and len(other) == 1 and other[0] in t.producer and len(t.consumers[other[0]]) == 1,
             "gate bias Add")
        m.matched.append(node)
        node = t.producer[other[0]]
    need(node.op_type == "Reshape", "gate Reshape")
    tr6 = t.producer.get(node.input[0])
    mm = t.producer.get(tr6.input[0]) if tr6 is not None else None
    tr4 = t.producer.get(mm.input[0]) if mm is not None and mm.op_type == "MatMul" else None
    need(tr6 is not None and tr6.op_type == "Transpose" and _attrs(tr6).get("perm") == [1, 0, 2]
         and tr4 is not None and tr4.op_type == "Transpose" and _attrs(tr4).get("perm") == [1, 0, 2], "past-tap MatMul")
    for n in (node, tr6, mm, tr4):
        need(len(t.consumers[n.output[0]]) == 1 and n.output[0] not in m.outputs, f"{n.name} consumers")
    w_past = m.weight(mm.input[1], ndim=3)
    m.matched += [node, tr6, mm, tr4]
    return {"taps": tr4.input[0], "w_past": w_past, "bias": bias, "user": user, "slot": slot, "split": split}


def _layers(m: _Matcher, split, L: int, G: int) -> dict:
    """Per layer: the gate Gemms + Tanh/Sigmoid + Mul, and (but the last) the residual Gemm."""
    t = m.t
    w_gate, w_out, alpha, beta, hs, xs = [], [], [], [], [], []
    x = None
    for layer in range(L):
        ga, gb = m.only(split.output[2 * layer], "Gemm", 2), m.only(split.output[2 * layer + 1], "Gemm", 2)
        need(m.plain_gemm(ga) and m.plain_gemm(gb), "gate Gemm attributes")
        need(ga.input[0] == gb.input[0] and (x is None or ga.input[0] == x), "gate Gemms read different inputs")
        x = ga.input[0]
        wa, wb = m.weight(ga.input[1]), m.weight(gb.input[1])
        need(wa.shape == wb.shape and wa.shape[1] == G and wa.dtype == wb.dtype, "gate weights")
        R = wa.shape[0]
        tanh, sig = m.only(ga.output[0], "Tanh"), m.only(gb.output[0], "Sigmoid")
        mul = m.only(tanh.output[0], "Mul")
        need(m.only(sig.output[0], "Mul") is mul, "the gate halves meet in different Muls")
        h = mul.output[0]
        x_users = {id(u) for u in t.consumers[x]}
        m.matched += [ga, gb, tanh, sig, mul]
        w_gate.append(np.concatenate([wa, wb], axis=1))
        hs.append(h)
        xs.append(x)
        h_users = t.consumers[h]
        if layer + 1 < L:
            need(len(h_users) == 2 and h not in m.outputs, f"{h} consumers")
            out = next((u for u in h_users if u.op_type == "Gemm"), None)
            need(out is not None and out.input[0] == h and len(out.input) == 3 and out.input[2] == x
                 and m.plain_gemm(out, scaled_ok=True), "residual Gemm")
            w_out.append(m.weight(out.input[1], (G, R)))
            a = _attrs(out)
            alpha.append(float(a.get("alpha", 1.0)))
            beta.append(float(a.get("beta", 1.0)))
            m.matched.append(out)
            need(out.output[0] not in m.outputs, "a layer input is a graph output")
            x = out.output[0]
        else:
            need(len(h_users) == 1 and h not in m.outputs, f"{h} consumers")
        if layer > 0:  # x_l (l ≥ 1) is internal: the gate Gemms, the residual Gemm and the state Concat
            need(len(x_users) == (4 if layer + 1 < L else 3), f"{xs[-1]} has other consumers")
    need(len({w.shape for w in w_gate}) == 1, "layers of different widths")
    return {"w_gate": w_gate, "w_out": w_out, "alpha": alpha, "beta": beta, "hs": hs, "xs": xs}


def _skip(m: _Matcher, hs: list, xs: list, L: int, G: int) -> dict:
    """Concat(h) → skip Gemm, and Concat(x) → the state update."""
    t = m.t
    concat_h = m.only(hs[-1], "Concat")
    need(list(concat_h.input) == hs and _attrs(concat_h).get("axis") in (1, -1), "skip Concat")
    x_concat = [u for u in t.consumers[xs[-1]] if u.op_type == "Concat"]
    need(len(x_concat) == 1, "state Concat")
    concat_x = x_concat[0]
    need(list(concat_x.input) == xs and _attrs(concat_x).get("axis") in (1, -1), "state Concat inputs")
    gemm = m.only(concat_h.output[0], "Gemm", 0)
    need(m.plain_gemm(gemm), "skip Gemm attributes")
    w_skip = m.weight(gemm.input[1])
    need(w_skip.shape[0] == L * G, "skip weights")
    S = w_skip.shape[1]
    if len(gemm.input) > 2 and gemm.input[2]:
        need(gemm.input[2] in m.inits, "skip bias is not a constant")
        b_skip = t.values[gemm.input[2]].astype(np.float32).reshape(-1)
        need(b_skip.size == S, "skip bias size")
    else:
        b_skip = np.zeros(S, np.float32)
    m.matched += [concat_h, concat_x, gemm]
    return {"w_skip": w_skip, "b_skip": b_skip, "skip": gemm.output[0], "x": concat_x.output[0]}


def _match_head(m: _Matcher, skip: str) -> dict | None:
    """skip [→ Mul(scalar)] → Relu → Gemm(W1, b1) → Relu → Gemm(W2, b2) → {nodes (with their weights' Casts),
    last (the second Gemm), factor (the scalar or None), params (W1, b1, W2, b2)}, or None."""
    t = m.t
    taken = len(m.matched)
    try:
        nodes, params, cur, factor = [], [], skip, None
        mul = t.consumers[skip][0] if len(t.consumers[skip]) == 1 else None
        if mul is not None and mul.op_type == "Mul":
            scale = [i for i in mul.input if i != skip]
            need(len(scale) == 1 and scale[0] in m.inits and t.values[scale[0]].size == 1, "skip scaling")
            m.only(skip, "Mul")
            factor = np.float32(t.values[scale[0]].reshape(()))
            nodes.append(mul)
            cur = mul.output[0]
        for _ in range(2):
            relu = m.only(cur, "Relu")
            gemm = m.only(relu.output[0], "Gemm", 0)
            need(m.plain_gemm(gemm), "head Gemm attributes")
            w = m.weight(gemm.input[1])
            bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
            need(bias is None or (bias in m.inits and t.values[bias].size == w.shape[1]), "head bias")
            b = np.zeros(w.shape[1], np.float32) if bias is None else t.values[bias].astype(np.float32).reshape(-1)
            nodes += [relu, gemm]
            params += [w, b]
            cur = gemm.output[0]
        need(params[0].shape[1] == params[2].shape[0] and params[0].dtype == params[2].dtype, "head widths")
        return {"nodes": nodes + m.matched[taken:], "last": nodes[-1], "factor": factor, "params": tuple(params)}
    except NoMatch:
        return None
    finally:
        del m.matched[taken:]  # the head's nodes (and weight Casts) are its own


def match_chain(model: onnx.ModelProto) -> tuple[Chain, _Matcher, dict, dict | None]:
    """The stages in order → (Chain, the matcher, the past-tap match, the head match). Raises NoMatch."""
    m = _Matcher(model)
    split, L, G = _gate_split(m)
    taps = _past_taps(m, split)
    layers = _layers(m, split, L, G)
    skip = _skip(m, layers["hs"], layers["xs"], L, G)
    R, G2 = layers["w_gate"][0].shape
    w_past = taps["w_past"]
    need(w_past.ndim == 3 and w_past.shape[0] == L and w_past.shape[2] == G2, "past-tap weights")
    dtypes = {w.dtype for w in (w_past, *layers["w_gate"], *layers["w_out"], skip["w_skip"])}
    need(len(dtypes) == 1, "weights of mixed precision")
    need(taps["bias"] is None or m.t.values[taps["bias"]].size == L * G2, "gate bias size")
    head = _match_head(m, skip["skip"])
    if head is not None and head["params"][0].dtype not in dtypes:
        head = None  # a head of other weights than the chain's stays standard ops
    w_skip, b_skip, skip_scale = skip["w_skip"], skip["b_skip"], 1.0
    if head is not None and head["factor"] is not None:  # a skip scaling
        if w_skip.dtype == np.float16:  # the graph's float16 values stay as they are
            skip_scale = float(head["factor"])
        else:
            w_skip, b_skip = w_skip * head["factor"], b_skip * head["factor"]
    chain = Chain(
        L=L, R=R, G=G, P=w_past.shape[1], S=w_skip.shape[1],
        w_gate=np.concatenate([w_past, np.stack(layers["w_gate"])], axis=1),
        w_out=np.stack(layers["w_out"]), w_skip=w_skip.reshape(L, G, -1), b_skip=b_skip.reshape(-1).astype(np.float32),
        alpha=layers["alpha"], beta=layers["beta"], skip_scale=skip_scale,
        head=None if head is None else head["params"],
        names={"x0": layers["xs"][0], "taps": taps["taps"], "skip": skip["skip"], "x": skip["x"],
               "logits": None if head is None else head["last"].output[0]})
    return chain, m, taps, head


def _emit(model: onnx.ModelProto, chain: Chain, m: _Matcher, taps: dict, head: dict | None) -> onnx.ModelProto:
    """The model with the matched nodes replaced by the two ops (packed weights as new initializers)."""
    L, G2, S = chain.L, 2 * chain.G, chain.S
    new_inits = [numpy_helper.from_array(pack_panels(chain.w_gate), PREFIX + "w_gate"),
                 numpy_helper.from_array(pack_panels(chain.w_out), PREFIX + "w_out"),
                 numpy_helper.from_array(pack_panels(chain.w_skip), PREFIX + "w_skip"),
                 numpy_helper.from_array(chain.b_skip.reshape(S), PREFIX + "b_skip")]
    bias, user, slot = taps["bias"], taps["user"], taps["slot"]
    if bias is None:  # no bias Add: the rest of the pre-activation starts at zero
        bias = PREFIX + "gate_bias"
        new_inits.append(numpy_helper.from_array(np.zeros(L * G2, np.float32), bias))
    split = taps["split"]
    gate_in = bias if user is split else split.input[0]
    chain.names["gate_in"] = gate_in
    attrs = dict(alpha=chain.alpha, beta=chain.beta)
    if chain.skip_scale != 1.0:
        attrs["skip_scale"] = chain.skip_scale
    fused = helper.make_node(
        OP, [chain.names["x0"], taps["taps"], gate_in, PREFIX + "w_gate", PREFIX + "w_out", PREFIX + "w_skip",
             PREFIX + "b_skip"], [chain.names["skip"], chain.names["x"]], name="/wn_fused/layers", domain=DOMAIN, **attrs)
    head_op = None
    if chain.head is not None:
        w1, b1, w2, b2 = chain.head
        new_inits += [numpy_helper.from_array(pack_panels(w1), PREFIX + "head_w1"),
                      numpy_helper.from_array(b1, PREFIX + "head_b1"),
                      numpy_helper.from_array(pack_panels(w2), PREFIX + "head_w2"),
                      numpy_helper.from_array(b2, PREFIX + "head_b2")]
        head_op = helper.make_node(HEAD_OP, [chain.names["skip"]] + [PREFIX + n for n in ("head_w1", "head_b1",
                                   "head_w2", "head_b2")], [chain.names["logits"]], name="/wn_fused/head", domain=DOMAIN)
    head_nodes = [] if head is None else head["nodes"]
    gone = {id(n) for n in [*m.matched, *head_nodes]}
    out_nodes = []
    for n in m.t.nodes:
        if n is split:
            out_nodes.append(fused)
        elif head is not None and n is head["last"]:
            out_nodes.append(head_op)
        elif n is user:  # the first conditioning Gemm now adds to the bias alone
            rewired = onnx.NodeProto()
            rewired.CopyFrom(n)
            rewired.input[slot] = bias
            out_nodes.append(rewired)
        elif id(n) not in gone:
            out_nodes.append(n)
    used = {i for n in out_nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(out_nodes)
    del result.graph.initializer[:]
    result.graph.initializer.extend(keep + new_inits)
    del result.graph.value_info[:]
    if not any(o.domain == DOMAIN for o in result.opset_import):
        result.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return result


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Chain]:
    """(fused model, what was fused). Raises NoMatch."""
    chain, m, taps, head = match_chain(model)
    return _emit(model, chain, m, taps, head), chain


def fuse_layers(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with its layer chain (and head, where it matches) fused (a new ModelProto), or None when
    the layer chain does not match."""
    return try_fuse(model)[0]


def try_fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    """(fused model, "") or (None, the first structure that did not match)."""
    try:
        return fuse(model)[0], ""
    except NoMatch as e:
        return None, str(e)
