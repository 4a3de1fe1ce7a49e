"""Resource limits: sizes are checked against them before anything is allocated or written.

Each limit is generous for real WaveNets (the 30-layer target has 3.1 M parameters, a 3,070-sample
receptive field and 786 KB of step state per stream) and stops a typo or a hostile file from taking the
machine down. A user who means it raises a limit with its environment variable:

| limit | default | bounds |
|---|---|---|
| `WN_EXPORT_MAX_LAYERS` | 1,024 | residual layers of a config (graph size and export time grow with them) |
| `WN_EXPORT_MAX_PARAMETERS` | 268,435,456 (1 GiB of float32) | parameters of a config |
| `WN_EXPORT_MAX_RECEPTIVE_FIELD` | 1,048,576 samples | receptive field of a config |
| `WN_EXPORT_MAX_STATE_BYTES` | 268,435,456 | one stream's step state (float32) |
| `WN_EXPORT_MAX_HOP_SIZE` | 65,536 samples | samples per conditioning frame |
| `WN_EXPORT_MAX_BATCH` | 4,096 | streams generated or benchmarked together, TensorRT profile batch |
| `WN_EXPORT_MAX_MEMORY_BYTES` | 8,589,934,592 (8 GiB) | host arrays of one run (batch × samples × bytes per sample) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import LimitError


@dataclass(frozen=True)
class Limit:
    env: str
    default: int
    unit: str  # "" or " bytes", " samples" … appended to numbers in messages


LIMITS = {
    "layers": Limit("WN_EXPORT_MAX_LAYERS", 1024, ""),
    "parameters": Limit("WN_EXPORT_MAX_PARAMETERS", 1 << 28, ""),
    "receptive_field": Limit("WN_EXPORT_MAX_RECEPTIVE_FIELD", 1 << 20, " samples"),
    "state_bytes": Limit("WN_EXPORT_MAX_STATE_BYTES", 1 << 28, " bytes"),
    "hop_size": Limit("WN_EXPORT_MAX_HOP_SIZE", 1 << 16, " samples"),
    "batch": Limit("WN_EXPORT_MAX_BATCH", 4096, ""),
    "memory_bytes": Limit("WN_EXPORT_MAX_MEMORY_BYTES", 8 << 30, " bytes"),
}


def limit(name: str) -> int:
    """The limit's value: its environment variable when set, else the default."""
    spec = LIMITS[name]
    text = os.environ.get(spec.env)
    if text is None or not text.strip():
        return spec.default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise LimitError(f"{spec.env}={text!r:.40} is not a positive integer")
    return value


def exceeded(name: str, value: int, what: str) -> str | None:
    """A message when `value` is above the limit `name` (None when within it)."""
    bound = limit(name)
    if value <= bound:
        return None
    spec = LIMITS[name]
    shown = f"{value:,}" if value.bit_length() <= 64 else f"about 2^{value.bit_length() - 1}"
    return (f"{what} is {shown}{spec.unit}, above the limit of {bound:,}{spec.unit} "
            f"(set {spec.env} to raise it if you mean it)")


def check(name: str, value: int, what: str) -> None:
    """Raise `LimitError` when `value` is above the limit `name`."""
    problem = exceeded(name, value, what)
    if problem:
        raise LimitError(problem)


__all__ = ["LIMITS", "Limit", "limit", "exceeded", "check"]
