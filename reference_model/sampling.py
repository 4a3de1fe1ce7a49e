"""Sampling from logits, shared by every backend and host so that they can draw the same samples.

Inverse-CDF rule (implemented identically by the C++ host): in float64,
p_i = exp((l_i − max l) / temperature), c = cumsum(p), sample = first i with c_i > u · c_{Q−1},
for a uniform u in [0, 1). Seeded sampling draws u from `uniforms(seed, steps, batch)`, so two
backends fed the same seed see the same u and differ only where their logits differ.

`uniforms` is SplitMix64, chosen because every host language reproduces it in a few lines:
draw k = 1, 2, … (step-major, then stream) is z = seed + k·0x9E3779B97F4A7C15 (mod 2⁶⁴),
z = (z ⊕ z≫30)·0xBF58476D1CE4E5B9, z = (z ⊕ z≫27)·0x94D049BB133111EB, z = z ⊕ z≫31, u = (z≫11)·2⁻⁵³.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

METHODS = ("greedy", "sample")


_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def uniforms(seed: int, steps: int, batch: int) -> np.ndarray:
    """(steps, batch) float64 uniforms in [0, 1): SplitMix64 draws 1 … steps·batch after `seed`."""
    if not 0 <= seed < 2**64:
        raise InputError(f"seed must be in [0, 2^64) (got {seed})")
    k = np.arange(1, steps * batch + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + k * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(steps, batch)


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
