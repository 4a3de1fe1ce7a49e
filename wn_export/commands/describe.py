"""`wn-export inspect DIR`: a readable description of an export directory, from its manifest."""

from __future__ import annotations

from collections import Counter

import onnx

from wn_export.contract.manifest import read_manifest


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def describe(directory) -> str:
    m = read_manifest(directory)
    cfg = m.config
    lines = [f"{m.directory}  format {m.data['format']}, opset {m.data.get('opset', '?')}",
             f"model: receptive field {cfg.receptive_field}, {cfg.layers} layers, Q={cfg.quantization_channels}, "
             f"{cfg.sample_rate} Hz", ""]
    for name, g in m.graphs.items():
        graph = onnx.load(str(g.path), load_external_data=False)
        ops = Counter(n.op_type for n in graph.graph.node)
        lines.append(f"{name}: {g.path.name}  {g.precision}  {len(graph.graph.node)} nodes  "
                     f"({', '.join(f'{k} {v}' for k, v in ops.most_common(6))}{', …' if len(ops) > 6 else ''})"
                     + (f"  needs the TensorRT plugin {g.plugin}" if g.plugin else ""))
        for kind, tensors in (("in ", g.inputs), ("out", g.outputs)):
            for t in tensors:
                lines.append(f"    {kind} {t.name:<14} {t.role:<12} {t.dtype:<8} {_shape(t.shape)}")
        for s in g.state:
            rule = (f"ring over {len(s.rings)} layers, position input {s.position!r}"
                    if s.update == "ring" else "replace (swap buffers)")
            lines.append(f"    state {s.input} → {s.output}: {rule}, init {s.init}")
    for name, e in m.engines.items():
        lines.append(f"engine {name}: {e.file} ({e.backend} {e.data.get('version')}, {e.precision})")
    for name, plan in m.native_loops.items():
        lines.append(f"native loop plan of {name}: {plan.file} ({plan.format})")
    return "\n".join(lines)
