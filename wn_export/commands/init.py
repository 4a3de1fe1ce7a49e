"""Checkpoint creation for users trying configurations (`wn-export init`)."""

from __future__ import annotations

from pathlib import Path

import torch

from reference_model import WaveNet, WaveNetConfig, save_checkpoint


def init_checkpoint(config_path: Path, output: Path, seed: int) -> WaveNet:
    """Randomly initialise a WaveNet from a config JSON file and save it as a checkpoint."""
    cfg = WaveNetConfig.load(config_path)
    torch.manual_seed(seed)
    model = WaveNet(cfg).eval()
    save_checkpoint(model, output)
    return model
