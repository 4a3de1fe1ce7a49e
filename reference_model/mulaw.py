"""μ-law companding and quantisation (NumPy; the same formulas the hosts implement).

encode: f = sign(x)·ln(1 + μ|x|)/ln(1 + μ), q = floor((f + 1)/2 · μ + 0.5), μ = Q − 1
decode: f = 2q/μ − 1, x = sign(f)·((1 + μ)^|f| − 1)/μ
"""

from __future__ import annotations

import numpy as np


def mulaw_encode(audio: np.ndarray, channels: int = 256) -> np.ndarray:
    """Float audio in [−1, 1] → int64 classes in [0, channels − 1]."""
    mu = channels - 1
    x = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    f = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((f + 1.0) / 2.0 * mu + 0.5).astype(np.int64)


def mulaw_decode(tokens: np.ndarray, channels: int = 256) -> np.ndarray:
    """int classes in [0, channels − 1] → float32 audio in [−1, 1]."""
    mu = channels - 1
    f = 2.0 * np.asarray(tokens, dtype=np.float64) / mu - 1.0
    return (np.sign(f) * np.expm1(np.abs(f) * np.log1p(mu)) / mu).astype(np.float32)
