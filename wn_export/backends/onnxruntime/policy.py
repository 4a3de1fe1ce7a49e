"""Which threads the native kernels use, per batch size (plugins/ort/kernels.h `Split`).

- `pipeline`: the calling thread runs the layer chain, the helper thread the skip projections, and the head's
  columns are split; both threads stream different weights of every step (small batches: weight-bound).
- `rows`: the streams are split in two halves, each computed start to end by one thread (large batches:
  compute-bound; no synchronisation inside a step or, in the native loop, inside a block).
- `alone`: the calling thread only.
"""

from __future__ import annotations

import ctypes

PIPELINE_MAX = 16  # up to this batch: pipeline; above: rows


def split(batch: int) -> str:
    return "pipeline" if batch <= PIPELINE_MAX else "rows"


_applied: set[str] = set()


def apply(lib: str) -> None:
    """Set the ops' policy in the loaded library (once per library)."""
    if lib in _applied:
        return
    fn = ctypes.CDLL(lib).wn_ort_ops_set_policy
    fn.argtypes = [ctypes.c_int64, ctypes.c_int64]
    fn(PIPELINE_MAX, PIPELINE_MAX + 1)
    _applied.add(lib)
