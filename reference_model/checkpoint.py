"""Checkpoints: one `.safetensors` file, float32 weights, the config JSON in its metadata.

Metadata keys: `format` = "wn-export/checkpoint/1", `config` = `WaveNetConfig.to_json()`.
Tensor names are the `WaveNet` state-dict names. Loading rejects missing, extra or mis-shaped
tensors, corrupt files and values that are not finite (in the file, or once cast to float32) with one
`CheckpointError`; saving refuses values that are not finite in float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_write_bytes
from .config import WaveNetConfig
from .errors import CheckpointError, ConfigError
from .model import WaveNet

FORMAT = "wn-export/checkpoint/1"


def save_checkpoint(model: WaveNet, path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"cannot save {path}: {_names(bad)} not finite in float32 (NaN, or a value "
                              "beyond float32's ±3.4e38)")
    meta = {"format": FORMAT, "config": model.cfg.to_json(indent=None)}
    atomic_write_bytes(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path, dtype: torch.dtype = torch.float32) -> WaveNet:
    """Load a checkpoint into an eval-mode `WaveNet` of `dtype`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} " + ("is not a regular file" if path.exists() else "does not exist"))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt headers and payloads
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path} is not a wn-export checkpoint (metadata format="
                              f"{meta.get('format')!r}; expected {FORMAT!r} with a config)")
    try:
        cfg = WaveNetConfig.from_json(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None
    model = WaveNet(cfg)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {_names(extra)}")
    for k in sorted(set(expected) & set(tensors)):
        if tuple(tensors[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k} has shape {tuple(tensors[k].shape)}, the config needs "
                            f"{tuple(expected[k].shape)}")
        elif not tensors[k].is_floating_point():
            problems.append(f"{k} has dtype {tensors[k].dtype}, expected a float tensor")
        elif not torch.isfinite(tensors[k]).all():
            problems.append(f"{k} contains NaN or Inf")
    if problems:
        raise CheckpointError(f"{path} does not match its config: " + "; ".join(problems))
    model.load_state_dict(tensors)  # into float32 parameters: a float64 1e300 becomes inf here
    model = model.to(dtype).eval()
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {_names(bad)} not finite once cast to {str(dtype).removeprefix('torch.')} "
                              "(a value beyond float32's ±3.4e38?)")
    return model


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
