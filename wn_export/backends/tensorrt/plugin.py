"""The TensorRT plugin `wn_export::WaveNetStep` in Python: TensorRT's "quickly deployable plugins"
(`tensorrt.plugin`, TensorRT ≥ 10.9 for ahead-of-time kernels).

    from wn_export.backends.tensorrt.plugin import register
    register()          # before the ONNX parser sees a fused step graph (build.py does it)

`@trtp.register` gives TensorRT the shape and type rule (`describe`), `@trtp.aot_impl` the kernel
(`aot`): the PTX the fused graph's node carries (`backends.triton.aot.compile_plugin_ptx`), its entry
name, the launch (grid = batch, one CTA of 32·num_warps threads per stream, the kernel's shared
memory) and its two int32 arguments (layers, state rows). TensorRT embeds that PTX in the engine and
launches it itself; running the engine needs no Python and no plugin library.

Node ↔ plugin (`contract.specs.WAVENET_STEP_PLUGIN`): the node's op type is the plugin name, its
`plugin_namespace` attribute the namespace, `aot = 1` asks the ONNX parser for the AOT
implementation; the attributes `ptx`, `kernel`, `num_warps`, `shared_bytes`, `layers`, `classes` are
the plugin's (the C++ plugin in `plugins/trt` reads the same ones).

No autotune function: TensorRT then takes the dtypes the graph gives (strongly typed) and linear
formats, which is what the kernel reads. State and weights are fp16 or fp32 together; token,
speaker and position int64; layer table int32; conditioning and the speaker table float32.

This module deliberately has no `from __future__ import annotations`: `tensorrt.plugin` checks the
decorated functions' annotations as objects (`inspect.signature`), not strings.
"""

from typing import Tuple, Union

from wn_export.contract.specs import WAVENET_STEP_PLUGIN
from wn_export.errors import BackendError

PLUGIN = WAVENET_STEP_PLUGIN
MIN_TENSORRT = (10, 9)  # tensorrt.plugin.aot_impl
_REGISTERED: set[int] = set()  # id() of the tensorrt.plugin modules registered with


def describe(float32, token, state, layers: int, classes: int):
    """Shape and type rule → ((logits shape, dtype), (state_update shape, dtype)); any dim objects
    (TensorRT's shape expressions, or ints)."""
    logits, update = PLUGIN.output_shapes(token.shape_expr, state.shape_expr, layers, classes)
    return (logits, float32), (update, state.dtype)


def launch(token, state, num_warps: int, shared_bytes: int, layers: int) -> dict:
    """The kernel launch: grid (batch, 1, 1), block (32·num_warps, 1, 1), dynamic shared memory, and
    the kernel's int32 arguments in order (`PLUGIN.scalars`: layers, state rows)."""
    return {"grid_x": token.shape_expr[0], "block_x": 32 * int(num_warps), "shared_mem": int(shared_bytes),
            "scalars": (int(layers), state.shape_expr[1])}


def register(trtp=None, trt=None) -> None:
    """Register `wn_export::WaveNetStep` with TensorRT (idempotent). `trtp`/`trt`: the
    `tensorrt.plugin` and `tensorrt` modules (default: import them)."""
    if trtp is None:
        trtp, trt = _modules()
    if id(trtp) in _REGISTERED:
        return
    desc_type, out_types = trtp.TensorDesc, Tuple[trtp.TensorDesc, trtp.TensorDesc]

    @trtp.register(PLUGIN.id)
    def wavenet_step(token: desc_type, cond: desc_type, speaker: desc_type, state: desc_type,
                     position: desc_type, weights: desc_type, layer_table: desc_type, speaker_table: desc_type,
                     ptx: str, kernel: str, num_warps: int, shared_bytes: int, layers: int,
                     classes: int) -> out_types:
        (logits, logits_dtype), (update, update_dtype) = describe(trt.float32, token, state, layers, classes)
        return trtp.from_shape_expr(logits, dtype=logits_dtype), trtp.from_shape_expr(update, dtype=update_dtype)

    @trtp.aot_impl(PLUGIN.id)
    def wavenet_step_aot(token: desc_type, cond: desc_type, speaker: desc_type, state: desc_type,
                         position: desc_type, weights: desc_type, layer_table: desc_type, speaker_table: desc_type,
                         ptx: str, kernel: str, num_warps: int, shared_bytes: int, layers: int, classes: int,
                         outputs: out_types, tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes],
                                                                   trtp.KernelLaunchParams, trtp.SymExprs]:
        lp = launch(token, state, num_warps, shared_bytes, layers)
        params = trtp.KernelLaunchParams()
        params.grid_x = lp["grid_x"]
        params.block_x = lp["block_x"]
        params.shared_mem = lp["shared_mem"]
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(v) for v in lp["scalars"]])
        # string plugin fields may arrive NUL-terminated from the ONNX parser
        return kernel.rstrip("\0"), ptx.rstrip("\0").encode(), params, scalars

    _REGISTERED.add(id(trtp))


def _modules():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise BackendError(f"the {PLUGIN.id} plugin needs TensorRT ≥ {'.'.join(map(str, MIN_TENSORRT))} with its "
                           f"Python plugin API (tensorrt.plugin): {e}") from None
    if not hasattr(trtp, "aot_impl"):
        raise BackendError(f"TensorRT {trt.__version__} has no ahead-of-time Python plugins (tensorrt.plugin."
                           f"aot_impl, TensorRT ≥ {'.'.join(map(str, MIN_TENSORRT))})")
    return trtp, trt


def unsupported(trt, flavour: str) -> str | None:
    """Why this TensorRT cannot build a fused graph, or None. TensorRT-RTX (1.7): its network has no
    plugin layers (no add_plugin_v3) nor AOT Python plugins, and its ONNX parser aborts the process on
    a plugin node, so the graph must not reach it."""
    if flavour == "tensorrt-rtx":
        return (f"TensorRT-RTX {trt.__version__} cannot build plugin layers (no add_plugin_v3, no ahead-of-time "
                "Python plugins); build it with TensorRT ≥ 10.9 (--backend tensorrt) on a GPU machine")
    try:
        _modules()
    except BackendError as e:
        return str(e)
    return None


__all__ = ["PLUGIN", "describe", "launch", "register", "unsupported"]
