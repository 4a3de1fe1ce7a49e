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

Fused step graph (`step.fused`, `wn-export onnx --fused-step`): the ring step graph's I/O exactly, but
its body is ONE custom node, `WAVENET_STEP_PLUGIN` (`wn_export::WaveNetStep`), that TensorRT runs as a
plugin (the fused Triton kernel's PTX embedded). The node writes `state_update` like the standard graph
and never writes its `state` input, so hosts apply the same `ring` rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the contract imports no torch: hosts read it with ONNX Runtime alone
    from reference_model.config import WaveNetConfig

LAYOUTS = ("ring", "full")
GRAPH_KINDS = ("scoring", "step", "upsample")
PRECISION_NAMES = ("fp32", "fp16", "w16")
# the step state's dtype per graph precision (the FP16 policy of export/precision.py, which reads it from here)
STATE_DTYPES = {"fp32": "float32", "fp16": "float16", "w16": "float32"}


class Role(str, Enum):
    """What a graph tensor carries; a manifest names it in each tensor's `role`."""

    TOKENS = "tokens"  # scoring input: μ-law classes (batch, time)
    SAMPLES = "samples"  # scoring input of a scalar-input model (batch, time)
    TOKEN = "token"  # step input (batch,)
    SAMPLE = "sample"  # step input of a scalar-input model (batch,)
    COND = "cond"  # per-sample local conditioning
    SPEAKER = "speaker"  # global conditioning ids (batch,)
    STATE = "state"  # step state, input and update
    POSITION = "position"  # ring layout: samples consumed so far (1,)
    LOGITS = "logits"  # categorical distribution
    MOL_PARAMS = "mol_params"  # mixture-of-logistics raw parameters
    LOG_PROB = "log_prob"  # log-likelihood of the next sample
    COND_SAMPLES = "cond_samples"  # upsample output


# The one place where a role has a variant's alternative: the step graph's fed-back input is a token or,
# for scalar-input models, a sample; its distribution output is logits or mixture parameters.
FEED_ROLES = (Role.TOKEN, Role.SAMPLE)
SEQUENCE_ROLES = (Role.TOKENS, Role.SAMPLES)
DISTRIBUTION_ROLES = (Role.LOGITS, Role.MOL_PARAMS)


GRAPH_VARIANTS = ("fused",)  # a step graph whose body is one plugin node


def graph_name(kind: str, precision: str = "fp32", variant: str | None = None) -> str:
    """The manifest's graph name, also its file's stem: `step`, `step.fp16`, `scoring`, `step.fused`,
    `step.fused.fp16` (fp32 carries no suffix)."""
    base = kind if variant is None else f"{kind}.{variant}"
    return base if precision == "fp32" else f"{base}.{precision}"


@dataclass(frozen=True)
class PluginSpec:
    """The one custom node of a fused graph, as data: what the ONNX node, TensorRT and both plugin
    implementations (`backends/tensorrt/plugin.py`, `plugins/trt`) agree on."""

    domain: str  # the node's domain and TensorRT plugin namespace
    op: str  # the node's op type and plugin name
    version: str
    inputs: tuple[str, ...]  # node inputs in order (= the kernel's pointer parameters in order)
    outputs: tuple[str, ...]  # node outputs in order (= the graph outputs, by name)
    attributes: tuple[str, ...]  # node attributes = the plugin fields both implementations read
    scalars: tuple[str, ...]  # the kernel's int32 arguments between the inputs and the outputs

    @property
    def id(self) -> str:
        return f"{self.domain}::{self.op}"

    @staticmethod
    def output_shapes(token_shape, state_shape, layers, classes) -> tuple[tuple, tuple]:
        """The shape rule (the graph's hygiene and TensorRT's shape inference both use it; any dim
        objects): token (B,), state (B, N, R) → logits (B, Q), state_update (B, L, R)."""
        return (token_shape[0], classes), (state_shape[0], layers, state_shape[2])


WAVENET_STEP_PLUGIN = PluginSpec(
    domain="wn_export", op="WaveNetStep", version="1",
    # token (batch,) int64 | cond (batch, C) float32 | speaker (batch,) int64 | state (batch, N, R) |
    # position (1,) int64 | weights (size,) packed blob | layer_table (L, 3) int32 | speaker_table
    # (speakers, L, G) float32; a model without local / global conditioning gets 1-element stand-ins
    inputs=("token", "cond", "speaker", "state", "position", "weights", "layer_table", "speaker_table"),
    outputs=("logits", "state_update"),  # (batch, Q) float32, (batch, L, R) state dtype
    attributes=("ptx", "kernel", "num_warps", "shared_bytes", "layers", "classes"),
    scalars=("layers", "state_rows"),  # int32 L, int32 N (= state.shape[1])
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    role: str  # a `Role` value
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
    plugin: PluginSpec | None = None  # a fused graph: its one custom node

    @property
    def name(self) -> str:
        return graph_name(self.kind, self.precision, "fused" if self.plugin else None)

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


def scoring_spec(cfg: WaveNetConfig, precision) -> GraphSpec:
    """`precision`: an `export.precision.Precision` (its name and state dtype)."""
    inputs = [_input_spec(cfg, False), *_conditioning_inputs(cfg, False)]
    outputs = [_output_spec(cfg, False),
               TensorSpec("log_prob", "log_prob", "float32", ("batch", "time-1"))]
    return GraphSpec("scoring", precision.name, tuple(inputs), tuple(outputs))


def step_spec(cfg: WaveNetConfig, precision, layout: str = "ring") -> GraphSpec:
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


def fused_step_spec(cfg: WaveNetConfig, precision) -> GraphSpec:
    """The fused step graph: the ring step graph's I/O and state rule, one `WAVENET_STEP_PLUGIN` node."""
    from dataclasses import replace

    return replace(step_spec(cfg, precision, "ring"), plugin=WAVENET_STEP_PLUGIN)


def upsample_spec(cfg: WaveNetConfig) -> GraphSpec:
    C = cfg.local_channels
    return GraphSpec("upsample", "fp32", (TensorSpec("cond", "cond", "float32", ("batch", C, "frames")),),
                     (TensorSpec("cond_samples", "cond_samples", "float32", ("batch", C, "samples")),))


