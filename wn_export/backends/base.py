"""One runner interface for every backend (PyTorch reference, ONNX Runtime, TensorRT, …).

Runners are context managers (`activate` / `deactivate`); heavy imports happen in `activate`.

- `ScoringRunner.infer(tokens, cond=None, speaker=None)` → {"logits": (B, T, Q), "log_prob": (B, T−1)}
  with tokens (B, T) int64, cond per-sample (B, C, T) float32, speaker (B,) int64.
- `StepRunner.reset(batch, speaker=None)` starts `batch` streams from the zero state;
  `StepRunner.step(token, cond_t=None)` → logits (B, Q) for token (B,) int64, cond_t (B, C).
  The returned array may be a reused buffer: copy it to keep it.
- Optional: `regroup(rows, speaker=None)` (continuous batching, `serving.streams`): the next batch's row j
  continues the current row rows[j], or starts from the initial state when rows[j] < 0; the runners that
  have it carry their state with one `Regroup` plan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from wn_export.errors import InputError


class Runner(ABC):
    name = "runner"

    @classmethod
    def from_manifest(cls, manifest, graph: str, **options) -> "Runner":
        """The registry's loader (`wn_export.backends.open_step` / `open_scoring`)."""
        return cls(manifest, graph, **options)

    def activate(self) -> None:  # noqa: B027 - optional hook
        pass

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()


class ScoringRunner(Runner):
    @abstractmethod
    def infer(self, tokens: np.ndarray, cond: np.ndarray | None = None,
              speaker: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


class StepRunner(Runner):
    # Whether generate_block's rows are bit-identical whatever the batch they run in (same stream, same
    # tokens at batch 1 and as a row of batch N): a server may then run a lone stream at batch 1.
    batch_invariant: bool = False

    @abstractmethod
    def reset(self, batch: int, speaker: np.ndarray | None = None) -> None: ...

    @abstractmethod
    def step(self, token: np.ndarray, cond_t: np.ndarray | None = None) -> np.ndarray: ...

    def generate_block(self, first: np.ndarray, out: np.ndarray, u: np.ndarray | None = None,
                       temperature: float | np.ndarray = 1.0, cond: np.ndarray | None = None,
                       step_ns: np.ndarray | None = None) -> bool:
        """Optional fast path of categorical token models: len(out) steps in one call, with no Python per
        sample → True; False when the runner has none, or cannot honour an argument (the loop then calls
        `step` per sample). first (B,) int64 is the first step's input, out (steps, B) int64 receives the
        drawn tokens (each the next step's input), u (steps, B) float64 the uniforms of
        `reference_model.sampling` (None: greedy), temperature a float or (B,) float64 per row (0: that row
        is greedy; u then covers every row), cond (B, C, ≥ steps) the per-sample conditioning; the streams'
        state and position advance as `step`'s would, and the draws are those of
        `reference_model.sampling.draw`. step_ns (steps,) int64, if given, receives each step's wall time."""
        return False

    def teacher_force(self, tokens: np.ndarray, cond: np.ndarray | None = None,
                      speaker: np.ndarray | None = None) -> np.ndarray:
        """Feed the given tokens (B, T) one step at a time → logits (B, T, Q) float64."""
        B, T = tokens.shape
        self.reset(B, speaker)
        out = None
        for t in range(T):
            logits = self.step(tokens[:, t], None if cond is None else cond[:, :, t])
            if out is None:
                out = np.empty((B, T, logits.shape[-1]), dtype=np.float64)
            out[:, t] = logits
        return out


def step_feeds(graph, batch: int, feed, cond_t=None) -> dict[str, np.ndarray]:
    """One step's host inputs as the manifest declares them (`graph`: a `GraphRecord`): the fed-back
    token (int64) or scalar sample (float32), shape (batch,), and the conditioning row (batch, C)."""
    tensor = graph.feed
    out = {tensor.name: np.ascontiguousarray(np.asarray(feed).reshape(batch), dtype=tensor.dtype)}
    cond = graph.input("cond")
    if cond is not None:
        if cond_t is None:
            raise InputError("this model needs per-sample conditioning (cond_t)")
        out[cond.name] = np.ascontiguousarray(np.asarray(cond_t).reshape(batch, -1), dtype=cond.dtype)
    return out


class Regroup:
    """A plan for the next batch of streams (continuous batching: streams join and leave between steps): new
    row j continues current row rows[j], or starts from the initial state when rows[j] < 0. Runners keep the
    position (ring layout) and the buffer parity (replace layout) themselves; a new row's initial state reads
    the same at every position, so it computes what a fresh stream would."""

    def __init__(self, rows, batch: int):
        """rows: the new batch's sources (len = the new batch), each < `batch` (the current batch; 0 before
        the first reset: every row new)."""
        rows = np.asarray(rows, dtype=np.intp)
        if rows.ndim != 1 or not len(rows) or rows.max() >= batch:
            raise InputError(f"regroup needs at least one row and rows < {batch} (got {rows.tolist()})")
        self.rows = rows
        self.batch = len(rows)
        self.kept = np.flatnonzero(rows >= 0)  # new rows that continue a current row …
        self.sources = rows[self.kept]  # … and the current rows they continue
        self.fresh = np.flatnonzero(rows < 0)  # new rows that start from the initial state

    def carry(self, old, new, init: float, index=None) -> None:
        """new (batch, …) ← old's rows for the continuing rows, `init` in the new ones. NumPy arrays or torch
        tensors (batch first); `index` turns a row index array into what `new` is indexed with (torch: a
        tensor on its device). `old` may be None when no row continues."""
        index = index or (lambda a: a)
        if len(self.fresh):
            new[index(self.fresh)] = init
        if len(self.kept):
            new[index(self.kept)] = old[index(self.sources)]
