"""The one generation loop: every host (`Generator`), the parity harness and the bench run it.

Streams start from the zero state with the μ-law "silence" token (Q // 2) as the first input. Seeded
sampling draws uniforms with `reference_model.uniforms(seed, steps, batch, start)`, so two backends given
the same seed see the same random numbers, and chunked output equals one-shot output.

What is fed back depends on the model (a `FeedbackRule`, chosen once from its config):
- categorical μ-law models: the drawn token (the hot path: `Sampler.bind`, natively where built);
- scalar-input categorical models: the decoded sample of the drawn class (`mulaw_decode`, or 2q/μ − 1
  for μ-law companded samples); the loop records the class;
- mixture-of-logistics models: float32 samples drawn with `mol_draw` (two uniforms per sample), fed
  back and recorded as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from reference_model.mulaw import mulaw_decode
from reference_model.sampling import mol_draw, mol_uniforms, uniforms
from wn_export.backends.base import StepRunner
from wn_export.errors import InputError
from wn_export.generation.sampler import Sampler


@dataclass
class FeedbackRule:
    """How one step's output becomes the recorded value and the next input."""

    first: np.ndarray  # the first input (batch,)
    dtype: type  # of the recorded values
    bind: Callable[[np.ndarray | None, int, int], Callable[[np.ndarray, int], np.ndarray]]
    # bind(runner logits buffer, start, size) → draw(step output, i) for steps start … start+size−1
    to_feed: Callable[[np.ndarray], np.ndarray] | None = None  # recorded value → next input (None: itself)
    native: dict | None = None  # token models: what a runner's `generate_block` needs (seed, method, temperature)


def feedback_rule(cfg, batch: int, *, seed: int, method: str, temperature: float) -> FeedbackRule:
    """The model's rule (`cfg`: its `WaveNetConfig`)."""
    Q = cfg.quantization_channels
    if cfg.mol:
        def bind_mol(_buffer, start, size):
            u = mol_uniforms(seed, size, batch, start) if method == "sample" else None
            return lambda params, i: mol_draw(params, method, None if u is None else u[i], cfg.log_scale_min,
                                              temperature)
        return FeedbackRule(np.zeros(batch, np.float32), np.float32, bind_mol)
    sampler = Sampler(batch, Q, method, temperature)

    def bind_tokens(buffer, start, size):
        u = uniforms(seed, size, batch, start=start)[:, :, None] if method == "sample" else None
        return sampler.bind(buffer, u)
    if cfg.scalar_input:
        decode = ((lambda q: (2.0 * q / (Q - 1) - 1.0).astype(np.float32)) if cfg.scalar_mulaw
                  else (lambda q: mulaw_decode(q, Q)))
        return FeedbackRule(np.zeros(batch, np.float32), np.int64, bind_tokens, decode)
    return FeedbackRule(np.full(batch, Q // 2, np.int64), np.int64, bind_tokens,
                        native=dict(seed=seed, method=method, temperature=temperature))


class StepLoop:
    """`reset()`, then `step()` per sample, or `advance(k)` / `chunks(n)` per block: the runner's step, the draw,
    the feedback. A runner with a native block path (`StepRunner.generate_block`: the ONNX Runtime host's
    fused graph) runs whole blocks of a token model's steps in one call; the draws are the same.

    cond: per-sample conditioning (batch, C, ≥ samples) when the model has local conditioning; speaker:
    (batch,) ids for global conditioning. Uniforms are generated per window of `window` steps."""

    def __init__(self, runner: StepRunner, batch: int, cfg, *, seed: int = 0, method: str = "sample",
                 temperature: float = 1.0, cond: np.ndarray | None = None, speaker: np.ndarray | None = None,
                 window: int = 4000, block: bool = True):
        if batch < 1 or window < 1:
            raise InputError(f"need at least one stream and a window of one step (got {batch}, {window})")
        if cond is not None and (cond.ndim != 3 or cond.shape[0] != batch):
            raise InputError(f"conditioning must be (batch={batch}, channels, samples), got {cond.shape}")
        self.runner, self.batch, self.cond, self.speaker, self.window = runner, batch, cond, speaker, window
        self.rule = feedback_rule(cfg, batch, seed=seed, method=method, temperature=temperature)
        self.block = block and self.rule.native is not None  # try the runner's block path
        self.t = 0

    def reset(self) -> None:
        """Every stream back to the zero state and the first input."""
        self.runner.reset(self.batch, self.speaker)
        self.feed, self.t, self._end = self.rule.first.copy(), 0, 0

    def _bind(self) -> None:
        self._draw = self.rule.bind(getattr(self.runner, "logits", None), self.t, self.window)
        self._start, self._end = self.t, self.t + self.window

    def step(self) -> np.ndarray:
        """One sample of every stream → the recorded values (batch,) (a reused buffer: copy to keep)."""
        t = self.t
        if t >= self._end:
            self._bind()
        cond = self.cond
        value = self._draw(self.runner.step(self.feed, None if cond is None else cond[:, :, t]), t - self._start)
        to_feed = self.rule.to_feed
        self.feed = value if to_feed is None else to_feed(value)
        self.t = t + 1
        return value

    def advance(self, k: int, out: np.ndarray | None = None, step_ns: np.ndarray | None = None) -> np.ndarray:
        """k samples of every stream → (k, batch) recorded values (into `out` if given): one native call when
        the runner has a block path, else k `step()`s. step_ns (k,) receives per-step wall times (block path)."""
        rows = np.empty((k, self.batch), dtype=self.rule.dtype) if out is None else out
        if self.block and k > 0:
            native, t = self.rule.native, self.t
            u = uniforms(native["seed"], k, self.batch, start=t) if native["method"] == "sample" else None
            cond = None if self.cond is None else self.cond[:, :, t:t + k]
            if self.runner.generate_block(self.feed, rows, u, native["temperature"], cond, step_ns):
                self.feed, self.t = rows[-1].copy(), t + k
                return rows
            self.block = False  # the runner has no block path: step by step from now on
        for i in range(k):
            rows[i] = self.step()
        return rows

    def chunks(self, n: int, chunk: int = 4000,
               progress: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """From a reset, yield (batch, ≤ chunk) arrays until n samples per stream; `progress(done)`."""
        if n < 1 or chunk < 1:
            raise InputError(f"need at least one sample per stream and per chunk (got {n}, {chunk})")
        if self.cond is not None and self.cond.shape[2] < n:
            raise InputError(f"conditioning covers {self.cond.shape[2]} samples, fewer than the {n} requested")
        self.window = min(self.window, chunk)
        self.reset()
        while self.t < n:
            rows = self.advance(min(chunk, n - self.t))
            if progress:
                progress(self.t)
            yield rows.T.copy()


def generate_chunks(runner: StepRunner, n: int, batch: int = 1, *, seed: int = 0, method: str = "sample",
                    temperature: float = 1.0, quantization_channels: int | None = None,
                    cond: np.ndarray | None = None, speaker: np.ndarray | None = None, chunk: int = 4000,
                    progress: Callable[[int], None] | None = None, cfg=None) -> Iterator[np.ndarray]:
    """`StepLoop(...).chunks(n)` for a runner: cfg is the model's `WaveNetConfig` (a reference runner knows
    its own; a plain categorical model may give only `quantization_channels`)."""
    cfg = _config(runner, cfg, quantization_channels)
    loop = StepLoop(runner, batch, cfg, seed=seed, method=method, temperature=temperature, cond=cond,
                    speaker=speaker, window=chunk)
    yield from loop.chunks(n, chunk, progress)


def generate(runner: StepRunner, n: int, batch: int = 1, **kwargs) -> np.ndarray:
    """All n samples at once → (batch, n) tokens (float32 samples for mixture models)."""
    return np.concatenate(list(generate_chunks(runner, n, batch, **kwargs)), axis=1)


@dataclass(frozen=True)
class _Categorical:
    """The config facts the loop needs of a plain μ-law categorical model."""

    quantization_channels: int
    mol: bool = False
    scalar_input: bool = False


def _config(runner: StepRunner, cfg, quantization_channels: int | None):
    if cfg is not None:
        return cfg
    cfg = getattr(getattr(runner, "model", None), "cfg", None)
    if cfg is not None:
        return cfg
    graph = getattr(runner, "graph", None)
    if graph is not None and hasattr(graph, "input") and graph.input("sample") is not None:
        raise InputError("this is a scalar-input model: pass its config (cfg=manifest.config) to generate")
    return _Categorical(quantization_channels or 256)
