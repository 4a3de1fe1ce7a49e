"""`wn-export onnx --fused-step`: the fused step graph, one `wn_export::WaveNetStep` node.

The graph has the ring step graph's I/O (`contract.specs.fused_step_spec`); its body is the single
custom node `contract.specs.WAVENET_STEP_PLUGIN`, whose inputs are the graph inputs plus three
initializers (the kernel's packed weights from `KernelLayout.pack`, the layer table, every speaker's
per-layer projection) and whose attributes carry the plugin kernel's PTX (`backends.triton.aot.
compile_plugin_ptx`, sm_80: the driver JIT-compiles it for newer GPUs) and launch facts. TensorRT maps
the node to a plugin by its op type and `plugin_namespace`; ONNX Runtime cannot run it.

Absent conditioning gets 1-element stand-ins, so the node (and the kernel) always has 8 inputs:
`no_cond` float32, `no_speaker` int64, `no_speaker_table` float32 (never read by the kernel).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from reference_model import WaveNet
from wn_export.contract.specs import WAVENET_STEP_PLUGIN, GraphSpec, fused_step_spec
from wn_export.errors import ExportError

_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
                "int64": onnx.TensorProto.INT64}


def fused_step_model(model: WaveNet, precision, opset: int) -> tuple[onnx.ModelProto, GraphSpec, dict]:
    """→ (the fused step graph, its spec, the plugin kernel's record). `precision`: an
    `export.precision.Precision` (fp32 or fp16: the weights' and state's dtype)."""
    from wn_export.backends.triton.layout import KernelLayout

    cfg = model.cfg
    check_fusable(cfg)
    spec = fused_step_spec(cfg, precision)
    layout = KernelLayout.of(cfg)
    kernel = _plugin_ptx(cfg, precision.name)
    plugin = WAVENET_STEP_PLUGIN
    graph_inputs = {t.role: t.name for t in spec.inputs}
    initializers = _initializers(model, layout, precision.compute)
    names = [graph_inputs.get(slot) or initializers[slot][0] for slot in plugin.inputs]
    attrs = {"plugin_namespace": plugin.domain, "plugin_version": plugin.version, "aot": 1,
             "ptx": kernel["ptx"], "kernel": kernel["meta"]["kernel"], "num_warps": kernel["meta"]["num_warps"],
             "shared_bytes": kernel["meta"]["shared_bytes"], "layers": cfg.layers,
             "classes": cfg.quantization_channels,
             "config": json.dumps({"model": cfg.to_dict(), "constexprs": kernel["meta"]["constexprs"],
                                   "ptx_target": kernel["meta"]["target"], "ptx_sha256": kernel["meta"]["sha256"],
                                   "triton": kernel["meta"]["triton"]}, sort_keys=True)}
    node = helper.make_node(plugin.op, names, [t.name for t in spec.outputs], name="wavenet_step",
                            domain=plugin.domain, **attrs)
    graph = helper.make_graph(
        [node], f"wn-export {spec.name}", [_value(t) for t in spec.inputs], [_value(t) for t in spec.outputs],
        initializer=[numpy_helper.from_array(array, name) for name, array in initializers.values()])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                         helper.make_opsetid(plugin.domain, 1)],
                                   producer_name="wn-export", doc_string=f"wn-export {spec.name} graph")
    onnx_model.ir_version = min(onnx_model.ir_version, 10)  # readable by the ONNX parsers of TensorRT 10.x
    return onnx_model, spec, kernel["meta"]


def check_fusable(cfg) -> None:
    """Refuse, before any export work, a model the kernel does not implement or a missing triton."""
    from wn_export.backends.triton.layout import unsupported

    problems = unsupported(cfg)
    if problems:
        raise ExportError(f"--fused-step: the fused step kernel does not support {', '.join(problems)}")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise ExportError(f"--fused-step compiles the plugin kernel with triton (pip install triton==3.9.0): "
                          f"{e}") from None


def _plugin_ptx(cfg, precision: str) -> dict:
    from wn_export.backends.triton.aot import compile_plugin_ptx

    return compile_plugin_ptx(cfg, precision)


@torch.no_grad()
def _initializers(model: WaveNet, layout, dtype: torch.dtype) -> dict[str, tuple[str, np.ndarray]]:
    """node input slot → (initializer name, array) for every input that is not a graph input."""
    cfg = model.cfg
    out = {"weights": ("weights", layout.pack(model, dtype).numpy()),
           "layer_table": ("layer_table", layout.table().numpy())}
    if cfg.global_:
        reference = copy.deepcopy(model).to(torch.float64)  # the projections in float64, stored as float32
        table = layout.speaker_projections(reference, torch.arange(cfg.speakers)).numpy()  # (speakers, L, G)
        out["speaker_table"] = ("speaker_table", table)
    else:
        out["speaker"] = ("no_speaker", np.zeros(1, dtype=np.int64))
        out["speaker_table"] = ("no_speaker_table", np.zeros(1, dtype=np.float32))
    if not cfg.local:
        out["cond"] = ("no_cond", np.zeros(1, dtype=np.float32))
    return out


def _value(t) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, _ONNX_DTYPES[t.dtype], list(t.shape))

