"""Continuous batching of generation streams: many requests, one step call per sample for all of them.

A server receives generation requests at any time, each with its own seed, length and settings. The
`StreamBatcher` keeps every active stream in one row of the step runner's batch: a stream joins with the
initial state between two steps (`OrtStepRunner.regroup`) and leaves when it has its samples, and each
step serves all rows at once. What a stream draws depends only on its request:

- its uniforms are those of stream `index` of a `streams`-stream generation with its seed
  (`reference_model.uniforms(seed, steps, streams, start)[:, index]`; the default 1-of-1 layout is
  `wn-export generate --seed S`'s), drawn by the same float64 inverse CDF / `mol_draw` as the `StepLoop`;
- the steps run where `wn-export generate` runs them: in blocks of the runner's `generate_block` (the ONNX
  Runtime host's native loop, one call per burst of steps, each row with its own temperature or greedy)
  when it has one, else one `step` call per sample. The native loop's rows do not depend on the batch they
  are in (`StepRunner.batch_invariant`), so a lone stream runs at batch 1 and its tokens equal
  `wn-export generate --batch 1 --seed S`'s exactly, whatever else runs beside it. On the per-step path the
  batch never has fewer than `min_rows` = 2 rows (an idle row pads a lone stream): ONNX Runtime's one-row
  kernels round differently (≈5e-6 on the logits) from its batched ones, whose rows are bit-identical to
  each other at every batch size and row position; there a stream's tokens equal stream `index` of
  `wn-export generate --batch streams --seed S` (streams ≥ 2).

Streams are delivered in chunks of exactly `chunk` samples (the last one shorter) through a `Sink`; a
burst of steps runs until the earliest chunk boundary of any row, or until a new request arrives.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from reference_model.sampling import mol_draw, mol_uniforms, uniforms
from wn_export.errors import InputError
from wn_export.generation.generator import Generator, Request
from wn_export.generation.loop import feedback_rule
from wn_export.generation.sampler import Sampler

MAX_LAYOUT_STREAMS = 256  # a request's `streams` at most (its uniforms are drawn for all of them)


@dataclass(frozen=True)
class StreamSpec:
    """A validated single-stream request: the generator's `Request` (batch 1) and its uniform layout."""

    request: Request
    streams: int = 1  # the stream draws the uniforms of stream `index` of `streams` streams seeded `seed`
    index: int = 0

    @property
    def settings(self) -> tuple[str, float]:
        return self.request.method, self.request.temperature


class Sink(Protocol):
    """Where a stream's output goes (a server's response sender, a test's list)."""

    def chunk(self, offset: int, values: np.ndarray) -> None: ...  # values (≤ chunk,) from sample `offset`

    def finish(self, error: str | None = None) -> None: ...  # the stream is over (error: why it failed)

    def cancelled(self) -> bool: ...  # the client went away


@dataclass(eq=False)
class _Stream:
    spec: StreamSpec
    sink: Sink
    t: int = 0  # samples generated
    sent: int = 0  # samples delivered
    pending: list = field(default_factory=list)  # generated, not yet delivered: arrays (steps,)

    @property
    def n(self) -> int:
        return self.spec.request.n

    def until_boundary(self, chunk: int) -> int:
        return min(self.n, (self.t // chunk + 1) * chunk) - self.t

    def uniforms(self, steps: int, mol: bool) -> np.ndarray:
        """(steps,) float64 uniforms, (steps, 2) for mixtures, from this stream's position on."""
        req, s = self.spec.request, self.spec
        if mol:
            return mol_uniforms(req.seed, steps, s.streams, self.t)[:, s.index]
        return uniforms(req.seed, steps, s.streams, start=self.t)[:, s.index]


class StreamBatcher:
    """Runs many generation streams through one step runner (see the module doc).

    `submit` may be called from any thread; `serve(stop)` runs the loop (one thread); `step_burst` runs
    one burst (tests drive it directly). Up to `max_streams` streams share a batch; more wait in order."""

    def __init__(self, generator: Generator, *, max_streams: int = 16, chunk: int = 4000, min_rows: int | None = None,
                 window: int = 4000, block: int = 512):
        if max_streams < 1 or chunk < 1 or (min_rows or 1) < 1 or window < 1 or block < 1:
            raise InputError("max_streams, chunk, min_rows, window and block must be positive")
        generator.open()
        self.gen, self.cfg = generator, generator.cfg
        self.runner = generator.runner
        if not hasattr(self.runner, "regroup"):
            raise InputError(f"the {generator.backend} backend cannot batch streams that start at different times "
                             "(its runner has no regroup); serve generation with the onnxruntime backend")
        self.max_streams, self.chunk, self.window = max_streams, chunk, window
        self.block = block  # steps per native call: a new request waits at most one block
        self.mol = bool(getattr(self.cfg, "mol", False))
        rule = feedback_rule(self.cfg, 1, seed=0, method="greedy", temperature=1.0)
        self.to_feed, self.first = rule.to_feed, rule.first[0]  # recorded value → next input; the first input
        self.dtype = np.float32 if self.mol else np.int64
        # token models try the runner's generate_block first (until it declines); see the module doc
        self.native = not self.mol and self.to_feed is None
        self.auto_rows = min_rows is None
        self.min_rows = min_rows or (1 if self.native and self.runner.batch_invariant else 2)
        self.active: list[_Stream] = []  # row j of the batch is active[j]; rows ≥ len(active) pad
        self.waiting: deque[_Stream] = deque()
        self.lock = threading.Condition()
        self.arrived = False  # a request is waiting and there is room for it: end the burst
        self.feed = None
        self._samplers: dict = {}

    # ---- requests ---------------------------------------------------------------------------------
    def validate(self, n: int, *, seed: int = 0, method: str = "sample", temperature: float = 1.0,
                 features=None, speaker=None, streams: int = 1, index: int = 0) -> StreamSpec:
        """One stream's request, validated by the generator's rules (one `InputError` per problem)."""
        for name, value, low in (("streams", streams, 1), ("stream", index, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"{name} must be an integer ≥ {low} (got {value!r})")
        if streams > MAX_LAYOUT_STREAMS or index >= streams:
            raise InputError(f"stream must lie in [0, streams) and streams in [1, {MAX_LAYOUT_STREAMS}] "
                             f"(got stream {index} of {streams})")
        req = self.gen.request(n, 1, seed=seed, method=method, temperature=temperature, features=features,
                               speaker=speaker, chunk=self.chunk)
        return StreamSpec(req, int(streams), int(index))

    def submit(self, spec: StreamSpec, sink: Sink) -> None:
        with self.lock:
            self.waiting.append(_Stream(spec, sink))
            self.arrived = len(self.active) < self.max_streams
            self.lock.notify()

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    # ---- the loop ---------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Run bursts until `stop` is set; then end every open stream with an error."""
        while not stop.is_set():
            with self.lock:
                if not self.busy:
                    self.lock.wait(timeout=0.5)
                    continue
            try:
                self.step_burst()
            except Exception as e:  # noqa: BLE001 - a failed step must end its streams, never hang them
                self.feed = None
                self.abort(f"generation failed: {type(e).__name__}: {e}", waiting=False)
        self.abort("the server is shutting down")

    def abort(self, reason: str, waiting: bool = True) -> None:
        """End the active streams (and the waiting ones) with an error."""
        with self.lock:
            streams, self.active = list(self.active), []
            if waiting:
                streams, self.waiting = [*streams, *self.waiting], deque()
        for s in streams:
            _finish(s, reason)

    def step_burst(self) -> int:
        """Admit waiting streams, run steps up to the earliest chunk boundary (or a new arrival), deliver.
        Returns the steps run."""
        self._admit()
        if not self.active:
            return 0
        steps = self._run(min(min(s.until_boundary(self.chunk) for s in self.active), self.window))
        self._deliver()
        return steps

    def _admit(self) -> None:
        with self.lock:
            self.arrived = False
            keep = [s for s in self.active if s.t < s.n]
            rows = [self.active.index(s) for s in keep]
            while self.waiting and len(keep) < self.max_streams:
                keep.append(self.waiting.popleft())
                rows.append(-1)
            if keep == self.active and self.feed is not None:
                return
            self.active = keep
        if not keep:
            self.feed = None
            return
        B = max(len(keep), self.min_rows)
        rows += [-1] * (B - len(keep))
        speaker = None
        if self.cfg.global_:
            speaker = np.array([s.spec.request.speaker[0] for s in keep] + [0] * (B - len(keep)), dtype=np.int64)
        old = self.feed
        self.runner.regroup(rows, speaker)
        self.feed = np.array([old[r] if r >= 0 else self.first for r in rows], dtype=np.asarray(self.first).dtype)

    def _groups(self, B: int) -> list[tuple[tuple[str, float], np.ndarray]]:
        """Rows grouped by sampling settings; pad rows join the first group."""
        groups: dict[tuple[str, float], list[int]] = {}
        for j, s in enumerate(self.active):
            groups.setdefault(s.spec.settings, []).append(j)
        first = next(iter(groups))
        groups[first] += list(range(len(self.active), B))
        return [(k, np.array(v, dtype=np.intp)) for k, v in groups.items()]

    def _sampler(self, rows: int, settings: tuple[str, float]) -> Sampler:
        key = (rows, *settings)
        if key not in self._samplers:
            self._samplers[key] = Sampler(rows, self.cfg.quantization_channels, *settings)
        return self._samplers[key]

    def _run(self, steps: int) -> int:
        """`steps` steps of every row (fewer if a request arrives) → self.record (steps, B)."""
        B = len(self.feed)
        u = np.full((steps, B, 2) if self.mol else (steps, B, 1), 0.5)  # pad rows draw at 0.5
        for j, s in enumerate(self.active):
            if s.spec.request.method == "sample":
                u[:, j] = s.uniforms(steps, self.mol).reshape(steps, -1)
        cond = None
        if self.cfg.local:
            cond = np.zeros((steps, B, self.cfg.local_channels), dtype=np.float32)
            for j, s in enumerate(self.active):
                cond[:, j] = s.spec.request.cond[0, :, s.t:s.t + steps].T
        done = self._run_blocks(u[:, :, 0], cond) if self.native else 0
        if done == 0:
            done = self._run_steps(u, cond)
        return done

    def _run_blocks(self, u: np.ndarray, cond: np.ndarray | None) -> int:
        """The steps in blocks of the runner's `generate_block` (u (steps, B), cond (steps, B, C)) → steps
        run, or 0 when the runner has no such path (`self.native` turns off)."""
        steps, B = u.shape
        temperatures = np.zeros(B)  # 0: greedy (idle rows too)
        for j, s in enumerate(self.active):
            if s.spec.request.method == "sample":
                temperatures[j] = s.spec.request.temperature
        record = np.empty((steps, B), dtype=np.int64)
        feed, done = np.ascontiguousarray(self.feed, dtype=np.int64), 0
        while done < steps:
            k = min(self.block, steps - done)
            block_cond = None if cond is None else cond[done:done + k].transpose(1, 2, 0)  # (B, C, k)
            if not self.runner.generate_block(feed, record[done:done + k], u=np.ascontiguousarray(u[done:done + k]),
                                              temperature=temperatures, cond=block_cond):
                if done == 0:
                    self.native = False
                    if self.auto_rows:
                        self.min_rows = 2
                    return 0
                break
            feed, done = record[done + k - 1], done + k
            if self.arrived:
                break
        self.feed = np.array(feed, copy=True)
        self.record = record[:done]
        return done

    def _run_steps(self, u: np.ndarray, cond: np.ndarray | None) -> int:
        """The steps one `step` call per sample (u (steps, B, 1|2), cond (steps, B, C))."""
        runner = self.runner
        steps, B = u.shape[:2]
        draw = self._draw(u, B)
        record = np.empty((steps, B), dtype=self.dtype)
        feed, to_feed = self.feed, self.to_feed
        done = steps
        for i in range(steps):
            value = draw(runner.step(feed, None if cond is None else cond[i]), i)
            record[i] = value
            feed = value if to_feed is None else to_feed(value)
            if self.arrived:
                done = i + 1
                break
        self.feed = np.array(feed, copy=True)
        self.record = record[:done]
        return done

    def _draw(self, u: np.ndarray, B: int):
        """draw(step output (B, …), i) → the recorded values (B,) of step i."""
        groups = self._groups(B)
        if self.mol:
            lsm = self.cfg.log_scale_min

            def draw_mol(params, i):
                out = np.empty(B, dtype=np.float32)
                for (method, T), rows in groups:
                    out[rows] = mol_draw(params[rows], method, u[i, rows], lsm, T)
                return out
            return draw_mol
        if len(groups) == 1:  # every row alike: one sampler call per step, bound to the runner's buffer
            (settings, _), = groups
            return self._sampler(B, settings).bind(getattr(self.runner, "logits", None),
                                                   u if settings[0] == "sample" else None)
        samplers = [(self._sampler(len(rows), settings), rows) for settings, rows in groups]
        out = np.empty(B, dtype=np.int64)

        def draw_groups(logits, i):
            for sampler, rows in samplers:
                out[rows] = sampler(np.ascontiguousarray(logits[rows]), np.ascontiguousarray(u[i, rows]))
            return out
        return draw_groups

    def _deliver(self) -> None:
        record = self.record
        steps = len(record)
        for j, s in enumerate(self.active):
            s.pending.append(record[:, j].copy())
            s.t += steps
            ready = s.t - s.sent
            if ready < self.chunk and s.t < s.n:
                continue
            values = np.concatenate(s.pending) if len(s.pending) > 1 else s.pending[0]
            cut = 0
            try:
                while len(values) - cut >= self.chunk or (s.t == s.n and cut < len(values)):
                    piece = values[cut:cut + self.chunk]
                    s.sink.chunk(s.sent, piece)
                    s.sent += len(piece)
                    cut += len(piece)
                cancelled = s.t < s.n and s.sink.cancelled()
            except Exception as e:  # noqa: BLE001 - one stream's broken sink must not end the others
                s.t = s.n  # dropped at the next admission
                _finish(s, f"sending failed: {type(e).__name__}: {e}")
                continue
            s.pending = [values[cut:]] if cut < len(values) else []
            if s.t >= s.n:
                _finish(s, None)
            elif cancelled:
                s.t = s.n
                _finish(s, "cancelled by the client")


def _finish(stream: _Stream, error: str | None) -> None:
    """End a stream; a sink that cannot even be told is past helping."""
    try:
        stream.sink.finish(error)
    except Exception:  # noqa: BLE001 - nothing is left to tell
        pass
