"""Sample-by-sample generation with any step runner; the same loop for every backend.

Streams start from the zero state with the μ-law "silence" token (Q // 2) as the first input.
Seeded sampling draws uniforms with `reference_model.uniforms(seed, n, batch)`, so two backends
given the same seed see the same random numbers (see `reference_model.sampling`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from reference_model.sampling import draw, uniforms

from .errors import InputError
from .runners.base import StepRunner


def generate_chunks(runner: StepRunner, n: int, batch: int = 1, *, seed: int = 0, method: str = "sample",
                    temperature: float = 1.0, quantization_channels: int = 256,
                    cond: np.ndarray | None = None, speaker: np.ndarray | None = None,
                    chunk: int = 4000, progress: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Yield int64 token chunks (batch, ≤ chunk) until n samples per stream are generated.

    cond: per-sample conditioning (batch, C, ≥ n) when the model has local conditioning.
    """
    if n < 1 or batch < 1:
        raise InputError(f"need at least one sample and one stream (got n={n}, batch={batch})")
    if cond is not None and (cond.ndim != 3 or cond.shape[0] != batch or cond.shape[2] < n):
        raise InputError(f"conditioning must be (batch={batch}, channels, ≥ {n} samples), got {cond.shape}")
    u = uniforms(seed, n, batch)
    runner.reset(batch, speaker)
    token = np.full(batch, quantization_channels // 2, dtype=np.int64)
    out = np.empty((batch, min(chunk, n)), dtype=np.int64)
    filled = 0
    for t in range(n):
        logits = runner.step(token, None if cond is None else cond[:, :, t])
        token = draw(logits, method, u[t], temperature)
        out[:, filled] = token
        filled += 1
        if filled == out.shape[1] or t == n - 1:
            yield out[:, :filled].copy()
            if progress:
                progress(filled)
            filled = 0


def generate(runner: StepRunner, n: int, batch: int = 1, **kwargs) -> np.ndarray:
    """All n samples at once → (batch, n) int64 tokens."""
    return np.concatenate(list(generate_chunks(runner, n, batch, **kwargs)), axis=1)
