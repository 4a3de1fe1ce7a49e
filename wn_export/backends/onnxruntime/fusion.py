"""Session-time fusion of a lowered FP32 step graph's layer chain into one `wn_export.WaveNetLayers` node,
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
    skip [→ Mul(scalar), folded into W_skip, b_skip] → Relu → Gemm(W1, b1) → Relu → Gemm(W2, b2) → logits
      ⇒  WaveNetHead(skip, W1, b1, W2, b2), weights packed; a head of another form stays standard ops

The match is strict, and anything else returns None so the standard graph is used. It requires:
- every intermediate consumed only inside the chain;
- default Gemm attributes;
- one Split into 2L equal parts, with L ≥ 2;
- the layer inputs gathered by one Concat. That is the `ring` state layout; the `full` layout updates
  each layer's state separately and is not fused.

The weights are the graph's own initializers, re-packed (a skip scaling multiplied in). Only the
summation order, that product and the tanh/σ approximation change (fp32 rounding level, ~1e-7). Parity
on the `onnxruntime` backend checks the fused session.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wn_export.backends.onnxruntime.native import DOMAIN
from wn_export.export.graph_match import GraphIndex, NoMatch, need

OP = "WaveNetLayers"
HEAD_OP = "WaveNetHead"
PANEL = 16  # packed weight panel width (kPanel in plugins/ort/wn_ort_ops.cc)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _match_head(skip, t: GraphIndex, only, weight, plain_gemm, inits):
    """skip [→ Mul(scalar)] → Relu → Gemm(W1, b1) → Relu → Gemm(W2, b2): (those nodes, the scalar or None,
    (W1, b1, W2, b2)), or None."""
    try:
        nodes, params, cur, factor = [], [], skip, None
        mul = t.consumers[skip][0] if len(t.consumers[skip]) == 1 else None
        if mul is not None and mul.op_type == "Mul":
            scale = [i for i in mul.input if i != skip]
            need(len(scale) == 1 and scale[0] in inits and t.values[scale[0]].size == 1, "skip scaling")
            only(skip, "Mul")
            factor = np.float32(t.values[scale[0]].reshape(()))
            nodes.append(mul)
            cur = mul.output[0]
        for _ in range(2):
            relu = only(cur, "Relu")
            gemm = only(relu.output[0], "Gemm", 0)
            need(plain_gemm(gemm) and not {"alpha", "beta"} & _attrs(gemm).keys(), "head Gemm attributes")
            w = weight(gemm.input[1])
            bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
            need(bias is None or (bias in inits and t.values[bias].size == w.shape[1]), "head bias")
            b = np.zeros(w.shape[1], np.float32) if bias is None else t.values[bias].astype(np.float32).reshape(-1)
            nodes += [relu, gemm]
            params += [w, b]
            cur = gemm.output[0]
        need(params[0].shape[1] == params[2].shape[0], "head widths")
        return nodes, factor, tuple(params)
    except NoMatch:
        return None


def pack_panels(w: np.ndarray) -> np.ndarray:
    """Weights (..., K, N) → the op's packed layout (..., ⌈N/16⌉, K, 16) float32: column c of row k at
    panel c // 16, offset c % 16; the last panel zero-padded (plugins/ort/README.md)."""
    *lead, K, N = w.shape
    n = -(-N // PANEL)
    padded = np.zeros((*lead, K, n * PANEL), np.float32)
    padded[..., :N] = w
    return np.ascontiguousarray(np.moveaxis(padded.reshape(*lead, K, n, PANEL), -2, -3))


def fuse_layers(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with its layer chain (and head, where it matches) fused (a new ModelProto), or None when
    the layer chain does not match."""
    return try_fuse(model)[0]


def try_fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    """(fused model, "") or (None, the first structure that did not match)."""
    try:
        return _fuse(model), ""
    except NoMatch as e:
        return None, str(e)


def _fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    t = GraphIndex(model)
    nodes, consumers, producer, values = t.nodes, t.consumers, t.producer, t.values
    inits = {i.name for i in g.initializer}  # weights must be initializers (values also holds Constant outputs)
    graph_outputs = {o.name for o in g.output}

    def only(name, op, slot=None):
        """The single consumer of `name` (not a graph output), of type `op`, using it at input `slot`."""
        users = consumers[name]
        need(len(users) == 1 and name not in graph_outputs, f"{name}: {len(users)} consumers")
        u = users[0]
        need(u.op_type == op and (slot is None or list(u.input).index(name) == slot), f"{name} → {u.op_type}")
        return u

    def weight(name, shape=None):
        need(name in inits, f"{name} is not an initializer")
        w = values[name]
        need(w.dtype == np.float32 and w.ndim == 2 and (shape is None or w.shape == shape), f"{name} {w.shape}")
        return w

    def plain_gemm(n):
        a = _attrs(n)
        return a.get("transA", 0) == 0 and a.get("transB", 0) == 0

    splits = [n for n in nodes if n.op_type == "Split" and len(n.output) >= 2
              and all(any(u.op_type == "Gemm" for u in consumers[o]) for o in n.output)]
    need(len(splits) == 1, "no unique gate Split")
    split = splits[0]
    L = len(split.output) // 2
    need(len(split.output) == 2 * L and L >= 2 and _attrs(split).get("axis", 0) in (1, -1), "split layout")
    need(len(split.input) == 2 and split.input[1] in inits, "split sizes are not a constant")
    sizes = values[split.input[1]]
    G = int(sizes[0])
    need(np.all(sizes == G) and G > 0, "unequal split")

    # the past taps of every layer: Transpose → batched MatMul → Transpose → Reshape (→ Add bias), then
    # optional conditioning Gemms chained through C, into the Split. The op takes the taps and W_past;
    # what remains (bias, conditioning) becomes its gate_in.
    user, slot, cur = split, 0, split.input[0]
    while cur in producer and producer[cur].op_type == "Gemm" and len(producer[cur].input) == 3:
        user, slot, cur = producer[cur], 2, producer[cur].input[2]
    need(cur in producer and consumers[cur] == [user] and cur not in graph_outputs, "gate pre-activation")
    node = producer[cur]
    prefix_nodes, bias = [], None
    if node.op_type == "Add":
        bias = next((i for i in node.input if i in inits), None)
        other = [i for i in node.input if i != bias]
        need(bias is not None and len(other) == 1 and other[0] in producer and len(consumers[other[0]]) == 1,
              "gate bias Add")
        prefix_nodes.append(node)
        node = producer[other[0]]
    need(node.op_type == "Reshape", "gate Reshape")
    tr6 = producer.get(node.input[0])
    mm = producer.get(tr6.input[0]) if tr6 is not None else None
    tr4 = producer.get(mm.input[0]) if mm is not None and mm.op_type == "MatMul" else None
    need(tr6 is not None and tr6.op_type == "Transpose" and _attrs(tr6).get("perm") == [1, 0, 2]
          and tr4 is not None and tr4.op_type == "Transpose" and _attrs(tr4).get("perm") == [1, 0, 2]
          and mm.input[1] in inits, "past-tap MatMul")
    for n in (node, tr6, mm, tr4):
        need(len(consumers[n.output[0]]) == 1 and n.output[0] not in graph_outputs, f"{n.name} consumers")
    prefix_nodes += [node, tr6, mm, tr4]
    w_past = values[mm.input[1]]
    taps = tr4.input[0]

    matched = [split, *prefix_nodes]
    w_gate, w_out, alpha, beta, hs, xs = [], [], [], [], [], []
    x = None
    for layer in range(L):
        ga, gb = only(split.output[2 * layer], "Gemm", 2), only(split.output[2 * layer + 1], "Gemm", 2)
        need(plain_gemm(ga) and plain_gemm(gb) and not {"alpha", "beta"} & (_attrs(ga).keys() | _attrs(gb).keys()),
              "gate Gemm attributes")
        need(ga.input[0] == gb.input[0] and (x is None or ga.input[0] == x), "gate Gemms read different inputs")
        x = ga.input[0]
        wa, wb = weight(ga.input[1]), weight(gb.input[1])
        need(wa.shape == wb.shape and wa.shape[1] == G, "gate weights")
        R = wa.shape[0]
        tanh, sig = only(ga.output[0], "Tanh"), only(gb.output[0], "Sigmoid")
        mul = only(tanh.output[0], "Mul")
        need(only(sig.output[0], "Mul") is mul, "the gate halves meet in different Muls")
        h = mul.output[0]
        x_users = {id(u) for u in consumers[x]}
        matched += [ga, gb, tanh, sig, mul]
        w_gate.append(np.concatenate([wa, wb], axis=1))
        hs.append(h)
        xs.append(x)
        h_users = consumers[h]
        if layer + 1 < L:
            need(len(h_users) == 2 and h not in graph_outputs, f"{h} consumers")
            out = next((u for u in h_users if u.op_type == "Gemm"), None)
            need(out is not None and out.input[0] == h and len(out.input) == 3 and out.input[2] == x
                  and plain_gemm(out), "residual Gemm")
            w_out.append(weight(out.input[1], (G, R)))
            a = _attrs(out)
            alpha.append(float(a.get("alpha", 1.0)))
            beta.append(float(a.get("beta", 1.0)))
            matched.append(out)
            nxt = out.output[0]
            need(nxt not in graph_outputs, "a layer input is a graph output")
            x = nxt
        else:
            need(len(h_users) == 1 and h not in graph_outputs, f"{h} consumers")
        if layer > 0:  # x_l (l ≥ 1) is internal: the gate Gemms, the residual Gemm and the state Concat
            need(len(x_users) == (4 if layer + 1 < L else 3), f"{xs[-1]} has other consumers")
    concat_h = only(hs[-1], "Concat")
    need(list(concat_h.input) == hs and _attrs(concat_h).get("axis") in (1, -1), "skip Concat")
    x_concat = [u for u in consumers[xs[-1]] if u.op_type == "Concat"]
    need(len(x_concat) == 1, "state Concat")
    concat_x = x_concat[0]
    need(list(concat_x.input) == xs and _attrs(concat_x).get("axis") in (1, -1), "state Concat inputs")
    skip_gemm = only(concat_h.output[0], "Gemm", 0)
    need(plain_gemm(skip_gemm) and not {"alpha", "beta"} & _attrs(skip_gemm).keys(), "skip Gemm attributes")
    w_skip = weight(skip_gemm.input[1])
    need(w_skip.shape[0] == L * G, "skip weights")
    S = w_skip.shape[1]
    if len(skip_gemm.input) > 2 and skip_gemm.input[2]:
        need(skip_gemm.input[2] in inits, "skip bias is not a constant")
        b_skip = values[skip_gemm.input[2]].astype(np.float32)
        need(b_skip.size == S, "skip bias size")
    else:
        b_skip = np.zeros(S, np.float32)
    matched += [concat_h, concat_x, skip_gemm]
    shapes = {w.shape for w in w_gate}
    need(len(shapes) == 1, "layers of different widths")
    R, G2 = w_gate[0].shape
    need(w_past.dtype == np.float32 and w_past.ndim == 3 and w_past.shape[0] == L and w_past.shape[2] == G2,
          "past-tap weights")

    head = _match_head(skip_gemm.output[0], t, only, weight, plain_gemm, inits)
    if head is not None and head[1] is not None:  # a skip scaling: folded into the skip weights
        w_skip, b_skip = w_skip * head[1], b_skip * head[1]
    prefix = "wn_fused."
    w_in = np.concatenate([w_past, np.stack(w_gate)], axis=1)  # (L, P + R, 2G): past rows, then current
    new_inits = [numpy_helper.from_array(pack_panels(w_in), prefix + "w_gate"),
                 numpy_helper.from_array(pack_panels(np.stack(w_out)), prefix + "w_out"),
                 numpy_helper.from_array(pack_panels(w_skip.reshape(L, G, S)), prefix + "w_skip"),
                 numpy_helper.from_array(b_skip.reshape(S), prefix + "b_skip")]
    need(bias is None or values[bias].size == L * G2, "gate bias size")
    if bias is None:  # no bias Add: the rest of the pre-activation starts at zero
        bias = prefix + "gate_bias"
        new_inits.append(numpy_helper.from_array(np.zeros(L * G2, np.float32), bias))
    gate_in = bias if user is split else split.input[0]
    fused = helper.make_node(
        OP, [xs[0], taps, gate_in, prefix + "w_gate", prefix + "w_out", prefix + "w_skip", prefix + "b_skip"],
        [skip_gemm.output[0], concat_x.output[0]], name="/wn_fused/layers", domain=DOMAIN,
        alpha=alpha, beta=beta)
    if head is not None:
        head_nodes, _, (w1, b1, w2, b2) = head
        matched += head_nodes
        new_inits += [numpy_helper.from_array(pack_panels(w1), prefix + "head_w1"),
                      numpy_helper.from_array(b1, prefix + "head_b1"),
                      numpy_helper.from_array(pack_panels(w2), prefix + "head_w2"),
                      numpy_helper.from_array(b2, prefix + "head_b2")]
        head_op = helper.make_node(HEAD_OP, [skip_gemm.output[0]] + [prefix + n for n in ("head_w1", "head_b1",
                                   "head_w2", "head_b2")], [head_nodes[-1].output[0]], name="/wn_fused/head",
                                   domain=DOMAIN)
    gone = {id(n) for n in matched}
    out_nodes = []
    for n in nodes:
        if n is split:
            out_nodes.append(fused)
        elif head is not None and n is head[0][-1]:
            out_nodes.append(head_op)
        elif n is user:  # the first conditioning Gemm now adds to the bias alone
            rewired = onnx.NodeProto()
            rewired.CopyFrom(n)
            rewired.input[slot] = bias
            out_nodes.append(rewired)
        elif id(n) not in gone:
            out_nodes.append(n)
    used = {i for n in out_nodes for i in n.input}
    keep = [i for i in g.initializer if i.name in used]

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
