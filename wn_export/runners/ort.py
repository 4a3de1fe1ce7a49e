"""ONNX Runtime backend: a generic host that drives the graphs from the manifest alone.

The step runner preallocates every buffer once per `reset` and binds them with I/O binding; a step
writes the token into its bound buffer, runs, and applies the manifest's state update rule:
`ring` (write the update rows into the ring buffers at `offset + position mod length`) or
`replace` (swap the input and output buffers). No per-step allocations besides ORT's own.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ArtifactError, BackendError, InputError
from ..manifest import Graph, Manifest
from .base import ScoringRunner, StepRunner

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "float64"}


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("the onnxruntime backend needs the onnxruntime package: "
                           "pip install 'wn-export[cpu]' (or onnxruntime)") from None
    return onnxruntime


def make_session(graph: Graph, threads: int | None = None):
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(graph.path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for invalid graphs
        raise ArtifactError(f"onnxruntime cannot load {graph.path.name}: {str(e).splitlines()[0]}") from None
    check_io(graph, [(i.name, _ORT_DTYPES.get(i.type, i.type), len(i.shape)) for i in session.get_inputs()],
             [(o.name, _ORT_DTYPES.get(o.type, o.type), len(o.shape)) for o in session.get_outputs()])
    return session


def check_io(graph: Graph, inputs, outputs) -> None:
    """The graph file's (name, dtype, rank) I/O must be the manifest's, or the directory is inconsistent."""
    for kind, got, declared in (("inputs", inputs, graph.inputs), ("outputs", outputs, graph.outputs)):
        want = [(t["name"], t["dtype"], len(t["shape"])) for t in declared]
        if sorted(got) != sorted(want):
            raise ArtifactError(f"manifest/graph mismatch in {graph.path.name}: its {kind} are {sorted(got)}, "
                                f"the manifest declares {sorted(want)}")


def resolve(shape, dims: dict[str, int]) -> tuple[int, ...]:
    try:
        return tuple(d if isinstance(d, int) else dims[d] for d in shape)
    except KeyError as e:
        raise ArtifactError(f"cannot resolve symbolic dim {e} of shape {shape}") from None


class OrtScoringRunner(ScoringRunner):
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, graph: str = "scoring", threads: int | None = None):
        self.graph = manifest.graph(graph)
        self.threads = threads
        self.session = None

    def activate(self):
        self.session = make_session(self.graph, self.threads)

    def deactivate(self):
        self.session = None

    def infer(self, tokens, cond=None, speaker=None):
        values = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64), "cond": cond, "speaker": speaker}
        feeds = {}
        for t in self.graph.inputs:
            if values.get(t["role"]) is None:
                raise InputError(f"the scoring graph needs its {t['role']!r} input ({t['name']})")
            feeds[t["name"]] = np.ascontiguousarray(values[t["role"]], dtype=t["dtype"])
        names = [t["name"] for t in self.graph.outputs]
        return {self.graph.outputs[i]["role"]: v for i, v in enumerate(self.session.run(names, feeds))}


class OrtUpsampleRunner(OrtScoringRunner):
    """upsample.onnx: frame-rate features (B, C, frames) → per-sample (B, C, frames·hop)."""

    def __init__(self, manifest: Manifest, threads: int | None = None):
        super().__init__(manifest, "upsample", threads)

    def upsample(self, cond: np.ndarray) -> np.ndarray:
        name = self.graph.inputs[0]["name"]
        return self.session.run(None, {name: np.ascontiguousarray(cond, dtype=np.float32)})[0]


class OrtStepRunner(StepRunner):
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, graph: str = "step", threads: int | None = None):
        self.graph = manifest.graph(graph)
        self.threads = threads
        self.session = None
        self.batch = 0

    def activate(self):
        self.ort = import_ort()
        self.session = make_session(self.graph, self.threads)

    def deactivate(self):
        self.session = self.binding = None

    def _value(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(array)

    def reset(self, batch, speaker=None):
        if self.session is None:
            raise BackendError("runner is not active: use it as a context manager")
        g, dims = self.graph, {"batch": batch}
        self.batch, self.position = batch, 0
        self.binding = self.session.io_binding()
        self.buffers: dict[str, np.ndarray] = {}
        for t in (*g.inputs, *g.outputs):
            self.buffers[t["name"]] = np.zeros(resolve(t["shape"], dims), dtype=t["dtype"])
        self.rings, self.swaps = [], []
        for s in g.state:
            self.buffers[s["input"]][...] = s["init"]
            if s["update"] == "ring":
                offsets = np.array([r["offset"] for r in s["rings"]], dtype=np.int64)
                lengths = np.array([r["length"] for r in s["rings"]], dtype=np.int64)
                self.rings.append((self.buffers[s["input"]], self.buffers[s["output"]], offsets, lengths))
                self.position_buf = self.buffers[s["position"]]
            else:  # two OrtValues over two buffers, swapped after every step
                values = [self._value(self.buffers[s["input"]]), self._value(self.buffers[s["output"]])]
                self.swaps.append((s["input"], s["output"], values))
        spk = g.input("speaker")
        if spk is not None:
            if speaker is None or np.shape(speaker) != (batch,):
                raise InputError(f"this model needs speaker ids of shape ({batch},)")
            self.buffers[spk["name"]][...] = speaker
        self.token_buf = self.buffers[g.input("token")["name"]]
        cond = g.input("cond")
        self.cond_buf = None if cond is None else self.buffers[cond["name"]]
        self.logits = self.buffers[g.output("logits")["name"]]
        for t in g.inputs:
            self.binding.bind_ortvalue_input(t["name"], self._value(self.buffers[t["name"]]))
        for t in g.outputs:
            self.binding.bind_ortvalue_output(t["name"], self._value(self.buffers[t["name"]]))

    def step(self, token, cond_t=None):
        self.token_buf[...] = token
        if self.cond_buf is not None:
            if cond_t is None:
                raise InputError("this model needs per-sample conditioning (cond_t)")
            self.cond_buf[...] = cond_t
        if self.rings:
            self.position_buf[0] = self.position
        self.session.run_with_iobinding(self.binding)
        for state, update, offsets, lengths in self.rings:
            state[:, offsets + self.position % lengths, :] = update
        for name_in, name_out, values in self.swaps:  # replace: the output becomes the next input
            values.reverse()
            self.binding.bind_ortvalue_input(name_in, values[0])
            self.binding.bind_ortvalue_output(name_out, values[1])
        self.position += 1
        return self.logits
