"""The exported graphs: their I/O contract as data, and the nn.Modules whose forward IS that contract.

Three graphs (the third only with local conditioning):

- scoring:  tokens (batch, time) [, cond (batch, C, time)] [, speaker (batch,)]
            → logits (batch, time, Q), log_prob (batch, time-1)
- step:     token (batch,) [, cond (batch, C)] [, speaker (batch,)], state…
            → logits (batch, Q), state updates…
- upsample: cond (batch, C, frames) → cond_samples (batch, C, samples = frames·hop): the one place
            frame-rate features become the per-sample conditioning the other two graphs take.

Variants: a scalar-input model takes float32 `samples` (batch, time) / `sample` (batch,) instead of
tokens; a mixture-of-logistics model outputs `mol_params` (…, 3·mixtures) raw parameters instead of
logits, and its `log_prob` is the discretised mixture log-likelihood of the next sample. A front end
of width W > 1 adds its own state: ring layout `input_state` (batch, W−1, Q or 1) with one ring of
length W−1 and update `input_state_update` (batch, 1, Q or 1); full layout `state.input`
(batch, Q or 1, W−1) → `state.input.next`, before the layers' states.

Step-graph state layouts (`StateLayout`):

- "ring" (default): one packed tensor `state` (batch, Σ(K−1)·d, R) holding every layer's last
  (K−1)·d inputs as ring buffers, plus `position` (1,) int64 = samples consumed so far. The graph
  gathers only the K−1 columns each layer reads and outputs `state_update` (batch, L, R), the new
  input of every layer; the host writes row l to `state[:, offset_l + position mod length_l, :]`.
  Bytes moved per step scale with layers × channels, not with the sum of the dilations.
- "full": one tensor per layer `state.{l}` (batch, R, (K−1)·d), oldest first; the graph outputs the
  shifted tensor `state.{l}.next` and the host swaps buffers. Simple, but every step copies the
  whole state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reference_model import WaveNet, WaveNetConfig

from .precision import Precision

LAYOUTS = ("ring", "full")
GRAPH_KINDS = ("scoring", "step", "upsample")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    role: str  # tokens | samples | token | sample | cond | speaker | state | position | logits | mol_params
    #            | log_prob | cond_samples
    dtype: str  # numpy dtype name
    shape: tuple  # ints and named symbolic dims

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class StateSpec:
    input: str
    output: str
    dtype: str
    shape: tuple
    init: float = 0.0
    update: str = "replace"  # replace: output is the next input | ring: write rows (see module doc)
    position: str | None = None  # ring: name of the position input
    rings: tuple = ()  # ring: per output row l, (offset, length) in the state's axis 1

    def to_dict(self) -> dict:
        d = {"input": self.input, "output": self.output, "dtype": self.dtype, "shape": list(self.shape),
             "init": self.init, "update": self.update}
        if self.update == "ring":
            d["position"] = self.position
            d["rings"] = [{"offset": o, "length": n} for o, n in self.rings]
        return d


@dataclass(frozen=True)
class GraphSpec:
    kind: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[StateSpec, ...] = field(default=())
    layout: str | None = None

    @property
    def name(self) -> str:
        return self.kind if self.precision == "fp32" else f"{self.kind}.{self.precision}"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs) if any(isinstance(d, str) for d in t.shape)}

    def role(self, role: str) -> list[TensorSpec]:
        return [t for t in self.inputs if t.role == role]


def ring_offsets(cfg: WaveNetConfig) -> tuple[tuple[int, int], ...]:
    """(offset, length) of every layer's ring buffer along the packed state's axis 1."""
    out, offset = [], 0
    for n in cfg.state_lengths:
        out.append((offset, n))
        offset += n
    return tuple(out)


def _conditioning_inputs(cfg: WaveNetConfig, step: bool) -> list[TensorSpec]:
    specs = []
    if cfg.local:  # per-sample features (the upsample graph's output)
        shape = ("batch", cfg.local_channels) if step else ("batch", cfg.local_channels, "time")
        specs.append(TensorSpec("cond", "cond", "float32", shape))
    if cfg.global_:
        specs.append(TensorSpec("speaker", "speaker", "int64", ("batch",)))
    return specs


def _input_spec(cfg: WaveNetConfig, step: bool) -> TensorSpec:
    """The token input, or a scalar model's float sample input."""
    if cfg.scalar_input:
        return TensorSpec(*(("sample", "sample") if step else ("samples", "samples")), "float32",
                          ("batch",) if step else ("batch", "time"))
    return TensorSpec(*(("token", "token") if step else ("tokens", "tokens")), "int64",
                      ("batch",) if step else ("batch", "time"))


def _output_spec(cfg: WaveNetConfig, step: bool) -> TensorSpec:
    """The logits output, or a mixture-of-logistics model's raw parameters."""
    name = "mol_params" if cfg.mol else "logits"
    return TensorSpec(name, name, "float32", ("batch", cfg.output_channels) if step
                      else ("batch", "time", cfg.output_channels))


def scoring_spec(cfg: WaveNetConfig, precision: Precision) -> GraphSpec:
    inputs = [_input_spec(cfg, False), *_conditioning_inputs(cfg, False)]
    outputs = [_output_spec(cfg, False),
               TensorSpec("log_prob", "log_prob", "float32", ("batch", "time-1"))]
    return GraphSpec("scoring", precision.name, tuple(inputs), tuple(outputs))


def step_spec(cfg: WaveNetConfig, precision: Precision, layout: str = "ring") -> GraphSpec:
    R, dt = cfg.residual_channels, precision.state_dtype
    inputs = [_input_spec(cfg, True), *_conditioning_inputs(cfg, True)]
    outputs = [_output_spec(cfg, True)]
    W1, Cin = cfg.input_state_length, cfg.input_channels  # a wide front end's state
    if layout == "ring":
        shape = ("batch", sum(cfg.state_lengths), R)
        inputs += [TensorSpec("state", "state", dt, shape), TensorSpec("position", "position", "int64", (1,))]
        outputs.append(TensorSpec("state_update", "state", dt, ("batch", cfg.layers, R)))
        state = (StateSpec("state", "state_update", dt, shape, update="ring", position="position",
                           rings=ring_offsets(cfg)),)
        if W1:
            front = ("batch", W1, Cin)
            inputs.append(TensorSpec("input_state", "state", dt, front))
            outputs.append(TensorSpec("input_state_update", "state", dt, ("batch", 1, Cin)))
            state += (StateSpec("input_state", "input_state_update", dt, front, update="ring",
                                position="position", rings=((0, W1),)),)
    else:
        state = tuple(StateSpec(f"state.{i}", f"state.{i}.next", dt, ("batch", R, n))
                      for i, n in enumerate(cfg.state_lengths))
        if W1:
            state = (StateSpec("state.input", "state.input.next", dt, ("batch", Cin, W1)),) + state
        inputs += [TensorSpec(s.input, "state", dt, s.shape) for s in state]
        outputs += [TensorSpec(s.output, "state", dt, s.shape) for s in state]
    return GraphSpec("step", precision.name, tuple(inputs), tuple(outputs), state, layout)


def upsample_spec(cfg: WaveNetConfig) -> GraphSpec:
    C = cfg.local_channels
    return GraphSpec("upsample", "fp32", (TensorSpec("cond", "cond", "float32", ("batch", C, "frames")),),
                     (TensorSpec("cond_samples", "cond_samples", "float32", ("batch", C, "samples")),))


# ---- wrappers: forward(*inputs in spec order) → outputs in spec order ------------------------------
class _Graph(nn.Module):
    def __init__(self, model: WaveNet, precision: Precision, spec: GraphSpec):
        super().__init__()
        self.net = precision.apply(model)
        self.precision = precision
        self.spec = spec
        self.cfg = model.cfg

    def _conditioning(self, extra) -> tuple[torch.Tensor | None, torch.Tensor | None, list]:
        extra = list(extra)
        cond = extra.pop(0).to(self.precision.compute) if self.cfg.local else None
        speaker = extra.pop(0) if self.cfg.global_ else None
        return cond, speaker, extra


class ScoringGraph(_Graph):
    def __init__(self, model: WaveNet, precision: Precision):
        super().__init__(model, precision, scoring_spec(model.cfg, precision))

    def forward(self, tokens, *extra):  # tokens (B, T), cond (B, C, T)
        cond, speaker, _ = self._conditioning(extra)
        B = tokens.shape[0]
        pasts = [torch.zeros(B, self.cfg.residual_channels, n, dtype=self.precision.compute)
                 for n in self.cfg.state_lengths]
        if self.cfg.input_state_length:  # a wide front end's past comes first
            pasts.insert(0, torch.zeros(B, self.cfg.input_channels, self.cfg.input_state_length,
                                        dtype=self.precision.compute))
        logits, _ = self.net.run(tokens, pasts, cond, speaker, skip_dtype=self.precision.skip_accumulate)
        logits = logits.to(self.precision.output)  # (B, T, Q) (mol: (B, T, 3·mixtures))
        if self.cfg.scalar_input or self.cfg.mol:  # μ-law class of a scalar / mixture log-likelihood
            return logits, self.net.log_prob(logits, tokens)
        log_prob = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:].unsqueeze(-1))
        return logits, log_prob.squeeze(-1)  # (B, T, Q), (B, T−1)


class StepGraph(_Graph):
    def __init__(self, model: WaveNet, precision: Precision, layout: str = "ring"):
        super().__init__(model, precision, step_spec(model.cfg, precision, layout))
        self.layout = layout
        if layout == "ring":  # constant tap tables: for layer l and tap j < K−1
            K = self.cfg.kernel_size
            base, shift, mod = [], [], []
            for (offset, n), d in zip(ring_offsets(self.cfg), self.cfg.layer_dilations):
                for j in range(K - 1):
                    base.append(offset)
                    shift.append(j * d)
                    mod.append(n)
            self.register_buffer("tap_base", torch.tensor(base, dtype=torch.int64))
            self.register_buffer("tap_shift", torch.tensor(shift, dtype=torch.int64))
            self.register_buffer("tap_mod", torch.tensor(mod, dtype=torch.int64))
            if self.cfg.input_state_length:  # a wide front end's ring: all its W−1 columns, dilation 1
                self.register_buffer("input_tap_shift", torch.arange(self.cfg.input_state_length))

    def forward(self, token, *extra):  # token (B,)
        cond, speaker, state = self._conditioning(extra)
        if cond is not None:
            cond = cond.unsqueeze(-1)  # (B, C, 1)
        tokens = token.unsqueeze(1)  # (B, 1)
        if self.layout == "ring":
            packed, position, *front = state  # (B, ΣN, R), (1,) [, input_state (B, W−1, Q or 1)]
            # the sample of time t − (K−1)d + j·d sits at offset + (t + j·d) mod (K−1)d
            index = self.tap_base + torch.remainder(position + self.tap_shift, self.tap_mod)  # (L·(K−1),)
            taps = packed.index_select(1, index).transpose(1, 2)  # (B, R, L·(K−1))
            pasts = list(taps.split(self.cfg.kernel_size - 1, dim=-1))  # L × (B, R, K−1)
            if front:  # the front end's W−1 past inputs, oldest first
                W1 = self.cfg.input_state_length
                order = torch.remainder(position + self.input_tap_shift, W1)
                pasts.insert(0, front[0].index_select(1, order).transpose(1, 2))  # (B, Q or 1, W−1)
            logits, inputs = self.net.run(tokens, pasts, cond, speaker, taps=True,
                                          skip_dtype=self.precision.skip_accumulate)
            if front:
                front_update = inputs.pop(0).transpose(1, 2)  # (B, 1, Q or 1)
                update = torch.cat(inputs, dim=-1).transpose(1, 2)  # (B, L, R)
                return logits[:, 0].to(self.precision.output), update, front_update
            update = torch.cat(inputs, dim=-1).transpose(1, 2)  # (B, L, R)
            return logits[:, 0].to(self.precision.output), update
        logits, nxt = self.net.run(tokens, list(state), cond, speaker,
                                   skip_dtype=self.precision.skip_accumulate)
        return (logits[:, 0].to(self.precision.output), *nxt)

    # the exported FP32 step graph is lowered to 2-D Gemms after tracing (`step_lowering`): same I/O,
    # same weights, checked here against this module's forward (the traced function) before it is kept
    LOWERING_TOLERANCE = 1e-4  # max |lowered − traced| relative to max(1, max |traced|), FP32

    def lower_onnx(self, graph):
        """Traced ONNX step graph → the lowered graph, or the traced graph where the pass does not
        apply (FP16, or a structure it does not know: the reason goes into the model's metadata)."""
        import onnx

        from .errors import ExportError
        from .step_lowering import UnsupportedGraph, lower_step_graph

        def note(text: str):
            graph.metadata_props.append(onnx.StringStringEntryProto(key="wn_export.lowering", value=text))
            return graph

        if self.precision.name != "fp32":
            return note("not lowered: FP16 graphs keep the traced form")
        try:
            lowered = lower_step_graph(graph, self.spec, self.cfg)
        except UnsupportedGraph as e:
            return note(f"not lowered: {e}")
        worst = self.lowering_error(lowered)
        if worst > self.LOWERING_TOLERANCE:
            raise ExportError(f"the lowered step graph differs from the traced one by {worst:.2e} "
                              f"(> {self.LOWERING_TOLERANCE:g}): a bug in wn_export.step_lowering")
        lowered.metadata_props.append(onnx.StringStringEntryProto(
            key="wn_export.lowering", value=f"lowered to 2-D Gemms; max relative deviation {worst:.1e}"))
        return lowered

    @torch.no_grad()
    def lowering_error(self, lowered, batch: int = 3) -> float:
        """max |lowered − forward| / max(1, max |forward|) over every output, on random inputs at
        several ring positions (ONNX's reference evaluator: no runtime needed at export)."""
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(lowered)
        gen = torch.Generator().manual_seed(0)
        worst = 0.0
        for position in (0, 5, 1_000_003):
            inputs = example_inputs(self.spec, self.cfg, batch=batch, time=position, generator=gen)
            want = self(*inputs)
            got = evaluator.run(None, {t.name: v.numpy() for t, v in zip(self.spec.inputs, inputs)})
            for w, g in zip(want, got):
                w = w.double().numpy()
                worst = max(worst, float(abs(g - w).max() / max(1.0, abs(w).max())))
        return worst


class UpsampleGraph(nn.Module):
    def __init__(self, model: WaveNet):
        super().__init__()
        self.net = Precision("fp32", torch.float32).apply(model)
        self.spec = upsample_spec(model.cfg)

    def forward(self, cond):  # (B, C, frames) → (B, C, frames·hop)
        return self.net.upsample(cond)


def build_graph(model: WaveNet, kind: str, precision: Precision, layout: str = "ring") -> nn.Module:
    if kind == "scoring":
        return ScoringGraph(model, precision).eval()
    if kind == "step":
        return StepGraph(model, precision, layout).eval()
    return UpsampleGraph(model).eval()


def example_inputs(spec: GraphSpec, cfg: WaveNetConfig, batch: int = 2, time: int = 8,
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Random inputs matching a spec (for tracing and tests). Symbolic dims: batch, time, frames."""
    frames = max(1, -(-time // cfg.hop_size))
    dims = {"batch": batch, "time": time, "frames": frames}
    out = []
    for t in spec.inputs:
        shape = [dims[d] if isinstance(d, str) else d for d in t.shape]
        if t.role in ("tokens", "token"):
            out.append(torch.randint(0, cfg.quantization_channels, shape, generator=generator))
        elif t.role in ("samples", "sample"):
            out.append(torch.rand(shape, generator=generator) * 2 - 1)
        elif t.role == "speaker":
            out.append(torch.randint(0, cfg.speakers, shape, generator=generator))
        elif t.role == "position":
            out.append(torch.tensor([time], dtype=torch.int64))
        else:
            dtype = getattr(torch, t.dtype)
            out.append(torch.randn(shape, generator=generator).to(dtype))
    return out
