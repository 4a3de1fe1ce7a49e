"""Backends behind one interface; `open_scoring` / `open_step` pick one by name for a manifest."""

from __future__ import annotations

from ..errors import BackendError
from .base import Runner, ScoringRunner, StepRunner

BACKENDS = ("onnxruntime", "tensorrt")


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def open_scoring(manifest, backend: str, graph: str = "scoring") -> ScoringRunner:
    _check(backend)
    if backend == "onnxruntime":
        from .ort import OrtScoringRunner

        return OrtScoringRunner(manifest, graph)
    from .trt import TrtScoringRunner

    return TrtScoringRunner(manifest, graph)


def open_step(manifest, backend: str, graph: str = "step", **options) -> StepRunner:
    """`options` go to the backend's runner (onnxruntime: threads, fused)."""
    _check(backend)
    if backend == "onnxruntime":
        from .ort import OrtStepRunner

        return OrtStepRunner(manifest, graph, **options)
    from .trt import TrtStepRunner

    return TrtStepRunner(manifest, graph, **options)


__all__ = ["Runner", "ScoringRunner", "StepRunner", "BACKENDS", "open_scoring", "open_step"]
