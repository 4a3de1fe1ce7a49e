"""TensorRT backend (TensorRT 10.x / 11.x or TensorRT-RTX): engines from the manifest's "engines".

Device memory, streams and CUDA graphs come from torch.cuda (torch is already a dependency), so the
runners need a CUDA build of torch and a GPU; without them they fail with one clear message.

Step runner: every I/O tensor has a device buffer allocated once per `reset`; the state stays on the
device between steps. `ring` state: the engine reads the packed ring buffer and writes the new
columns to a *separate* `state_update` buffer (never the same buffer as input and output), then
`index_copy_` scatters them into the ring on the same stream — no buffer swap, so one captured CUDA
graph serves every step (the position lives on the device and is advanced inside the graph).
`replace` state: two buffers per state tensor are swapped each step; with CUDA graphs, one graph is
captured per buffer parity. Only the token (and cond) go up and the logits come down per step.
`regroup` (streams join and leave between steps) carries the state rows on the device (`carry_state`).
"""

from __future__ import annotations

import numpy as np

from wn_export.backends.base import Regroup, ScoringRunner, StepRunner, step_feeds
from wn_export.backends.onnxruntime.runner import resolve
from wn_export.contract.manifest import EngineRecord, Manifest, TensorRecord, sha256
from wn_export.errors import ArtifactError, BackendError, InputError

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32"}


def _cuda():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a base dependency
        raise BackendError("the tensorrt backend needs torch with CUDA") from None
    if not torch.cuda.is_available():
        raise BackendError("the tensorrt backend needs a CUDA GPU, and none is visible "
                           "(torch.cuda.is_available() is False); use --backend onnxruntime")
    return torch


def engine_record(manifest: Manifest, graph: str) -> EngineRecord:
    """The manifest's engine for `graph`, its file present and unchanged since `wn-export trt`."""
    engine = manifest.engine(graph)
    if not engine.path.is_file():
        raise ArtifactError(f"engine file {engine.file} is missing")
    if sha256(engine.path) != engine.sha256:
        raise ArtifactError(f"{engine.file} does not match the manifest's sha256; rebuild with `wn-export trt`")
    return engine


class _TrtBase:
    def __init__(self, manifest: Manifest, graph: str):
        self.manifest = manifest
        self.graph = manifest.graph(graph)
        self.entry = engine_record(manifest, graph)
        self.path = self.entry.path
        self.context = None

    def activate(self):
        from wn_export.backends.tensorrt.build import _logger, load_trt

        self.torch = _cuda()
        trt, _flavour = load_trt(self.entry.backend)
        if self.graph.plugin:  # an AOT plugin's kernel is in the engine; registering is for older builds
            from wn_export.backends.tensorrt.plugin import register

            try:
                register()
            except BackendError:
                pass  # deserialisation below says so if the engine needed it
        self.runtime = trt.Runtime(_logger(trt))  # TensorRT keeps one logger per process
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {self.path.name} (built for another GPU or "
                               f"TensorRT version? it records {self.entry.backend} {self.entry.data.get('version')}, "
                               f"compute capability {self.entry.data.get('compute_capability')}"
                               + (f"; it holds the {self.graph.plugin} plugin" if self.graph.plugin else "") + ")")
        self.context = self.engine.create_execution_context()
        self.stream = self.torch.cuda.Stream()

    def deactivate(self):
        self.context = self.engine = self.runtime = None

    def _buffer(self, spec: TensorRecord, dims: dict):
        torch = self.torch
        return torch.zeros(resolve(spec.shape, dims), dtype=getattr(torch, _TORCH_DTYPES[spec.dtype]),
                           device="cuda")

    def _check_batch(self, batch: int) -> None:
        name = self.graph.inputs[0].name
        lo, _opt, hi = self.engine.get_tensor_profile_shape(name, 0)
        if not lo[0] <= batch <= hi[0]:
            raise InputError(f"batch {batch} is outside the engine's profile [{lo[0]}, {hi[0]}] for {name}; "
                             "rebuild with `wn-export trt --batch MIN,OPT,MAX`")

    def _enqueue(self):
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT failed to enqueue {self.path.name}")


class TrtScoringRunner(_TrtBase, ScoringRunner):
    name = "tensorrt"

    def infer(self, tokens, cond=None, speaker=None):
        torch = self.torch
        values = {"tokens": tokens, "cond": cond, "speaker": speaker, "samples": tokens}  # samples: scalar input
        B, T = np.shape(tokens)
        self._check_batch(B)
        dims = {"batch": B, "time": T, "time-1": T - 1}
        outputs = {}
        with torch.cuda.stream(self.stream):
            keep = []
            for t in self.graph.inputs:
                if values.get(t.role) is None:
                    raise InputError(f"the scoring graph needs its {t.role!r} input ({t.name})")
                dev = torch.as_tensor(np.ascontiguousarray(values[t.role], dtype=t.dtype)).cuda()
                keep.append(dev)
                self.context.set_input_shape(t.name, tuple(dev.shape))
                self.context.set_tensor_address(t.name, dev.data_ptr())
            for t in self.graph.outputs:
                outputs[t.role] = dev = self._buffer(t, dims)
                self.context.set_tensor_address(t.name, dev.data_ptr())
            self._enqueue()
        self.stream.synchronize()
        return {role: v.cpu().numpy() for role, v in outputs.items()}


class TrtStepRunner(_TrtBase, StepRunner):
    name = "tensorrt"

    def __init__(self, manifest: Manifest, graph: str = "step", cuda_graph: bool = True):
        super().__init__(manifest, graph)
        self.use_graph = cuda_graph
        self.batch, self.steps, self.bufs = 0, 0, None

    def reset(self, batch, speaker=None):
        if self.context is None:
            raise BackendError("runner is not active: use it as a context manager")
        torch, g = self.torch, self.graph
        self._check_batch(batch)
        self.batch, dims = batch, {"batch": batch}
        self.bufs = {t.name: self._buffer(t, dims) for t in (*g.inputs, *g.outputs)}
        self.rings, self.pairs = [], []
        for s in g.state:
            self.bufs[s.input].fill_(s.init)
            if s.update == "ring":
                offsets = torch.tensor([o for o, _ in s.rings], device="cuda")
                lengths = torch.tensor([n for _, n in s.rings], device="cuda")
                self.position = self.bufs[s.position]
                self.rings.append((self.bufs[s.input], self.bufs[s.output], offsets, lengths))
            else:
                self.pairs.append((s.input, s.output, [self.bufs[s.input], self.bufs[s.output]]))
        if g.input("speaker") is not None:
            if speaker is None or np.shape(speaker) != (batch,):
                raise InputError(f"this model needs speaker ids of shape ({batch},)")
            self.bufs[g.input("speaker").name].copy_(torch.as_tensor(np.asarray(speaker, dtype=np.int64)))
        self.token = self.bufs[g.feed.name]  # sample: scalar input
        self.cond = self.bufs[g.input("cond").name] if g.input("cond") is not None else None
        self.logits_dev = self.bufs[g.distribution.name]
        self.logits = torch.empty(self.logits_dev.shape, dtype=self.logits_dev.dtype, pin_memory=True)
        self.token_host = torch.empty(self.token.shape, dtype=self.token.dtype, pin_memory=True)
        for t in g.inputs:
            self.context.set_input_shape(t.name, tuple(self.bufs[t.name].shape))
        for t in (*g.inputs, *g.outputs):
            self.context.set_tensor_address(t.name, self.bufs[t.name].data_ptr())
        self.steps, self.graphs = 0, {}

    def _body(self, parity: int):
        """One step on the device: enqueue, then apply the state rule."""
        for name_in, name_out, pair in self.pairs:
            self.context.set_tensor_address(name_in, pair[parity].data_ptr())
            self.context.set_tensor_address(name_out, pair[1 - parity].data_ptr())
        self._enqueue()
        for state, update, offsets, lengths in self.rings:
            state.index_copy_(1, offsets + self.position % lengths, update)
        if self.rings:
            self.position.add_(1)

    def step(self, token, cond_t=None):
        torch = self.torch
        parity = self.steps % 2 if self.pairs else 0
        feeds = step_feeds(self.graph, self.token_host.shape[0], token, cond_t)  # the manifest's dtypes
        self.token_host.copy_(torch.from_numpy(feeds[self.graph.feed.name]))
        with torch.cuda.stream(self.stream):
            self.token.copy_(self.token_host, non_blocking=True)
            if self.cond is not None:
                self.cond.copy_(torch.from_numpy(feeds[self.graph.input("cond").name]), non_blocking=True)
            if not self.use_graph or self.steps < 2:  # warm-up enqueues before any capture
                self._body(parity)
            else:
                if parity not in self.graphs:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        self._body(parity)
                    self.graphs[parity] = graph
                    graph.replay()  # capture does not execute: run the captured step once
                else:
                    self.graphs[parity].replay()
            self.logits.copy_(self.logits_dev, non_blocking=True)
        self.stream.synchronize()
        self.steps += 1
        return self.logits.numpy()

    def regroup(self, rows, speaker=None) -> None:
        """`OrtStepRunner.regroup` on the device: new row j carries on current row rows[j], or starts from the
        initial state when rows[j] < 0; the ring position carries over (`carry_state`)."""
        plan = Regroup(rows, self.batch)
        old, steps = self.bufs, self.steps
        self.reset(plan.batch, speaker)
        torch = self.torch
        if old is not None:
            carry_state(self.graph.state, old, steps, self.bufs, plan, lambda a: torch.as_tensor(a, device="cuda"))
        torch.cuda.synchronize()  # the new buffers are written before the next step's stream reads them


def carry_state(states, old: dict, steps: int, new: dict, plan: Regroup, index=None) -> None:
    """The state of a regrouped batch (`TrtStepRunner.regroup`), buffers keyed by tensor name, batch first
    (NumPy arrays or torch tensors). Each state's current value goes row by row (`plan`) into the new batch's
    state input: a ring is the input buffer itself; a `replace` pair is read by step `steps` from
    pair[steps % 2] = (input, output)[steps % 2], and the new pair starts at parity 0. The ring position is
    copied; new rows hold the initial value."""
    for s in states:
        current = old[s.input] if s.update == "ring" or steps % 2 == 0 else old[s.output]
        plan.carry(current, new[s.input], s.init, index)
        if s.update == "ring":
            new[s.position][...] = old[s.position]
