"""Shared pieces of the importers: reading a PyTorch checkpoint, folding weight normalisation."""

from __future__ import annotations

from pathlib import Path

import torch

from reference_model.errors import CheckpointError


class ImportError_(CheckpointError):  # noqa: N801 - `ImportError` is a builtin
    """A foreign checkpoint uses a setting we cannot map onto the reference model."""


def load_torch_state_dict(path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict, or a training checkpoint dict holding one under `state_dict` /
    `model` / `model_state_dict`; `module.` prefixes (DataParallel) are stripped. Loaded with
    `weights_only=True`: no code in the file runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle and zip errors have many types
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint (torch.load with weights_only: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(data.get(key), dict) and any(isinstance(v, torch.Tensor) for v in data[key].values()):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds neither a state dict nor a training checkpoint with a "
                              "'state_dict' entry")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return {k: v.detach() for k, v in data.items()}


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [d for d in range(v.dim()) if d != dim]
    return v.pow(2).sum(dim=dims, keepdim=True).sqrt()


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight normalisation's `X.weight_g` / `X.weight_v` (torch.nn.utils.weight_norm) and
    `X.parametrizations.weight.original0` / `original1` (the parametrization API) with
    `X.weight = g · v / ‖v‖`, the norm over every axis but the one g keeps (float64, then float32)."""
    out = dict(state)
    pairs = []
    for k in state:
        if k.endswith(".weight_g"):
            pairs.append((k[:-len(".weight_g")], k, k[:-1] + "v"))
        elif k.endswith(".parametrizations.weight.original0"):
            base = k[:-len(".parametrizations.weight.original0")]
            pairs.append((base, k, k[:-1] + "1"))
    for base, gk, vk in pairs:
        if vk not in state:
            raise ImportError_(f"weight normalisation of {base}: {gk} has no matching {vk}")
        g, v = state[gk].double(), state[vk].double()
        if g.dim() != v.dim():
            raise ImportError_(f"weight normalisation of {base}: g {tuple(g.shape)} and v {tuple(v.shape)} "
                               "have different ranks")
        kept = [d for d in range(v.dim()) if g.shape[d] != 1]
        if len(kept) > 1 or any(g.shape[d] not in (1, v.shape[d]) for d in range(v.dim())):
            raise ImportError_(f"weight normalisation of {base}: g {tuple(g.shape)} does not fit v {tuple(v.shape)}")
        # g keeps one axis (weight_norm's dim), or none: dim=None, or an axis of size 1 (the same norm)
        norm = _norm_except(v, kept[0]) if kept else v.pow(2).sum().sqrt()
        out[base + ".weight"] = (g * v / norm).to(state[vk].dtype)
        del out[gk], out[vk]
    return out
