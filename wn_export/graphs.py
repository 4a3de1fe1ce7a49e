"""The exported graphs: their I/O contract as data, and the nn.Modules whose forward IS that contract.

Three graphs (the third only with local conditioning):

- scoring:  tokens (batch, time) [, cond (batch, C, time)] [, speaker (batch,)]
            → logits (batch, time, Q), log_prob (batch, time-1)
- step:     token (batch,) [, cond (batch, C)] [, speaker (batch,)], state…
            → logits (batch, Q), state updates…
- upsample: cond (batch, C, frames) → cond_samples (batch, C, samples = frames·hop): the one place
            frame-rate features become the per-sample conditioning the other two graphs take.

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
    role: str  # tokens | token | cond | speaker | state | position | logits | log_prob | cond_samples
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


def scoring_spec(cfg: WaveNetConfig, precision: Precision) -> GraphSpec:
    Q = cfg.quantization_channels
    inputs = [TensorSpec("tokens", "tokens", "int64", ("batch", "time")), *_conditioning_inputs(cfg, False)]
    outputs = [TensorSpec("logits", "logits", "float32", ("batch", "time", Q)),
               TensorSpec("log_prob", "log_prob", "float32", ("batch", "time-1"))]
    return GraphSpec("scoring", precision.name, tuple(inputs), tuple(outputs))


def step_spec(cfg: WaveNetConfig, precision: Precision, layout: str = "ring") -> GraphSpec:
    R, Q, dt = cfg.residual_channels, cfg.quantization_channels, precision.state_dtype
    inputs = [TensorSpec("token", "token", "int64", ("batch",)), *_conditioning_inputs(cfg, True)]
    outputs = [TensorSpec("logits", "logits", "float32", ("batch", Q))]
    if layout == "ring":
        shape = ("batch", sum(cfg.state_lengths), R)
        inputs += [TensorSpec("state", "state", dt, shape), TensorSpec("position", "position", "int64", (1,))]
        outputs.append(TensorSpec("state_update", "state", dt, ("batch", cfg.layers, R)))
        state = (StateSpec("state", "state_update", dt, shape, update="ring", position="position",
                           rings=ring_offsets(cfg)),)
    else:
        state = tuple(StateSpec(f"state.{i}", f"state.{i}.next", dt, ("batch", R, n))
                      for i, n in enumerate(cfg.state_lengths))
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
        logits, _ = self.net.run(tokens, pasts, cond, speaker, skip_dtype=self.precision.skip_accumulate)
        logits = logits.to(self.precision.output)  # (B, T, Q)
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

    def forward(self, token, *extra):  # token (B,)
        cond, speaker, state = self._conditioning(extra)
        if cond is not None:
            cond = cond.unsqueeze(-1)  # (B, C, 1)
        tokens = token.unsqueeze(1)  # (B, 1)
        if self.layout == "ring":
            packed, position = state  # (B, ΣN, R), (1,)
            # the sample of time t − (K−1)d + j·d sits at offset + (t + j·d) mod (K−1)d
            index = self.tap_base + torch.remainder(position + self.tap_shift, self.tap_mod)  # (L·(K−1),)
            taps = packed.index_select(1, index).transpose(1, 2)  # (B, R, L·(K−1))
            pasts = list(taps.split(self.cfg.kernel_size - 1, dim=-1))  # L × (B, R, K−1)
            logits, inputs = self.net.run(tokens, pasts, cond, speaker, taps=True,
                                          skip_dtype=self.precision.skip_accumulate)
            update = torch.cat(inputs, dim=-1).transpose(1, 2)  # (B, L, R)
            return logits[:, 0].to(self.precision.output), update
        logits, nxt = self.net.run(tokens, list(state), cond, speaker,
                                   skip_dtype=self.precision.skip_accumulate)
        return (logits[:, 0].to(self.precision.output), *nxt)


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
        elif t.role == "speaker":
            out.append(torch.randint(0, cfg.speakers, shape, generator=generator))
        elif t.role == "position":
            out.append(torch.tensor([time], dtype=torch.int64))
        else:
            dtype = getattr(torch, t.dtype)
            out.append(torch.randn(shape, generator=generator).to(dtype))
    return out
