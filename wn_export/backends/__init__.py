"""The one registry of backends. Every runner behind one interface (`base`), opened by name for a manifest.

| backend       | module (imported on first use)        | what it runs                                    |
|---------------|---------------------------------------|-------------------------------------------------|
| `onnxruntime` | `backends.onnxruntime.runner`         | the exported ONNX graphs, CPU                   |
| `torch`       | `backends.torch_ref`                  | the float64 reference from the recorded checkpoint |
| `tensorrt`    | `backends.tensorrt.runner`            | engines recorded by `wn-export trt`; CUDA GPU   |
| `triton`      | `backends.triton.runner`              | the fused step kernel (step only); CUDA GPU     |

A backend is added by one `Backend` row here and a module whose runner classes implement
`base.ScoringRunner` / `base.StepRunner` with a `from_manifest(manifest, graph, **options)` classmethod.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from wn_export.backends.base import Runner, ScoringRunner, StepRunner
from wn_export.errors import BackendError, InputError


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # imported lazily: heavy dependencies load only when the backend is used
    step: str | None  # runner class names in `module` (None: the backend has no such runner)
    scoring: str | None
    options: tuple[str, ...] = ()  # keyword options its runners take (anything else is refused)
    engines: bool = False  # runs TensorRT engines recorded in the manifest rather than the ONNX graphs
    reference: bool = False  # the float64 reference (no FP16 variant; reads the recorded checkpoint)
    plugins: bool = False  # runs fused graphs (one TensorRT plugin node; `wn-export onnx --fused-step`)
    about: str = ""


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("onnxruntime", "wn_export.backends.onnxruntime.runner", "OrtStepRunner", "OrtScoringRunner",
            options=("threads", "fused"), about="the exported ONNX graphs on ONNX Runtime (CPU)"),
    Backend("torch", "wn_export.backends.torch_ref", "TorchStepRunner", "TorchScoringRunner",
            options=("checkpoint",), reference=True, about="the float64 PyTorch reference"),
    Backend("tensorrt", "wn_export.backends.tensorrt.runner", "TrtStepRunner", "TrtScoringRunner",
            options=("cuda_graph",), engines=True, plugins=True, about="TensorRT engines built by `wn-export trt` (CUDA GPU)"),
    Backend("triton", "wn_export.backends.triton.runner", "TritonStepRunner", None,
            options=("device", "num_warps", "checkpoint"), about="the fused step kernel in OpenAI Triton (CUDA GPU, or its "
                                                   "CPU interpreter with TRITON_INTERPRET=1)"),
)}
BACKENDS = tuple(REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in REGISTRY:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(REGISTRY)})")
    return REGISTRY[name]


def _open(manifest, backend: str, kind: str, graph: str, options: dict) -> Runner:
    b = get_backend(backend)
    cls_name = getattr(b, kind)
    if cls_name is None:
        raise BackendError(f"the {backend} backend has no {kind} runner")
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(b.options))
    if unknown:
        raise InputError(f"the {backend} backend does not take {', '.join(unknown)}")
    if b.reference and graph.endswith(".fp16"):
        raise InputError(f"the {backend} backend is the float64 reference: it has no fp16 variant")
    if b.engines:
        manifest.engine(graph)  # a clear error before the GPU libraries load
    else:
        record = manifest.graph(graph)
        if record.plugin and not b.plugins:
            raise BackendError(f"the {backend} backend cannot run {graph}: its body is one {record.plugin} "
                               "node, a TensorRT plugin; build engines with `wn-export trt` and use "
                               "--backend tensorrt")
    cls = getattr(import_module(b.module), cls_name)
    return cls.from_manifest(manifest, graph, **options)


def open_scoring(manifest, backend: str, graph: str = "scoring", **options) -> ScoringRunner:
    """A scoring runner of `backend` for the manifest's `graph` (not yet activated)."""
    return _open(manifest, backend, "scoring", graph, options)


def open_step(manifest, backend: str, graph: str = "step", **options) -> StepRunner:
    """A step runner of `backend` for the manifest's `graph` (not yet activated). Options: the backend's
    own (onnxruntime: threads, fused; tensorrt: cuda_graph; torch: checkpoint); None means the default."""
    return _open(manifest, backend, "step", graph, options)


__all__ = ["Backend", "REGISTRY", "BACKENDS", "get_backend", "open_scoring", "open_step", "Runner",
           "ScoringRunner", "StepRunner"]
