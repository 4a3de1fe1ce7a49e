"""Sample-by-sample generation with any step runner; the same loop for every backend.

Streams start from the zero state with the μ-law "silence" token (Q // 2) as the first input.
Seeded sampling draws uniforms with `reference_model.uniforms(seed, n, batch)`, so two backends
given the same seed see the same random numbers (see `reference_model.sampling`).

Variants (pass the model's `cfg`): a scalar-input model starts from the sample 0.0 and is fed the
decoded sample of each drawn class (`mulaw_decode`, or 2q/μ − 1 for μ-law companded samples); a
mixture-of-logistics model draws float32 samples with `mol_draw` (two uniforms per sample, from
`mol_uniforms`), feeds them back, and the chunks are float32 samples instead of int64 tokens.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from reference_model.mulaw import mulaw_decode
from reference_model.sampling import draw, mol_draw, mol_uniforms, uniforms

from .errors import InputError
from .runners.base import StepRunner


def generate_chunks(runner: StepRunner, n: int, batch: int = 1, *, seed: int = 0, method: str = "sample",
                    temperature: float = 1.0, quantization_channels: int = 256,
                    cond: np.ndarray | None = None, speaker: np.ndarray | None = None,
                    chunk: int = 4000, progress: Callable[[int], None] | None = None,
                    cfg=None) -> Iterator[np.ndarray]:
    """Yield int64 token chunks (batch, ≤ chunk) until n samples per stream are generated.

    cond: per-sample conditioning (batch, C, ≥ n) when the model has local conditioning.
    cfg: the model's `WaveNetConfig`; needed for scalar-input and mixture-of-logistics models (then it
    also sets quantization_channels).
    """
    if n < 1 or batch < 1:
        raise InputError(f"need at least one sample and one stream (got n={n}, batch={batch})")
    if cond is not None and (cond.ndim != 3 or cond.shape[0] != batch or cond.shape[2] < n):
        raise InputError(f"conditioning must be (batch={batch}, channels, ≥ {n} samples), got {cond.shape}")
    if cfg is None:  # the reference runner knows its model; a manifest host must be told
        cfg = getattr(getattr(runner, "model", None), "cfg", None)
        graph = getattr(runner, "graph", None)
        if cfg is None and graph is not None and hasattr(graph, "input") and graph.input("sample") is not None:
            raise InputError("this is a scalar-input model: pass its config (cfg=manifest.config) to generate")
    variant = cfg is not None and (cfg.scalar_input or cfg.mol)
    step = (_variant_step(runner, n, batch, cfg, seed, method, temperature) if variant
            else _token_step(runner, n, batch, seed, method, temperature, quantization_channels))
    runner.reset(batch, speaker)
    out = np.empty((batch, min(chunk, n)), dtype=np.float32 if variant and cfg.mol else np.int64)
    filled = 0
    for t in range(n):
        out[:, filled] = step(t, None if cond is None else cond[:, :, t])
        filled += 1
        if filled == out.shape[1] or t == n - 1:
            yield out[:, :filled].copy()
            if progress:
                progress(filled)
            filled = 0


def _token_step(runner: StepRunner, n, batch, seed, method, temperature, quantization_channels):
    """Categorical μ-law models: feed the drawn token back."""
    u = uniforms(seed, n, batch)
    token = np.full(batch, quantization_channels // 2, dtype=np.int64)

    def step(t: int, cond_t):
        nonlocal token
        token = draw(runner.step(token, cond_t), method, u[t], temperature)
        return token

    return step


def _variant_step(runner: StepRunner, n, batch, cfg, seed, method, temperature):
    """Scalar-input models are fed float samples; mixture-of-logistics models draw them."""
    Q = cfg.quantization_channels
    u = mol_uniforms(seed, n, batch) if cfg.mol else uniforms(seed, n, batch)
    sample = np.zeros(batch, dtype=np.float32)

    def step(t: int, cond_t):
        nonlocal sample
        params = runner.step(sample, cond_t)
        if cfg.mol:
            sample = mol_draw(params, method, u[t], cfg.log_scale_min, temperature)
            return sample
        token = draw(params, method, u[t], temperature)
        sample = ((2.0 * token / (Q - 1) - 1.0).astype(np.float32) if cfg.scalar_mulaw
                  else mulaw_decode(token, Q))
        return token

    return step


def generate(runner: StepRunner, n: int, batch: int = 1, **kwargs) -> np.ndarray:
    """All n samples at once → (batch, n) int64 tokens."""
    return np.concatenate(list(generate_chunks(runner, n, batch, **kwargs)), axis=1)
