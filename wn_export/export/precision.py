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
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from reference_model import WaveNet
from wn_export.errors import ExportError


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32" | "fp16": the manifest's `precision` and the graph-file suffix
    compute: torch.dtype  # weights and layer activations
    skip_accumulate: torch.dtype = torch.float32  # skip sum across layers
    output: torch.dtype = torch.float32  # logits / log_prob outputs and log-softmax

    @property
    def suffix(self) -> str:
        return "" if self.name == "fp32" else f".{self.name}"

    @property
    def state_dtype(self) -> str:
        return numpy_name(self.compute)

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
PRECISIONS = {p.name: p for p in (FP32, FP16)}


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ExportError(f"unknown precision {name!r} (known: {', '.join(PRECISIONS)})") from None


def numpy_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
            torch.int64: "int64", torch.int32: "int32"}[dtype]
