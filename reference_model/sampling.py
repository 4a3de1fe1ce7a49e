"""Sampling from logits, shared by every backend and host so that they can draw the same samples.

Inverse-CDF rule (implemented identically by the C++ host): in float64,
p_i = exp((l_i − max l) / temperature), c = cumsum(p), sample = first i with c_i > u · c_{Q−1},
for a uniform u in [0, 1). Seeded sampling draws u from `uniforms(seed, steps, batch)`, so two
backends fed the same seed see the same u and differ only where their logits differ.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

METHODS = ("greedy", "sample")


def uniforms(seed: int, steps: int, batch: int) -> np.ndarray:
    """(steps, batch) float64 uniforms in [0, 1) from NumPy's PCG64 generator."""
    return np.random.Generator(np.random.PCG64(seed)).random((steps, batch))


def inverse_cdf(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """logits (B, Q), u (B,) in [0, 1) → int64 samples (B,)."""
    if temperature <= 0:
        raise InputError(f"temperature must be > 0 (got {temperature}); use greedy sampling instead")
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    c = np.cumsum(p, axis=-1)  # (B, Q)
    target = np.asarray(u, dtype=np.float64)[:, None] * c[:, -1:]
    idx = (c <= target).sum(axis=-1)  # first index with c_i > u·total
    return np.minimum(idx, logits.shape[-1] - 1).astype(np.int64)


def greedy(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).argmax(axis=-1).astype(np.int64)


def draw(logits: np.ndarray, method: str, u: np.ndarray | None = None,
         temperature: float = 1.0) -> np.ndarray:
    if method == "greedy":
        return greedy(logits)
    if method == "sample":
        if u is None:
            raise InputError("sampling needs uniforms")
        return inverse_cdf(logits, u, temperature)
    raise InputError(f"unknown sampling method {method!r} (choose from {', '.join(METHODS)})")
