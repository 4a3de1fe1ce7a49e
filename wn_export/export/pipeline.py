"""`wn-export onnx`: checkpoint → DIR/{scoring,step[,upsample]}[.fp16].onnx + manifest.json
(+ DIR/step.fused[.fp16].onnx with `fused_step`, see `export.fused`; + DIR/step[.w16].native.safetensors, the
native loop's plan of each step graph that has one, see `backends.onnxruntime.native_plan`).

Everything is written to a staging directory beside DIR first and moved in only when every graph
has been exported and passed hygiene; the manifest is removed first and moved in last. On any error
(SIGINT and SIGTERM included) DIR is untouched. The work runs under DIR's writer lock
(`contract/lock.py`): a second export into DIR waits, and the first thing done under the lock is
removing what killed exports left behind.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch

from reference_model import WaveNet, load_checkpoint
from reference_model.atomic import fsync_dir, fsync_file
from reference_model.files import check_output
from wn_export import demo_checkpoint
from wn_export.contract.lock import export_lock, remove_debris, staging_directory
from wn_export.contract.manifest import (
    FILENAME,
    build_manifest,
    graph_entry,
    native_entry,
    read_manifest,
    sha256,
    write_manifest,
)
from wn_export.contract.specs import LAYOUTS, graph_name
from wn_export.errors import ExportError
from wn_export.export.hygiene import check_graph
from wn_export.export.lowering import lower_pass
from wn_export.export.precision import FP16, FP32, W16, weights16_pass
from wn_export.export.wrappers import build_graph, example_inputs

DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNorm-free, but Split/Squeeze-as-input and opset-13+ Resize semantics


def export_graph(model: WaveNet, kind: str, precision, path: Path, opset: int = DEFAULT_OPSET,
                 layout: str = "ring") -> dict:
    """Export one graph to `path` and check it. → {"spec": GraphSpec, "stats": {...}}."""
    wrapper = build_graph(model, kind, precision, layout)
    spec = wrapper.spec
    args = tuple(example_inputs(spec, model.cfg, batch=2, time=max(8, 2 * model.cfg.hop_size)))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            wrapper, args, buf, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes())
    graph = onnx.load_from_string(buf.getvalue())
    for graph_pass in PASSES:
        graph = graph_pass(graph, wrapper)
    dims = {d for t in (*spec.inputs, *spec.outputs) for d in t.shape if isinstance(d, str)}
    stats = check_graph(graph, dims, path.name)
    onnx.save(graph, str(path))
    return {"spec": spec, "stats": stats}


def _alias_duplicate_initializers(graph: onnx.ModelProto, _wrapper=None) -> onnx.ModelProto:
    """torch.onnx deduplicates equal weights (e.g. the all-zero biases of a freshly initialised imported
    model) into `Identity` nodes reading one initializer; let their consumers read it directly."""
    inits = {i.name for i in graph.graph.initializer}
    outputs = {o.name for o in graph.graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return graph
    keep = [n for n in graph.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del graph.graph.node[:]
    graph.graph.node.extend(keep)
    return graph


def _name(graph: onnx.ModelProto, wrapper) -> onnx.ModelProto:
    graph.producer_name, graph.doc_string = "wn-export", f"wn-export {wrapper.spec.name} graph"
    return graph


def _stamp_shapes(graph: onnx.ModelProto, wrapper) -> onnx.ModelProto:
    """Write the contract's shapes (named dims, static sizes) onto the graph's I/O; hygiene's strict
    shape inference then proves the graph agrees with them."""
    spec = wrapper.spec
    for values, declared in ((graph.graph.input, spec.inputs), (graph.graph.output, spec.outputs)):
        for value, tensor in zip(values, declared):
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in tensor.shape:
                dim = dims.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
    return graph


def _check_io(graph: onnx.ModelProto, wrapper) -> onnx.ModelProto:
    """The exported graph's I/O must be exactly the spec's, in order, with the spec's dtypes."""
    spec = wrapper.spec
    for kind, actual, declared in (("inputs", graph.graph.input, spec.inputs),
                                   ("outputs", graph.graph.output, spec.outputs)):
        got = [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name)
               for v in actual]
        want = [(t.name, t.dtype) for t in declared]
        if got != want:
            raise ExportError(f"{spec.name}: exported {kind} {got} differ from the I/O contract {want}")
    return graph


# The passes every traced graph goes through, in order: `pass(graph, wrapper) → graph`. Hygiene
# (`hygiene.check_graph`) then proves the result before it is written.
PASSES = (_alias_duplicate_initializers, lower_pass, weights16_pass, _name, _check_io, _stamp_shapes)


def export_fused_step(model: WaveNet, precision, path: Path, opset: int = DEFAULT_OPSET) -> dict:
    """Write the fused step graph (one plugin node) to `path` after hygiene → its manifest entry."""
    from wn_export.export.fused import fused_step_model

    graph, spec, kernel = fused_step_model(model, precision, opset)
    stats = check_graph(graph, {"batch"}, path.name, plugin=spec.plugin)
    onnx.save(graph, str(path))
    return graph_entry(spec, path.name, sha256(path), stats["nodes"], kernel)


def export_directory(out_dir: Path, checkpoint: Path | None = None, *, fp16: bool = False, w16: bool = False,
                     opset: int = DEFAULT_OPSET, layout: str = "ring", fused_step: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Export every graph of a checkpoint into `out_dir`; returns the manifest dict. `fused_step`: also
    the fused step graph(s), one TensorRT plugin node each (needs triton to compile its PTX)."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: wn-export needs opset >= {MIN_OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is newer than this onnx supports ({onnx.defs.onnx_opset_version()})")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown state layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    out_dir = Path(out_dir)
    checkpoint = Path(checkpoint or demo_checkpoint())
    check_output(out_dir, [checkpoint], directory=True)
    model = load_checkpoint(checkpoint, torch.float32)
    if fused_step:
        from wn_export.export.fused import check_fusable

        check_fusable(model.cfg)
    jobs = [("scoring", FP32, None), ("step", FP32, None)]  # (kind, precision, variant)
    if fp16:
        jobs += [("scoring", FP16, None), ("step", FP16, None)]
    if w16:  # fp32 compute, 16-bit weights (the weight stream of generation; scoring proves its log p)
        jobs += [("scoring", W16, None), ("step", W16, None)]
    if model.cfg.local:
        jobs.append(("upsample", FP32, None))
    if fused_step:
        jobs += [("step", p, "fused") for p in ((FP32, FP16) if fp16 else (FP32,))]
    names = [graph_name(kind, precision.name, variant) for kind, precision, variant in jobs]
    plans = [_native_file(n) for n in names if n.startswith("step") and ".fused" not in n]  # may be written
    for file in [f"{n}.onnx" for n in names] + plans + [FILENAME]:
        check_output(out_dir / file, [checkpoint])
    for precision in {precision for _, precision, _ in jobs}:
        precision.apply(model)  # every weight finite in every precision, before any graph is exported
    with export_lock(out_dir, notice=progress, create=True):
        remove_debris(out_dir)
        return _export_jobs(model, checkpoint, out_dir, jobs, opset, layout, progress)


def _native_file(name: str) -> str:
    from wn_export.backends.onnxruntime.native_plan import file_name

    return file_name(name)


def _native_plans(staging: Path, progress: Callable[[str], None] | None) -> dict:
    """The native loop's plan of every step graph that has one (`native_plan`), written beside the graphs →
    the manifest's `native_loops` records."""
    from wn_export.backends.onnxruntime import native_plan
    from wn_export.export.graph_match import NoMatch

    records = {}
    for name, graph in read_manifest(staging, verify=False).graphs.items():
        if graph.kind != "step" or graph.plugin is not None:
            continue
        try:
            arrays, dims = native_plan.derive(graph)
        except NoMatch:
            continue  # no native loop for this graph (full layout, FP16, mixture or scalar models): hosts step it
        file = native_plan.file_name(name)
        if progress:
            progress(f"native loop plan {file}")
        native_plan.write(staging / file, arrays, dims, graph)
        records[name] = native_entry(name, file, sha256(staging / file), graph.sha256)
    return records


def _export_jobs(model: WaveNet, checkpoint: Path, out_dir: Path, jobs: list, opset: int, layout: str,
                 progress: Callable[[str], None] | None) -> dict:
    """Export into a staging directory beside `out_dir`, then move the files in (manifest last)."""
    staging = staging_directory(out_dir)
    try:
        graphs = {}
        for i, (kind, precision, variant) in enumerate(jobs, 1):
            name = graph_name(kind, precision.name, variant)
            file = f"{name}.onnx"
            if progress:
                progress(f"[{i}/{len(jobs)}] exporting {file}")
            if variant == "fused":
                graphs[name] = export_fused_step(model, precision, staging / file, opset)
                continue
            result = export_graph(model, kind, precision, staging / file, opset, layout)
            spec = result["spec"]
            graphs[spec.name] = graph_entry(spec, file, sha256(staging / file), result["stats"]["nodes"])
        manifest = build_manifest(model.cfg, graphs)
        manifest["opset"] = opset
        manifest["source"] = {"checkpoint": str(checkpoint.resolve()), "sha256": sha256(checkpoint)}
        write_manifest(staging, manifest)
        loops = _native_plans(staging, progress)
        if loops:
            manifest["native_loops"] = loops
            write_manifest(staging, manifest)
        (out_dir / "manifest.json").unlink(missing_ok=True)  # never leave an old manifest over new graphs
        for entry in [*graphs.values(), *loops.values()]:
            fsync_file(staging / entry["file"])
            (staging / entry["file"]).replace(out_dir / entry["file"])
        for name in graphs:  # a plan of an earlier export that this one has not derived would be stale
            if name not in loops:
                (out_dir / _native_file(name)).unlink(missing_ok=True)
        fsync_dir(out_dir)  # every graph and plan is in place (and on disk) before the manifest names it
        (staging / "manifest.json").replace(out_dir / "manifest.json")
        fsync_dir(out_dir)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
