"""Graph hygiene: checks every exported graph must pass before it is written.

1. `onnx.checker.check_model(full_check=True)`.
2. Shape inference leaves no unknown dims: every tensor's dim is a number or an expression of the
   graph's named dynamic dims (batch, time, frames…). Uses ONNX Runtime's symbolic shape inference
   when available (it names derived dims like `time + 1023`), else ONNX's.
3. Only ops the TensorRT ONNX parser supports (`TRT_OPS`, from onnx-tensorrt's operator list).
4. Constants folded: no node other than `Constant` has only constant inputs (except the `Cast` that widens a
   float16 weight of a w16 graph to float32: the stored form of 16-bit weights, see `precision`).
5. No unused initializers.
6. Every floating-point initializer and constant is finite in its own dtype (a float32 weight of 1e5
   is inf once the FP16 policy casts it).

A fused step graph (`plugin` given) is one custom node instead: its domain is accepted for that graph
only, and checks 2–3 become: exactly one node, the plugin's op in the plugin's domain, with the plugin's
inputs, outputs and attributes, and the graph's declared output shapes equal to the plugin's shape rule
(`PluginSpec.output_shapes`) applied to its declared inputs.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import Counter

import onnx

from wn_export.errors import ExportError

# Subset of onnx-tensorrt's supported operators (docs/operators.md) that a WaveNet graph may use.
TRT_OPS = frozenset("""
Abs Add And ArgMax Cast Ceil Clip Concat Constant ConstantOfShape Conv ConvTranspose CumSum Div Equal
Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gemm Greater Identity LeakyRelu Less Log
LogSoftmax MatMul Max Min Mod Mul Neg Not Or Pad Pow Range Reciprocal ReduceMax ReduceMean ReduceSum
Relu Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Slice Softmax Split Sqrt Squeeze Sub
Tanh Tile TopK Transpose Unsqueeze Where
""".split())


def check_graph(model: onnx.ModelProto, dynamic_dims: set[str], name: str, plugin=None) -> dict:
    """Run all checks; raise ExportError naming the graph and the first problems. → stats.
    `plugin`: a `contract.specs.PluginSpec` for a fused graph (its one custom node)."""
    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{name}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    ops = Counter(n.op_type for n in model.graph.node)
    if plugin is None:
        problems += _unknown_shapes(model, dynamic_dims)
        unsupported = sorted(op for op in ops if op not in TRT_OPS or any(
            n.domain not in ("", "ai.onnx") for n in model.graph.node if n.op_type == op))
        if unsupported:
            problems.append(f"ops not supported by TensorRT's ONNX parser: {', '.join(unsupported)}")
    else:
        problems += _plugin_node(model, plugin)
    problems += _foldable(model)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    unused = [i.name for i in model.graph.initializer if i.name not in used]
    if unused:
        problems.append(f"unused initializers: {', '.join(unused[:5])}")
    problems += _not_finite(model)
    if problems:
        raise ExportError(f"{name} failed graph hygiene: " + "; ".join(problems[:6]))
    return {"nodes": len(model.graph.node), "ops": dict(sorted(ops.items())),
            "initializers": len(model.graph.initializer)}


def _plugin_node(model: onnx.ModelProto, plugin) -> list[str]:
    """A fused graph: one node of `plugin`, wired and shaped as the plugin declares."""
    nodes = model.graph.node
    if len(nodes) != 1 or (nodes[0].domain, nodes[0].op_type) != (plugin.domain, plugin.op):
        return [f"a fused graph is one {plugin.id} node (found {', '.join(f'{n.domain}::{n.op_type}' for n in nodes)})"]
    node, problems = nodes[0], []
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if missing := [a for a in plugin.attributes if a not in attrs]:
        problems.append(f"the {plugin.op} node lacks attributes {', '.join(missing)}")
    if len(node.input) != len(plugin.inputs):
        problems.append(f"the {plugin.op} node has {len(node.input)} inputs, the plugin takes {len(plugin.inputs)}")
    if list(node.output) != [o.name for o in model.graph.output]:
        problems.append(f"the {plugin.op} node's outputs {list(node.output)} are not the graph outputs")
    declared = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in (*model.graph.input, *model.graph.output)}
    slots = dict(zip(plugin.inputs, node.input))
    if not problems and slots["token"] in declared and slots["state"] in declared:
        want = plugin.output_shapes(declared[slots["token"]], declared[slots["state"]], attrs["layers"],
                                    attrs["classes"])
        got = tuple(tuple(declared[o]) for o in node.output)
        if got != tuple(tuple(w) for w in want):
            problems.append(f"declared output shapes {got} differ from the plugin's shape rule {want}")
    return problems


def _not_finite(model: onnx.ModelProto) -> list[str]:
    import numpy as np
    from onnx import numpy_helper

    tensors = [*model.graph.initializer,
               *(a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t"))]
    bad = []
    for t in tensors:
        array = numpy_helper.to_array(t)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad.append(f"{t.name or 'a constant'} ({array.dtype})")
    return [f"weights not finite in the graph's precision: {', '.join(bad[:5])} (a value beyond the "
            "dtype's range, e.g. above 65504 in float16)"] if bad else []


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _foldable(model: onnx.ModelProto) -> list[str]:
    constants = _constant_names(model)
    half = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    def widening(n) -> bool:
        return (n.op_type == "Cast" and len(n.input) == 1 and n.input[0] in half
                and {a.name: a.i for a in n.attribute}.get("to") == onnx.TensorProto.FLOAT)

    bad = [f"{n.op_type} {n.name}" for n in model.graph.node
           if n.op_type != "Constant" and not widening(n) and n.input and all(i in constants or i == "" for i in n.input)]
    return [f"unfolded constant subgraphs at: {', '.join(bad[:5])}"] if bad else []


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _unknown_shapes(model: onnx.ModelProto, dynamic_dims: set[str]) -> list[str]:
    allowed = set()
    for d in dynamic_dims:
        allowed |= set(_SYMBOL.findall(d))
    inferred = _infer(model)
    if inferred is None:
        return ["symbolic shape inference could not infer every shape"]
    bad = []
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            bad.append(f"{vi.name} (no shape)")
            continue
        for dim in t.shape.dim:
            if dim.HasField("dim_value"):
                continue
            symbols = set(_SYMBOL.findall(dim.dim_param)) - {"floor", "ceiling", "Max", "Min", "Mod"}
            if not dim.dim_param or not symbols <= allowed:
                bad.append(f"{vi.name} dim {dim.dim_param or '?'}")
                break
    return [f"shape inference leaves unknown dims: {', '.join(bad[:5])}"] if bad else []


def _infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    # on failure it saves a debug model into the working directory: keep that out of the user's way
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False)
        except Exception:  # noqa: BLE001 - it raises a bare Exception("Incomplete symbolic shape inference")
            return None
