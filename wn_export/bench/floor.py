"""The machine's weight-streaming floor, measured in the bench's own run (plugins/ort/floor.cc).

A generation step streams every weight of the layer chain and the head once (at batch B, each weight is used
B times). The floor of a step is one pass of B rows over a packed matrix holding as many weights as the model
streams per step, with the native kernels at their best shape (K = 256 rows, no per-layer hand-over): what a
step would cost if it were nothing but its weight arithmetic. Measured for float32 and float16 weights, on one
thread and split in two between the caller and the helper thread; floor samples/s = B / time per pass.

A pass hands work over between the two threads once; a step does so dozens of times (the skip projections follow
the layer chain, the head's halves exchange their inputs). `round_trip_ns` measures what one hand-over costs at the
moment, printed beside the floor: on a virtual machine it can move by 4x within minutes (the hypervisor placing the
two CPUs on cores that share a cache, or not) while the floor itself barely moves.
"""

from __future__ import annotations

import ctypes

import numpy as np

ROWS = 256


def _native(name: str, restype, argtypes):
    """Function `name` of the native library (built on first use), typed."""
    from wn_export.backends.onnxruntime.native import library

    fn = getattr(ctypes.CDLL(str(library())), name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def pass_times(weights: int, batch: int, half: bool, threads: int, seconds: float = 0.05) -> np.ndarray:
    """Seconds per pass (array) of `batch` rows over `weights` weights (float16 if `half`), on 1 or 2 threads."""
    fn = _native("wn_weight_floor", ctypes.c_int, [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                                   ctypes.c_int, ctypes.c_int64, ctypes.c_void_p])
    cols = max(32, -(-weights // ROWS) // 32 * 32)  # whole pairs of panels: even column halves
    probe = np.zeros(3, np.int64)
    if fn(ROWS, cols, batch, int(half), threads, 3, probe.ctypes.data):
        raise ValueError("wn_weight_floor refused its arguments")
    passes = int(min(2000, max(5, seconds / max(np.median(probe) * 1e-9, 1e-7))))
    ns = np.zeros(passes, np.int64)
    fn(ROWS, cols, batch, int(half), threads, passes, ns.ctypes.data)
    return ns * 1e-9


def round_trip_ns(count: int = 2000, budget_s: float = 0.05) -> float:
    """Median nanoseconds of one cache-line round trip between this thread and a second one (wn_round_trip)."""
    fn = _native("wn_round_trip", ctypes.c_int64, [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p])
    ns = np.zeros(count, np.int64)
    done = fn(count, int(budget_s * 1e9), ns.ctypes.data)
    if done < 1:
        raise ValueError("wn_round_trip refused its arguments")
    return float(np.median(ns[:done]))
