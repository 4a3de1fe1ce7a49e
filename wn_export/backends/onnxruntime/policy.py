"""How the native kernels share a step between the calling thread and the helper thread, chosen per machine.

The ways (`Split` in plugins/ort/kernels.h):
- `pipeline`: the calling thread runs the layer chain, the helper thread the skip projections (in layer
  order) and half the head's columns: both threads stream different weights of every step, with one
  hand-over per layer (small batches, where a step is bound by streaming the weights);
- `rows`: the streams are split in two halves, each computed start to end by one thread, one hand-over per
  step (large batches, where a step is bound by arithmetic);
- `alone`: the calling thread only (one core, or when the other core is taken).

Which one is fastest depends on the machine (cores, cache sizes, vector units, what else runs) and on the
model's size, so it is measured, not assumed: the first time the native loop runs a batch size of a
power-of-two bucket (1, 2, 4, … 256+), `Calibration.split` times the three ways on scratch state (five
interleaved blocks of ~4 ms each, the best kept: other processes only add time; the calling thread alone has to
win by 5%) and caches the winner per machine and model shape in
`$WN_EXPORT_CACHE/policy/<key>.json` (see `native.cache_dir`). `WN_EXPORT_SPLIT=alone|pipeline|rows` forces a
way; `WN_EXPORT_RECALIBRATE=1` measures again. With one usable core the helper is off. The helper also keeps
its own run-time guard: a step that waits for it more than 0.2 ms makes the caller work alone for a while
(plugins/ort/README.md).

The ONNX Runtime ops (per-step path: teacher forcing, `step()`) use a fixed rule set by `apply`: the
pipeline up to batch 16, the batch split from 17 on.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

SPLITS = ("alone", "pipeline", "rows")
OPS_PIPELINE_MAX = 16
TWO_THREAD_MARGIN = 0.05
MAX_BUCKET = 256


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def bucket(batch: int) -> int:
    return min(MAX_BUCKET, 1 << max(0, int(batch) - 1).bit_length())


def machine_key() -> str:
    """CPU model, its vector/cache facts and the usable cores (what the choice depends on)."""
    from wn_export.backends.onnxruntime.machine import describe

    m = describe()
    return f"{m['cpu']}|{','.join(m['isa'])}|L2 {m['l2']}|{cores()} cores|{platform.machine()}"


class Calibration:
    """The measured split per batch bucket for one loop plan on this machine (see the module doc)."""

    def __init__(self, plan, lib: str):
        self.plan = plan
        self.table: dict[str, str] = {}
        self.forced = os.environ.get("WN_EXPORT_SPLIT")
        self._helper = ctypes.CDLL(lib).wn_ort_ops_set_helper
        if cores() < 2:
            self._helper(0)
        self.path = None
        if self.forced is None and cores() >= 2:
            import hashlib

            from wn_export.backends.onnxruntime.native import cache_dir

            d = plan.dims
            shape = f"{d['L']}x{d['R']}x{d['G']}x{d['S']}x{d['H']}x{d['Q']}x{d['kernel']}x{d['cond_channels']}|" \
                    f"{'w16' if plan.half else 'fp32'}|{Path(lib).parent.name}"
            key = hashlib.sha256(f"{machine_key()}|{shape}".encode()).hexdigest()[:16]
            self.path = cache_dir().parent / "policy" / f"{key}.json"
            if os.environ.get("WN_EXPORT_RECALIBRATE") != "1":
                try:
                    self.table = {k: v for k, v in json.loads(self.path.read_text()).get("splits", {}).items()
                                  if v in SPLITS}
                except (OSError, ValueError, AttributeError):
                    self.table = {}

    def split(self, batch: int) -> str:
        if self.forced in SPLITS:
            return self.forced
        if cores() < 2:
            return "alone"
        if batch == 1:  # nothing to split by rows
            key = "1"
            if key not in self.table:
                self._store(key, self._measure(1, ("alone", "pipeline")))
            return self.table[key]
        key = str(bucket(batch))
        if key not in self.table:
            self._store(key, self._measure(int(key), SPLITS))
        return self.table[key]

    def _measure(self, batch: int, ways) -> str:
        """Times each way on scratch state: interleaved rounds, ~4 ms blocks, median → the fastest."""
        plan, d = self.plan, self.plan.dims
        rng = np.random.default_rng(0)
        state = np.zeros((batch, d["state_rows"], d["R"]), np.float32)
        first = np.full(batch, d["Q"] // 2, np.int64)
        logits = np.zeros((batch, d["Q"]), np.float32)
        cond = np.zeros((batch, d["cond_channels"], 1), np.float32) if d["cond_channels"] else None
        gate_base = plan.gate_base(batch, np.zeros(batch, np.int64) if plan.arrays["speaker_gate"] is not None else None)

        def block(way: str, steps: int) -> float:
            out = np.empty((steps, batch), np.int64)
            u = rng.random((steps, batch))
            c = None if cond is None else np.broadcast_to(cond, (batch, d["cond_channels"], steps))
            t0 = time.perf_counter()
            plan.run(state=state, position=0, first=first, out=out, gate_base=gate_base, u=u, temperature=1.0, cond=c,
                     logits=logits, split=way)
            return (time.perf_counter() - t0) / steps

        per_step = max(block("alone", 2), 1e-7)
        steps = max(2, min(4096, int(4e-3 / per_step)))
        times: dict[str, list[float]] = {w: [] for w in ways}
        for way in ways:  # warm-up (the helper thread starts, caches fill)
            block(way, steps)
        for _ in range(5):
            for way in ways:
                times[way].append(block(way, steps))
        # the best round of each: other processes only ever add time, so the minimum is what the way can do;
        # the calling thread alone must win by TWO_THREAD_MARGIN (a busy second core during the measurement
        # makes the two-thread ways look slower than they are; the helper's own guard covers a busy core later)
        best = {w: min(t) for w, t in times.items()}
        two = min((w for w in ways if w != "alone"), key=best.get)
        return "alone" if best["alone"] * (1 + TWO_THREAD_MARGIN) < best[two] else two

    def _store(self, key: str, way: str) -> None:
        self.table[key] = way
        if self.path is None:
            return
        from reference_model.atomic import atomic_write_bytes

        text = json.dumps({"machine": machine_key(), "splits": self.table}, indent=1)
        try:
            atomic_write_bytes(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError:
            pass  # an unwritable cache only costs a new measurement next time


_applied: set[str] = set()


def apply(lib: str) -> None:
    """The ops' fixed rule (module doc) in the loaded library, once per library; one core: no helper."""
    if lib in _applied:
        return
    native = ctypes.CDLL(lib)
    native.wn_ort_ops_set_policy.argtypes = [ctypes.c_int64, ctypes.c_int64]
    native.wn_ort_ops_set_policy(OPS_PIPELINE_MAX, OPS_PIPELINE_MAX + 1)
    if cores() < 2:
        native.wn_ort_ops_set_helper(0)
    _applied.add(lib)
