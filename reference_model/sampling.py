"""Sampling from logits, shared by every backend and host so that they can draw the same samples.

Inverse-CDF rule (implemented identically by the C++ host): in float64,
p_i = exp((l_i − max l) / temperature), c = cumsum(p), sample = first i with c_i > u · c_{Q−1},
for a uniform u in [0, 1). Seeded sampling draws u from `uniforms(seed, steps, batch)`, so two
backends fed the same seed see the same u and differ only where their logits differ.

`uniforms` is SplitMix64, chosen because every host language reproduces it in a few lines:
draw k = 1, 2, … (step-major, then stream) is z = seed + k·0x9E3779B97F4A7C15 (mod 2⁶⁴),
z = (z ⊕ z≫30)·0xBF58476D1CE4E5B9, z = (z ⊕ z≫27)·0x94D049BB133111EB, z = z ⊕ z≫31, u = (z≫11)·2⁻⁵³.

Mixture-of-logistics outputs (3M raw parameters: M logit weights, M means, M log scales) consume TWO
uniforms per sample and stream: `mol_uniforms(seed, steps, batch)[t, b] = (u₁, u₂)` are draws
k = 2(t·batch + b) + 1 and k + 1 of the same SplitMix64 sequence (= `uniforms(seed, steps, 2·batch)`
reshaped). In float64: the component is the inverse-CDF draw above over the M logit weights with u₁
(temperature applies to these logits only); with its mean μ and log scale ls,
v = 10⁻⁵ + u₂·(1 − 2·10⁻⁵) (r9y9's uniform range), s = exp(max(ls, log_scale_min)),
x = μ + s·(ln v − ln(1 − v)), clipped to [−1, 1], then rounded to float32 (the value fed back as the
next input and returned). Greedy: the mean of the heaviest component, clipped to [−1, 1].
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

METHODS = ("greedy", "sample")


_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def uniforms(seed: int, steps: int, batch: int, start: int = 0) -> np.ndarray:
    """(steps, batch) float64 uniforms in [0, 1): rows start … start+steps−1 of the SplitMix64 stream
    (draw k = t·batch + b + 1 for step t, stream b), without materialising the rows before `start`."""
    if not 0 <= seed < 2**64:
        raise InputError(f"seed must be in [0, 2^64) (got {seed})")
    k = np.arange(start * batch + 1, (start + steps) * batch + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + k * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(steps, batch)


# Below this temperature sampling is greedy in all but name: logit gaps of 1e-3 already scale to
# exp(-1e3) = 0 in float64. Far below it, a finite float32 logit over the temperature overflows float64
# (3.4e38 / T > 1.8e308 for T < 1.9e-270) and every draw becomes NaN, i.e. token 0.
MIN_TEMPERATURE = 1e-6


def check_temperature(method: str, temperature) -> float:
    """The temperature as a float: for method "sample" a finite number ≥ `MIN_TEMPERATURE` (greedy ignores it)."""
    if method != "sample":
        return 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) \
            or not np.isfinite(temperature) or temperature < MIN_TEMPERATURE:
        raise InputError(f"temperature must be a finite number >= {MIN_TEMPERATURE:g} (got {temperature!r:.40}); "
                         "for the most likely token use --method greedy")
    return float(temperature)


def check_row_temperatures(temperatures, rows: int) -> np.ndarray:
    """(rows,) temperatures, one per stream, as float64: each 0 (that stream is greedy) or a temperature that
    `check_temperature` accepts."""
    t = np.asarray(temperatures)
    if t.shape != (rows,) or not np.issubdtype(t.dtype, np.floating) or not np.isfinite(t).all() \
            or ((t != 0) & (t < MIN_TEMPERATURE)).any():
        raise InputError(f"per-row temperatures must be ({rows},) finite floats, each 0 (greedy) or ≥ "
                         f"{MIN_TEMPERATURE:g} (got {t.dtype} {t.shape}: {t.ravel()[:8].tolist()})")
    return np.ascontiguousarray(t, np.float64)


def inverse_cdf(logits: np.ndarray, u: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """logits (B, Q), u (B,) in [0, 1) → int64 samples (B,)."""
    temperature = check_temperature("sample", temperature)
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    c = np.cumsum(p, axis=-1)  # (B, Q)
    target = np.asarray(u, dtype=np.float64)[:, None] * c[:, -1:]
    idx = (c <= target).sum(axis=-1)  # first index with c_i > u·total
    return np.minimum(idx, logits.shape[-1] - 1).astype(np.int64)


def mol_uniforms(seed: int, steps: int, batch: int, start: int = 0) -> np.ndarray:
    """(steps, batch, 2) float64 uniforms for mixture-of-logistics sampling (see the module doc), from
    step `start` on."""
    return uniforms(seed, steps, 2 * batch, start).reshape(steps, batch, 2)


def mol_draw(params: np.ndarray, method: str, u: np.ndarray | None = None, log_scale_min: float = -7.0,
             temperature: float = 1.0) -> np.ndarray:
    """params (B, 3M), u (B, 2) → float32 samples (B,) in [−1, 1] (see the module doc)."""
    p = np.asarray(params, dtype=np.float64)
    m = p.shape[-1] // 3
    if p.shape[-1] != 3 * m or m < 1:
        raise InputError(f"mixture-of-logistics parameters must have 3·M columns (got {p.shape[-1]})")
    weights, means, log_scales = p[:, :m], p[:, m:2 * m], np.maximum(p[:, 2 * m:3 * m], log_scale_min)
    rows = np.arange(p.shape[0])
    if method == "greedy":
        return np.clip(means[rows, weights.argmax(axis=-1)], -1.0, 1.0).astype(np.float32)
    if method != "sample":
        raise InputError(f"unknown sampling method {method!r} (choose from {', '.join(METHODS)})")
    if u is None:
        raise InputError("sampling needs uniforms")
    u = np.asarray(u, dtype=np.float64)
    k = inverse_cdf(weights, u[:, 0], temperature)
    v = 1e-5 + u[:, 1] * (1.0 - 2e-5)
    x = means[rows, k] + np.exp(log_scales[rows, k]) * (np.log(v) - np.log1p(-v))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


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
