"""The native loop's plan as an artifact of the export directory: `step.native.safetensors` (and
`step.w16.native.safetensors`), for hosts that run `wn_loop_generate` without the Python fusion (the C++ host).

The export derives it from the step graph it has just written, exactly as the ONNX Runtime host does when it
opens the graph (`fusion.fuse`, then `native_loop.match_loop`), and writes it only when that matches (a lowered
ring-layout categorical step graph, FP32 or w16); the manifest records it under `native_loops` (`contract.
manifest.native_entry`). The Python host keeps deriving its plan from the graph; the file holds the same arrays,
bit for bit (tested), so both hosts run the same loop on the same weights.

The file is a safetensors file: the arrays of `match_loop` under their names (below), and in its metadata the
format, the graph it was derived from (name and sha256), the weights ("fp32" or "w16") and the dimensions as
decimal strings. Shapes, packed matrices (`fusion.pack_panels`) have ⌈N/16⌉ panels of K × 16 for K × N:

| tensor | dtype | shape |
|---|---|---|
| ring_offset, ring_length | int64 | (L,) |
| embed | float32 | (tokens, R) |
| gate_bias | float32 | (L·2G,) |
| speaker_gate (global conditioning only) | float32 | (speakers, L·2G): gate_bias + that speaker's projection |
| input_bias | float32 | (L·R,) |
| w_cond (local conditioning only) | float32 or float16 | (⌈L·2G/16⌉, C, 16) |
| w_gate | weights | (L, ⌈2G/16⌉, P + R, 16) |
| w_out | weights | (L − 1, ⌈R/16⌉, G, 16) |
| w_skip | weights | (L, ⌈S/16⌉, G, 16) |
| b_skip | float32 | (S,) |
| alpha, beta | float32 | (L − 1,) |
| skip_scale | float64 | (1,) |
| head_w1 | weights | (⌈H/16⌉, S, 16) |
| head_b1 | float32 | (H,) |
| head_w2 | weights | (⌈Q/16⌉, H, 16) |
| head_b2 | float32 | (Q,) |

"weights" is float32, or float16 for w16 (all five the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wn_export.contract.manifest import NATIVE_LOOP_FORMAT as FORMAT
from wn_export.errors import ArtifactError

SUFFIX = ".native.safetensors"
DIMS = ("R", "G", "L", "P", "S", "H", "Q", "tokens", "kernel", "cond_channels", "state_rows")
OPTIONAL = ("speaker_gate", "w_cond")


def file_name(graph_name: str) -> str:
    return f"{graph_name}{SUFFIX}"


def derive(graph) -> tuple[dict, dict]:
    """(arrays, dims) of the native loop for a step graph (`graph`: its manifest `GraphRecord`), as the ONNX
    Runtime host plans it. Raises `graph_match.NoMatch` when the graph has no native loop."""
    import onnx

    from wn_export.backends.onnxruntime.fusion import fuse
    from wn_export.backends.onnxruntime.native_loop import match_loop
    from wn_export.export.graph_match import NoMatch

    if graph.kind != "step" or graph.layout != "ring":
        raise NoMatch("not a ring-layout step graph")
    fused, chain = fuse(onnx.load(str(graph.path)))
    return match_loop(fused, chain, graph)


def write(path: Path, arrays: dict, dims: dict, graph) -> None:
    """The plan to `path` (temporary name, then renamed), recording the graph (`GraphRecord`) it came from."""
    from safetensors.numpy import save_file

    from reference_model.atomic import atomic_write_bytes

    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items() if v is not None}
    metadata = {"format": FORMAT, "graph": graph.name, "graph_sha256": graph.sha256,
                "weights": "w16" if arrays["w_gate"].dtype == np.float16 else "fp32",
                **{k: str(int(dims[k])) for k in DIMS}}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read(path: Path) -> tuple[dict, dict, dict]:
    """(arrays, dims, metadata) of a plan file (absent optional arrays are None). ArtifactError if it is not one.
    The C++ host's reader (hosts/cpp/src/native_plan.cpp) checks every shape against the dimensions as well."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{Path(path).name} is not a native loop plan: {str(e)[:200]}") from None
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"{Path(path).name}: unsupported native loop plan format {metadata.get('format')!r:.40} "
                            f"(expected {FORMAT!r})")
    try:
        dims = {k: int(metadata[k]) for k in DIMS}
    except (KeyError, ValueError):
        raise ArtifactError(f"{Path(path).name}: the plan's metadata lacks its dimensions") from None
    for k in OPTIONAL:
        arrays.setdefault(k, None)
    return arrays, dims, metadata


__all__ = ["FORMAT", "SUFFIX", "DIMS", "file_name", "derive", "write", "read"]
