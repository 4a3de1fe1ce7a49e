"""The mixed-precision policy of the FP16 graphs, in one place.

We do not cast every tensor. The policy, per part of the network:

| part                                                     | fp32 graph | fp16 graph |
|----------------------------------------------------------|------------|------------|
| token / speaker inputs                                   | int64      | int64      |
| `cond` input (interface)                                 | float32    | float32, cast to fp16 inside |
| embedding, dilated conv, cond / speaker projections      | fp32       | fp16       |
| gate tanh·σ, residual 1×1 + residual add, skip 1×1       | fp32       | fp16       |
| dilation state (step graph I/O)                          | float32    | float16 (halves state traffic) |
| sum of the skips over all layers                         | fp32       | **fp32** (L terms: fp16 would lose the small ones) |
| head ReLU–1×1–ReLU–1×1                                   | fp32       | fp16 (input cast from the fp32 skip sum) |
| logits output                                            | float32    | **float32** (cast after the head) |
| log-softmax, log_prob gather                             | fp32       | **fp32** (exp/log over Q classes) |

Consumers (TensorRT, strongly typed) take these dtypes as given: FP16 comes from the graph.

**w16** ("fp32 compute, 16-bit weights", `wn-export onnx --w16` → `step.w16.onnx`, `scoring.w16.onnx`): the FP32
graph (the step graph lowered) with every weight matrix (the weight input of each Gemm, MatMul and Conv: past taps,
gate halves, residual, skip, head, conditioning and speaker projections) stored as float16 and widened by a
`Cast` to float32 where it is used. Every activation, product and sum stays float32; embeddings (gathered one
row at a time) and biases stay float32. Any runtime computes the same function (ONNX Runtime folds the Casts
once at session start); the ONNX Runtime host's fused ops keep the float16 matrices and stream half the bytes
per sample (plugins/ort/README.md). Only the rounding of the weights to float16 (relative 2⁻¹¹) changes the
function; its parity row is `w16` in `TOLERANCES`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from reference_model import WaveNet
from wn_export.contract.specs import STATE_DTYPES
from wn_export.errors import ExportError


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32" | "fp16" | "w16": the manifest's `precision` and the graph-file suffix
    compute: torch.dtype  # weights and layer activations
    skip_accumulate: torch.dtype = torch.float32  # skip sum across layers
    output: torch.dtype = torch.float32  # logits / log_prob outputs and log-softmax
    weights16: bool = False  # weight matrices stored as float16, widened to float32 where used (w16)

    @property
    def suffix(self) -> str:
        return "" if self.name == "fp32" else f".{self.name}"

    @property
    def state_dtype(self) -> str:
        return STATE_DTYPES[self.name]  # the contract's table: hosts read it without torch

    def apply(self, model: WaveNet) -> WaveNet:
        """A copy of the model with its weights in the compute dtype; every weight must stay finite."""
        cast = copy.deepcopy(model).to(self.compute).eval()
        bad = [k for k, v in cast.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ExportError(f"{', '.join(bad[:4])} not finite in {self.name} (a weight beyond the dtype's range, "
                              f"±{torch.finfo(self.compute).max:.4g}): this model cannot be exported in {self.name}")
        return cast


FP32 = Precision("fp32", torch.float32)
FP16 = Precision("fp16", torch.float16)
W16 = Precision("w16", torch.float32, weights16=True)
PRECISIONS = {p.name: p for p in (FP32, FP16, W16)}


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ExportError(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})") from None



_WEIGHT_OPS = {"Gemm", "MatMul", "Conv"}  # input 1 is the weight matrix


def weights16_pass(graph, wrapper):
    """Export pass (after the lowering): a w16 graph's weight matrices → float16 initializers, each widened by
    one `Cast` to float32 where it is used (see the module doc); other precisions are returned unchanged."""
    precision = getattr(wrapper, "precision", None)  # the upsample graph has none: always float32
    if precision is None or not precision.weights16:
        return graph
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.graph.initializer}
    users: dict[str, list] = {}
    for n in graph.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    casts = []
    for name, init in inits.items():
        nodes = users.get(name, [])
        if (init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2 or not nodes
                or any(n.op_type not in _WEIGHT_OPS or list(n.input).index(name) != 1 for n in nodes)):
            continue
        value = numpy_helper.to_array(init)
        if np.abs(value).max(initial=0.0) >= 65504.0:
            raise ExportError(f"{wrapper.spec.name}: weight {name} exceeds the float16 range (|w| ≥ 65504)")
        init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), name))
        widened = f"{name}.float32"
        casts.append(helper.make_node("Cast", [name], [widened], name=f"Cast_{name}", to=onnx.TensorProto.FLOAT))
        for n in nodes:
            n.input[1] = widened
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend(casts + nodes)
    graph.metadata_props.append(onnx.StringStringEntryProto(
        key="wn_export.weights16", value=f"{len(casts)} weight matrices stored as float16, widened by Cast"))
    return graph
