"""The ONNX Runtime host's native generation loop: K steps per call, no Python per sample.

After `fusion` a lowered ring-layout step graph is, besides the two fused ops, a handful of small nodes:

    Gather(embed, token) → x0 ┐
    position → Add/Mod/Add (tap rows) → Gather(state, rows, axis 1) → Reshape (B, L, P) → taps ┤
    gate bias [→ Gemm(cond, W_cond, C)] [→ Gemm(Gather(speaker_embed, speaker), W_spk, C)] → gate_in ┤
      → WaveNetLayers → (skip, x) → WaveNetHead → logits;   x → Add(input_bias) → Reshape (B, L, R) → state_update

`plan_loop` matches exactly that (every node accounted for; the tap rows are checked against the manifest's
rings by evaluating the graph's own index nodes) and hands the same packed weights to `wn_loop_generate`
(plugins/ort/loop.cc), which runs embedding, tap gather, conditioning, the fused layer chain and head (the
ops' own kernels), the ring update and the draw (the float64 inverse CDF of `reference_model.sampling` from
the caller's uniforms, or greedy) for every step of a block. Anything else raises `NoMatch` and the host
steps one sample at a time through ONNX Runtime. The speaker projection is constant per stream: `match_loop`
tabulates gate bias + speaker projection once per speaker (`speaker_gate`, summed in float64 in a fixed order
and rounded once, so the table is the same on every machine), so conditioned models differ from the ONNX
Runtime session at float32 rounding level only.

`match_loop` is the plan as arrays and dimensions, without the library: the export writes it to the export
directory (`native_plan`, `step.native.safetensors`) for the C++ host, which runs the same loop on the same
arrays.
"""

from __future__ import annotations

import ctypes

import numpy as np
import onnx

from wn_export.backends.onnxruntime.fusion import Chain, pack_panels
from wn_export.export.graph_match import GraphIndex, NoMatch, need

_i64, _f64, _p = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
SPLITS = {"alone": 0, "pipeline": 1, "rows": 2}  # wn::Split (plugins/ort/kernels.h)


class WnLoopModel(ctypes.Structure):  # struct WnLoopModel (plugins/ort/loop.cc)
    _fields_ = [(n, _i64) for n in ("R", "G", "L", "P", "S", "H", "Q", "tokens", "kernel", "cond_channels",
                                    "state_rows")] + [
        ("ring_offset", _p), ("ring_length", _p), ("embed", _p), ("w_cond", _p), ("cond_half", _i64),
        ("w_gate", _p), ("w_out", _p), ("w_skip", _p), ("weights_half", _i64), ("b_skip", _p), ("alpha", _p),
        ("beta", _p), ("skip_scale", _f64), ("head_w1", _p), ("head_b1", _p), ("head_w2", _p), ("head_b2", _p),
        ("input_bias", _p)]


class WnLoopRun(ctypes.Structure):  # struct WnLoopRun (plugins/ort/loop.cc)
    _fields_ = [("batch", _i64), ("steps", _i64), ("position", _i64), ("split", _i64), ("state", _p), ("first", _p),
                ("gate_base", _p), ("gate_base_ld", _i64), ("cond", _p), ("cond_sb", _i64), ("cond_sc", _i64),
                ("cond_st", _i64), ("u", _p), ("temperature", _f64), ("tokens", _p), ("logits", _p), ("step_ns", _p),
                ("temperatures", _p)]


ALIGN = 128  # bytes: kAlign of plugins/ort/kernels.h (a multiple of every cache line)
STREAMED = ("w_cond", "w_gate", "w_out", "w_skip", "head_w1", "head_w2")  # the weights a step streams


def _aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` starting on ALIGN bytes: a weight vector that straddles two cache lines costs ~10%
    of the weight-streaming rate, and NumPy aligns large arrays to 16 bytes only."""
    buf = np.empty(a.nbytes + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _producer(t: GraphIndex, name: str, op: str):
    n = t.producer.get(name)
    need(n is not None and n.op_type == op, f"{name} is not made by {op}")
    return n


def _weight(t: GraphIndex, inits: set, name: str, used: list) -> np.ndarray:
    """A float32 initializer, or a float16 one widened by a Cast (w16)."""
    n = t.producer.get(name)
    if n is not None and n.op_type == "Cast":
        need(n.input[0] in inits and t.values[n.input[0]].dtype == np.float16, f"{name} casts something else")
        used.append(n)
        return t.values[n.input[0]]
    need(name in inits and t.values[name].dtype == np.float32, f"{name} is not a float32 initializer")
    return t.values[name]


def _tap_rows(t: GraphIndex, gather, position: str, rings, K1: int, used: list) -> None:
    """The graph's tap-row computation from `position` must be offset_l + (position + j·d_l) mod length_l for
    layer l and tap j < K − 1 (the contract's ring taps): checked by evaluating its nodes."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    nodes, stack = [], [gather.input[1]]
    while stack:
        name = stack.pop()
        if name == position or name in t.values:
            continue
        n = t.producer.get(name)
        need(n is not None and n.op_type in ("Add", "Sub", "Mod", "Mul"), f"tap rows depend on {name}")
        if n not in nodes:
            nodes.append(n)
            stack.extend(n.input)
    order = [n for n in t.nodes if n in nodes]
    consts = {i for n in order for i in n.input if i in t.values}
    graph = helper.make_graph(order, "tap_rows", [helper.make_tensor_value_info(position, onnx.TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info(gather.input[1], onnx.TensorProto.INT64, None)],
                              [onnx.numpy_helper.from_array(t.values[c], c) for c in sorted(consts)])
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    offsets = np.array([o for o, _ in rings], np.int64)
    lengths = np.array([n for _, n in rings], np.int64)
    for p in (0, 1, 2, 5, 1023, 1_000_003):
        got = np.asarray(evaluator.run(None, {position: np.array([p], np.int64)})[0]).reshape(-1)
        want = (offsets[:, None] + (p + np.arange(K1)[None, :] * (lengths // K1)[:, None]) % lengths[:, None])
        need(got.shape == (len(rings) * K1,) and np.array_equal(got, want.reshape(-1)), "tap rows ≠ the manifest's rings")
    used += order


class LoopPlan:
    """The native loop's model (`WnLoopModel`) and the arrays it points into (kept alive here): `arrays` and
    `dims` as `match_loop` returns them."""

    def __init__(self, lib: str, arrays: dict, dims: dict):
        arrays = {k: _aligned(v) if k in STREAMED and v is not None else v for k, v in arrays.items()}
        self.arrays, self.dims = arrays, dims
        self.fn = ctypes.CDLL(lib).wn_loop_generate
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.POINTER(WnLoopModel), ctypes.POINTER(WnLoopRun)]
        ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
        self.model = WnLoopModel(
            **{k: dims[k] for k in ("R", "G", "L", "P", "S", "H", "Q", "tokens", "kernel", "cond_channels",
                                    "state_rows")},
            ring_offset=ptr(arrays["ring_offset"]), ring_length=ptr(arrays["ring_length"]), embed=ptr(arrays["embed"]),
            w_cond=ptr(arrays["w_cond"]), cond_half=int(arrays["w_cond"] is not None and arrays["w_cond"].dtype == np.float16),
            w_gate=ptr(arrays["w_gate"]), w_out=ptr(arrays["w_out"]), w_skip=ptr(arrays["w_skip"]),
            weights_half=int(self.half), b_skip=ptr(arrays["b_skip"]), alpha=ptr(arrays["alpha"]),
            beta=ptr(arrays["beta"]), skip_scale=float(arrays["skip_scale"][0]), head_w1=ptr(arrays["head_w1"]),
            head_b1=ptr(arrays["head_b1"]), head_w2=ptr(arrays["head_w2"]), head_b2=ptr(arrays["head_b2"]),
            input_bias=ptr(arrays["input_bias"]))

    @property
    def half(self) -> bool:
        """16-bit weights (the layer chain's and the head's)."""
        return self.arrays["w_gate"].dtype == np.float16

    @property
    def weight_count(self) -> int:
        """Weights streamed per step: the layer chain, the head and the conditioning projection (as packed)."""
        a = self.arrays
        return sum(a[k].size for k in ("w_gate", "w_out", "w_skip", "head_w1", "head_w2", "w_cond") if a[k] is not None)

    def gate_base(self, batch: int, speaker) -> np.ndarray:
        """The gate pre-activation that does not change per sample: (L·2G,) shared, or (batch, L·2G) rows of the
        speaker table (one row per speaker, computed once: a stream's row does not depend on its batch)."""
        a = self.arrays
        if a["speaker_gate"] is None:
            return a["gate_bias"]
        if speaker is None or np.shape(speaker) != (batch,):
            raise NoMatch("speaker ids")
        return np.ascontiguousarray(a["speaker_gate"][np.asarray(speaker, np.int64)])

    def run(self, *, state: np.ndarray, position: int, first: np.ndarray, out: np.ndarray, gate_base: np.ndarray,
            u: np.ndarray | None, temperature: float, cond: np.ndarray | None, logits: np.ndarray, split: str,
            step_ns: np.ndarray | None = None) -> None:
        """`len(out)` steps from `position`: state (B, ΣN, R) float32 and logits (B, Q) are updated in place,
        out (steps, B) int64 receives the tokens; u (steps, B) float64 or None (greedy); temperature a float, or
        (B,) float64 per row with 0 for a greedy row (u then required); cond (B, C, ≥ steps) float32 (any
        strides) when the model has local conditioning."""
        _check_buffers(out, first, u, cond, step_ns, self.dims["cond_channels"])
        steps, B = out.shape
        rows = None
        if np.ndim(temperature):
            from reference_model.sampling import check_row_temperatures
            from wn_export.errors import InputError

            rows = check_row_temperatures(temperature, B)
            if u is None and np.any(rows > 0):
                raise InputError("per-row temperatures above 0 sample: they need uniforms")
            temperature = 1.0
        elif u is not None:
            from reference_model.sampling import check_temperature

            temperature = check_temperature("sample", temperature)
        itemsize = 4
        if cond is not None:
            sb, sc, st = (s // itemsize for s in cond.strides)
        else:
            sb = sc = st = 0
        run = WnLoopRun(batch=B, steps=steps, position=int(position), split=SPLITS[split], state=state.ctypes.data,
                        first=first.ctypes.data, gate_base=gate_base.ctypes.data,
                        gate_base_ld=gate_base.shape[-1] if gate_base.ndim == 2 else 0,
                        cond=None if cond is None else cond.ctypes.data, cond_sb=sb, cond_sc=sc, cond_st=st,
                        u=None if u is None else u.ctypes.data, temperature=float(temperature), tokens=out.ctypes.data,
                        logits=logits.ctypes.data, step_ns=None if step_ns is None else step_ns.ctypes.data,
                        temperatures=None if rows is None else rows.ctypes.data)
        code = self.fn(ctypes.byref(self.model), ctypes.byref(run))
        if code:
            from wn_export.errors import InputError

            raise InputError("the first tokens are outside [0, classes)" if code == 2 else
                             "the native generation loop refused its arguments")


def _check_buffers(out, first, u, cond, step_ns, C: int) -> None:
    """The caller's arrays, as the loop reads and writes them through their data pointers: out (steps, B) int64,
    first (B,) int64, u (steps, B) float64 and step_ns (steps,) int64, each C-contiguous (a reversed or strided view
    would be written past its end); cond float32 (B, C, ≥ steps) with element strides. An InputError otherwise."""
    from wn_export.errors import InputError

    def plain(a, dtype, shape) -> bool:
        return isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape and a.flags.c_contiguous

    if not (isinstance(out, np.ndarray) and out.ndim == 2 and plain(out, np.int64, out.shape) and out.flags.writeable):
        raise InputError("the native loop's out must be a writable C-contiguous (steps, batch) int64 array (got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {list(np.shape(out))})")
    steps, B = out.shape
    for name, a, dtype, shape in (("first", first, np.int64, (B,)), ("u", u, np.float64, (steps, B)),
                                  ("step_ns", step_ns, np.int64, (steps,))):
        if (a is not None or name == "first") and not plain(a, dtype, shape):
            raise InputError(f"the native loop's {name} must be a C-contiguous {shape} {np.dtype(dtype)} array (got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {list(np.shape(a))})")
    if C and cond is not None and not (isinstance(cond, np.ndarray) and cond.dtype == np.float32 and cond.ndim == 3
                                       and cond.shape[:2] == (B, C) and cond.shape[2] >= steps
                                       and all(s % 4 == 0 for s in cond.strides)):
        raise InputError(f"the native loop's cond must be float32 ({B}, {C}, ≥ {steps}) (got "
                         f"{getattr(cond, 'dtype', type(cond).__name__)} {list(np.shape(cond))})")


def plan_loop(fused: onnx.ModelProto, chain: Chain, graph, lib: str) -> LoopPlan:
    """The native loop of a fused step graph (`graph`: its manifest `GraphRecord`). Raises NoMatch."""
    arrays, dims = match_loop(fused, chain, graph)
    return LoopPlan(lib, arrays, dims)


def speaker_table(gate_bias: np.ndarray, speaker_embed: np.ndarray, w_speaker: np.ndarray) -> np.ndarray:
    """gate_bias + speaker_embed · W_spk for every speaker → (speakers, L·2G) float32: float64 products and sums in
    a fixed order (element-wise IEEE operations, no BLAS), rounded once, so every machine gets the same bits."""
    acc = np.broadcast_to(gate_bias.astype(np.float64), (speaker_embed.shape[0], gate_bias.size)).copy()
    e, w = speaker_embed.astype(np.float64), w_speaker.astype(np.float64)
    for k in range(e.shape[1]):
        acc += e[:, k:k + 1] * w[k]
    return acc.astype(np.float32)


def match_loop(fused: onnx.ModelProto, chain: Chain, graph) -> tuple[dict, dict]:
    """The native loop's arrays and dimensions for a fused step graph (`graph`: its manifest `GraphRecord`):
    {ring_offset, ring_length (L) int64, embed (tokens, R), gate_bias (L·2G), speaker_gate (speakers, L·2G) or
    None, input_bias (L·R), w_cond (packed C × L·2G) or None, w_gate, w_out, w_skip, b_skip, alpha, beta,
    skip_scale (1,) float64, head_w1, head_b1, head_w2, head_b2}, {R, G, L, P, S, H, Q, tokens, kernel,
    cond_channels, state_rows}. Raises NoMatch."""
    need(chain.head is not None, "the head is not fused")
    need(graph.layout == "ring" and len(graph.state) == 1 and graph.state[0].update == "ring", "not one ring state")
    t = GraphIndex(fused)
    inits = {i.name for i in fused.graph.initializer}
    roles = {i.role: i.name for i in graph.inputs}
    need(set(roles) <= {"token", "state", "position", "cond", "speaker"} and "token" in roles, "graph inputs")
    outs = {o.role: o.name for o in graph.outputs}
    state = graph.state[0]
    need(outs.get("logits") == chain.names["logits"] and state.output in outs.values(), "graph outputs")
    L, R, G, P = chain.L, chain.R, chain.G, chain.P
    K1 = P // R
    need(P == K1 * R and K1 >= 1 and len(state.rings) == L, "taps per layer")
    used = [n for n in t.nodes if n.op_type in ("WaveNetLayers", "WaveNetHead")]
    need(len(used) == 2, "the fused ops")
    # x0 = embed[token]
    emb = _producer(t, chain.names["x0"], "Gather")
    need(emb.input[1] == roles["token"] and emb.input[0] in inits and {a.name for a in emb.attribute} <= {"axis"}
         and GraphIndex.attrs(emb).get("axis", 0) == 0, "embedding")
    embed = np.ascontiguousarray(t.values[emb.input[0]], np.float32)
    need(embed.ndim == 2 and embed.shape[1] == R, "embedding shape")
    used.append(emb)
    # taps = Reshape(Gather(state, rows(position), axis 1), (0, L, P))
    reshape = _producer(t, chain.names["taps"], "Reshape")
    need(reshape.input[1] in t.values and list(t.values[reshape.input[1]]) == [0, L, P], "tap reshape")
    gat = _producer(t, reshape.input[0], "Gather")
    need(gat.input[0] == roles["state"] and GraphIndex.attrs(gat).get("axis") == 1, "tap gather")
    _tap_rows(t, gat, roles.get("position", ""), state.rings, K1, used)
    used += [reshape, gat]
    # gate_in = bias [+ cond · W_cond] [+ speaker_embed[speaker] · W_spk]
    w_cond = speaker_embed = w_speaker = None
    cur = chain.names["gate_in"]
    while cur not in inits:
        gemm = _producer(t, cur, "Gemm")
        a = GraphIndex.attrs(gemm)
        need(len(gemm.input) == 3 and not a.get("transA", 0) and not a.get("transB", 0)
             and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0, "conditioning Gemm")
        w = _weight(t, inits, gemm.input[1], used)
        if gemm.input[0] == roles.get("cond") and w_cond is None:
            w_cond = w
        else:
            g = _producer(t, gemm.input[0], "Gather")
            need(g.input[1] == roles.get("speaker") and g.input[0] in inits and speaker_embed is None, "speaker Gemm")
            speaker_embed, w_speaker = t.values[g.input[0]].astype(np.float32), w
            used.append(g)
        used.append(gemm)
        cur = gemm.input[2]
    gate_bias = np.ascontiguousarray(t.values[cur], np.float32).reshape(-1)
    need(gate_bias.size == L * 2 * G, "gate bias")
    need((w_cond is None) == ("cond" not in roles) and (speaker_embed is None) == ("speaker" not in roles),
         "conditioning inputs")
    # state_update = Reshape(x + input_bias, (0, L, R))
    add = t.consumers[chain.names["x"]]
    need(len(add) == 1 and add[0].op_type == "Add", "state update Add")
    bias_name = next((i for i in add[0].input if i != chain.names["x"]), None)
    need(bias_name in inits, "state update bias")
    input_bias = np.ascontiguousarray(t.values[bias_name], np.float32).reshape(-1)
    need(input_bias.size == L * R, "state update bias size")
    up = t.consumers[add[0].output[0]]
    need(len(up) == 1 and up[0].op_type == "Reshape" and up[0].output[0] == state.output
         and list(t.values.get(up[0].input[1], [])) == [0, L, R], "state update reshape")
    used += [add[0], up[0]]
    need({id(n) for n in used} == {id(n) for n in t.nodes if n.op_type != "Constant"}, "other nodes in the graph")
    w1, b1, w2, b2 = chain.head
    Q = w2.shape[1]
    need(embed.shape[0] == Q, "the embedding does not take the classes")
    arrays = {"ring_offset": np.array([o for o, _ in state.rings], np.int64),
              "ring_length": np.array([n for _, n in state.rings], np.int64), "embed": embed,
              "gate_bias": gate_bias,
              "speaker_gate": None if speaker_embed is None else speaker_table(gate_bias, speaker_embed, w_speaker),
              "input_bias": input_bias, "w_cond": None if w_cond is None else pack_panels(w_cond),
              "w_gate": pack_panels(chain.w_gate), "w_out": pack_panels(chain.w_out), "w_skip": pack_panels(chain.w_skip),
              "b_skip": np.ascontiguousarray(chain.b_skip, np.float32), "alpha": np.array(chain.alpha, np.float32),
              "beta": np.array(chain.beta, np.float32), "skip_scale": np.array([chain.skip_scale], np.float64),
              "head_w1": pack_panels(w1), "head_b1": np.ascontiguousarray(b1, np.float32), "head_w2": pack_panels(w2),
              "head_b2": np.ascontiguousarray(b2, np.float32)}
    dims = dict(R=R, G=G, L=L, P=P, S=chain.S, H=w1.shape[1], Q=Q, tokens=embed.shape[0], kernel=K1 + 1,
                cond_channels=0 if w_cond is None else w_cond.shape[0],
                state_rows=int(graph.input("state").shape[1]))
    need(dims["state_rows"] >= int((arrays["ring_offset"] + arrays["ring_length"]).max()), "rings outside the state")
    return arrays, dims
