"""A fused step graph run the way its TensorRT plugin runs it, without TensorRT: proof of the graph
itself (its node's PTX, attributes and initializers) where no TensorRT is installed.

    runner = PluginGraphRunner(read_manifest(DIR), "step.fused", launcher="ptx")   # CUDA GPU
    runner = PluginGraphRunner(read_manifest(DIR), "step.fused", launcher="interpreter")  # CPU (slow)
    runner.reset(batch, speaker); logits = runner.step(token, cond_t)

The node's inputs are the host's feeds (token, cond, speaker, the ring state, the position) and the
graph's initializers, bound in `WAVENET_STEP_PLUGIN.inputs` order; its outputs are logits and
`state_update`, which the host writes into the ring (manifest rule `ring`), like every host does.

Launchers:
- "ptx": the node's `ptx` attribute through the CUDA driver, with the calls the C++ plugin
  (`plugins/trt`) makes: cuModuleLoadData, cuModuleGetFunction(`kernel`), cuLaunchKernel with grid
  (batch, 1, 1), block (32·num_warps, 1, 1), `shared_bytes` of dynamic shared memory and the
  parameters [8 input pointers, int32 layers, int32 state rows, 2 output pointers].
- "interpreter": the same kernel (`backends.triton.kernel.wavenet_step_plugin`, the node's
  constexprs) under Triton's interpreter on CPU tensors; needs TRITON_INTERPRET=1 before the kernel
  module is imported.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np

from wn_export.backends.base import StepRunner, step_feeds
from wn_export.contract.manifest import Manifest, read_manifest
from wn_export.contract.specs import WAVENET_STEP_PLUGIN
from wn_export.errors import BackendError, InputError

LAUNCHERS = ("ptx", "interpreter")


def read_node(path) -> tuple[dict, dict]:
    """A fused graph's node → (attributes, {input slot: initializer array}) for the slots the graph
    does not feed."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(path)).graph
    node = graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return attrs, {slot: inits[name] for slot, name in zip(WAVENET_STEP_PLUGIN.inputs, node.input) if name in inits}


class PluginGraphRunner(StepRunner):
    name = "plugin-graph"

    def __init__(self, manifest, graph: str = "step.fused", launcher: str = "ptx"):
        import torch

        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest)
        self.graph = manifest.graph(graph)
        if self.graph.plugin != WAVENET_STEP_PLUGIN.id:
            raise BackendError(f"{graph} is not a fused step graph (no {WAVENET_STEP_PLUGIN.id} node)")
        if launcher not in LAUNCHERS:
            raise BackendError(f"unknown launcher {launcher!r} (choose from {', '.join(LAUNCHERS)})")
        self.torch, self.launcher = torch, launcher
        self.device = torch.device("cuda" if launcher == "ptx" else "cpu")
        if launcher == "ptx" and not torch.cuda.is_available():
            raise BackendError("the ptx launcher needs a CUDA GPU (none found)")
        self.attrs, arrays = read_node(self.graph.path)
        self.constants = {slot: torch.from_numpy(np.array(a)).to(self.device) for slot, a in arrays.items()}
        (self.rule,) = self.graph.state
        self.kernel = _PtxKernel(self.attrs) if launcher == "ptx" else _InterpretedKernel(self.attrs)
        self.feeds = None

    def reset(self, batch: int, speaker=None) -> None:
        torch, g, dev = self.torch, self.graph, self.device
        self.batch = batch
        self.state = torch.full(tuple(batch if d == "batch" else d for d in self.rule.shape), self.rule.init,
                                dtype=getattr(torch, self.rule.dtype), device=dev)
        self.position = torch.zeros(1, dtype=torch.int64, device=dev)
        self.offsets = torch.tensor([o for o, _ in self.rule.rings], device=dev)
        self.lengths = torch.tensor([n for _, n in self.rule.rings], device=dev)
        out = {t.name: t for t in g.outputs}
        self.logits = torch.empty(batch, out["logits"].shape[1], dtype=torch.float32, device=dev)
        update = out[self.rule.output]
        self.update = torch.empty(batch, *update.shape[1:], dtype=getattr(torch, update.dtype), device=dev)
        self.speaker = None
        if g.input("speaker") is not None:
            if speaker is None or np.shape(speaker) != (batch,):
                raise InputError(f"this model needs speaker ids of shape ({batch},)")
            self.speaker = torch.as_tensor(np.asarray(speaker, dtype=np.int64)).to(dev)
        self.feeds = True

    def step(self, token, cond_t=None) -> np.ndarray:
        if self.feeds is None:
            raise InputError("call reset(batch) before step()")
        torch, g = self.torch, self.graph
        feeds = step_feeds(g, self.batch, token, cond_t)
        values = {"token": torch.from_numpy(feeds[g.feed.name]).to(self.device), "state": self.state,
                  "position": self.position, "speaker": self.speaker}
        if g.input("cond") is not None:
            values["cond"] = torch.from_numpy(np.ascontiguousarray(feeds[g.input("cond").name])).to(self.device)
        inputs = [values.get(slot) if values.get(slot) is not None else self.constants[slot]
                  for slot in WAVENET_STEP_PLUGIN.inputs]
        self.kernel(self.batch, inputs, (self.attrs["layers"], self.state.shape[1]), (self.logits, self.update))
        # the manifest's ring rule: row l of the update goes to offset_l + position mod length_l
        self.state.index_copy_(1, self.offsets + self.position % self.lengths, self.update)
        self.position += 1
        return self.logits.cpu().numpy()


class _InterpretedKernel:
    """`wavenet_step_plugin` under Triton's interpreter, with the node's constexprs."""

    def __init__(self, attrs: dict):
        from wn_export.backends.triton.kernel import wavenet_step_plugin

        if type(wavenet_step_plugin).__name__ != "InterpretedFunction":
            raise BackendError("the interpreter launcher needs TRITON_INTERPRET=1 set before the kernel is imported")
        self.fn, self.constexprs = wavenet_step_plugin, json.loads(attrs["config"])["constexprs"]

    def __call__(self, batch, inputs, scalars, outputs):
        self.fn[(batch,)](*inputs, *scalars, *outputs, **self.constexprs)


class _PtxKernel:
    """The node's PTX through the CUDA driver API (the C++ plugin's calls)."""

    def __init__(self, attrs: dict):
        try:
            self.cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise BackendError(f"the ptx launcher needs the CUDA driver (libcuda.so.1): {e}") from None
        import torch

        torch.zeros(1, device="cuda")  # the runtime makes the primary context current
        self.module, self.function = ctypes.c_void_p(), ctypes.c_void_p()
        image = attrs["ptx"].rstrip("\0").encode() + b"\0"
        self._check(self.cuda.cuModuleLoadData(ctypes.byref(self.module), ctypes.c_char_p(image)), "cuModuleLoadData")
        self._check(self.cuda.cuModuleGetFunction(ctypes.byref(self.function), self.module,
                                                  attrs["kernel"].rstrip("\0").encode()), "cuModuleGetFunction")
        self.threads, self.shared = 32 * int(attrs["num_warps"]), int(attrs["shared_bytes"])

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            text = ctypes.c_char_p()
            self.cuda.cuGetErrorString(result, ctypes.byref(text))
            raise BackendError(f"{what} failed: {text.value.decode() if text.value else result}")

    def __call__(self, batch, inputs, scalars, outputs):
        import torch

        args = [ctypes.c_void_p(t.data_ptr()) for t in inputs]
        args += [ctypes.c_int32(int(v)) for v in scalars]
        args += [ctypes.c_void_p(t.data_ptr()) for t in outputs]
        params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self._check(self.cuda.cuLaunchKernel(self.function, ctypes.c_uint(batch), 1, 1, ctypes.c_uint(self.threads),
                                             1, 1, ctypes.c_uint(self.shared), stream, params, None), "cuLaunchKernel")


__all__ = ["LAUNCHERS", "PluginGraphRunner", "read_node"]
