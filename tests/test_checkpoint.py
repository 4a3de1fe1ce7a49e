"""Config validation and JSON round trip; checkpoint round trip and rejection of bad files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from reference_model import CheckpointError, ConfigError, WaveNetConfig, load_checkpoint, save_checkpoint
from tests.conftest import CONFIGS, random_model


def test_config_json_round_trip(config):
    again = WaveNetConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(again.to_json()) == json.loads(config.to_json())


def test_dilations_and_receptive_field():
    cfg = WaveNetConfig(layers=6, stacks=2, kernel_size=3)
    assert cfg.layer_dilations == (1, 2, 4, 1, 2, 4)
    assert cfg.receptive_field == 2 * 14 + 1
    assert WaveNetConfig.from_dict({"dilations": [1, 3, 9]}).layers == 3


@pytest.mark.parametrize("fields, message", [
    ({"gate_channels": 7}, "gate_channels must be even"),
    ({"kernel_size": 1}, "kernel_size must be an integer >= 2"),
    ({"layers": 10, "stacks": 3}, "multiple of stacks"),
    ({"layers": 2, "dilations": [1, 2, 4]}, "dilations lists 3 layers"),
    ({"speakers": 4}, "speakers and speaker_channels"),
    ({"upsample": "cubic"}, "upsample must be one of"),
    ({"residual_channels": 0}, "residual_channels must be an integer >= 1"),
    ({"bias": "yes"}, "bias must be true or false"),
])
def test_invalid_configs(fields, message):
    with pytest.raises(ConfigError, match=message):
        WaveNetConfig.from_dict(fields)


def test_unknown_field_and_bad_json():
    with pytest.raises(ConfigError, match="unknown config field.*residual_chanels"):
        WaveNetConfig.from_dict({"residual_chanels": 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        WaveNetConfig.from_json("{nope")


def test_checkpoint_round_trip(tmp_path, config):
    model = random_model(config)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.cfg == config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def _save_raw(path, tensors, config_json, fmt="wn-export/checkpoint/1"):
    save_file(tensors, str(path), metadata={"format": fmt, "config": config_json})


def test_checkpoint_errors(tmp_path):
    cfg = CONFIGS["k2"]
    good = {k: v.contiguous() for k, v in random_model(cfg).state_dict().items()}
    p = tmp_path / "x.safetensors"

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")

    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage-not-json")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(p)

    save_checkpoint(random_model(cfg), p)
    p.write_bytes(p.read_bytes()[:-100])  # truncated payload
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(p)

    _save_raw(p, good, cfg.to_json(), fmt="other")
    with pytest.raises(CheckpointError, match="not a wn-export checkpoint"):
        load_checkpoint(p)

    missing = dict(good)
    missing.pop("head.3.weight")
    _save_raw(p, missing, cfg.to_json())
    with pytest.raises(CheckpointError, match="missing tensors: head.3.weight"):
        load_checkpoint(p)

    _save_raw(p, good | {"extra.weight": torch.zeros(2)}, cfg.to_json())
    with pytest.raises(CheckpointError, match="unexpected tensors: extra.weight"):
        load_checkpoint(p)

    other = WaveNetConfig(**{**cfg.to_dict(), "residual_channels": 8})
    _save_raw(p, good, other.to_json())
    with pytest.raises(CheckpointError, match="embed.weight has shape \\(32, 6\\), the config needs \\(32, 8\\)"):
        load_checkpoint(p)

    _save_raw(p, good, '{"gate_channels": 5}')
    with pytest.raises(CheckpointError, match="stored config is invalid"):
        load_checkpoint(p)

    nan = dict(good)
    nan["embed.weight"] = torch.full_like(good["embed.weight"], float("nan"))
    _save_raw(p, nan, cfg.to_json())
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(p)
