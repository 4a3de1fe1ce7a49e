"""Shared fixtures: small model configs, checkpoints and exports; the `gpu` marker's skip rule."""

from __future__ import annotations

import os

# Triton builds its kernels for the interpreter or for a GPU when triton is first imported (torch and keras
# may import it early): the CPU proof of the fused step kernel needs the interpreter from the start. Tests
# that need the GPU form run in subprocesses without it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from reference_model import WaveNet, WaveNetConfig, save_checkpoint  # noqa: E402

# Small configs covering the options: kernel 2 and 3, unequal channels, conditioning, scaling.
CONFIGS = {
    "k2": WaveNetConfig(quantization_channels=32, residual_channels=6, gate_channels=10, skip_channels=7,
                        kernel_size=2, layers=6, stacks=2),
    "k3-odd": WaveNetConfig(quantization_channels=17, residual_channels=5, gate_channels=6, skip_channels=9,
                            kernel_size=3, layers=5, stacks=1),
    "conditioned": WaveNetConfig(quantization_channels=24, residual_channels=7, gate_channels=12, skip_channels=5,
                                 kernel_size=3, layers=4, stacks=2, local_channels=3, hop_size=4,
                                 upsample="linear", speakers=3, speaker_channels=2, scale_residual=True,
                                 scale_skip=True),
    "explicit-dilations": WaveNetConfig(quantization_channels=16, residual_channels=4, gate_channels=8,
                                        skip_channels=4, kernel_size=2, layers=4, dilations=(1, 3, 9, 2),
                                        bias=False, local_channels=2, hop_size=3, upsample="repeat"),
}


def random_model(cfg: WaveNetConfig, seed: int = 0, scale: float = 0.4) -> WaveNet:
    """A model with weights large enough that every layer matters (default init is too quiet)."""
    torch.manual_seed(seed)
    model = WaveNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model.eval()


@torch.no_grad()
def assert_exact_receptive_field(model: WaveNet, tokens, cond=None, speaker=None) -> None:
    """Output t of `model` changes with input t − (rf − 1) and not with input t − rf (rf = the config's
    receptive field); tokens (1, ≥ rf + 1), the last output is checked."""
    cfg = model.cfg
    rf, t = cfg.receptive_field, tokens.shape[1] - 1
    for lag, should_change in ((rf - 1, True), (rf, False)):
        changed = tokens.clone()
        changed[0, t - lag] = (-0.5 - changed[0, t - lag] if cfg.scalar_input
                               else (changed[0, t - lag] + 1) % cfg.quantization_channels)
        delta = (model(tokens, cond, speaker)[0, t] - model(changed, cond, speaker)[0, t]).abs().max()
        assert (delta > 0) == should_change, (lag, float(delta))


@pytest.fixture(params=sorted(CONFIGS))
def config(request) -> WaveNetConfig:
    return CONFIGS[request.param]


@pytest.fixture
def checkpoint_factory(tmp_path):
    def make(cfg: WaveNetConfig, seed: int = 0, name: str = "model.safetensors"):
        path = tmp_path / name
        save_checkpoint(random_model(cfg, seed), path)
        return path

    return make


# The native generation loop's models (tests/test_native_loop.py, tests/test_native_plan.py).
LOOP_MODELS = ("k2", "k3-odd", "conditioned", "explicit-dilations")


@pytest.fixture(scope="session")
def loop_exports(tmp_path_factory):
    """Ring-layout exports of LOOP_MODELS with their w16 graphs (k2 with its FP16 ones too), each checkpoint
    beside its export directory, and k2 in the full layout ("k2-full"). Read-only: copy one to change it."""
    from wn_export.export.pipeline import export_directory

    root = tmp_path_factory.mktemp("loop_exports")
    out = {}
    for name in LOOP_MODELS:
        save_checkpoint(random_model(CONFIGS[name], seed=9), root / f"{name}.safetensors")
        out[name] = root / name
        export_directory(out[name], root / f"{name}.safetensors", w16=True, fp16=name == "k2")
    export_directory(root / "k2-full", root / "k2.safetensors", layout="full")
    out["k2-full"] = root / "k2-full"
    return out


def export_with_plan_in_plans(source, dest):
    """A copy of export `source` at `dest` whose manifest keeps its step plan in the sub-folder plans/ →
    (directory, manifest data as written, the plan's record in it)."""
    import json
    import shutil
    from pathlib import Path

    d = Path(shutil.copytree(source, dest))
    data = json.loads((d / "manifest.json").read_text())
    (d / "plans").mkdir()
    rec = data["native_loops"]["step"]
    (d / rec["file"]).rename(d / "plans" / rec["file"])
    rec["file"] = f"plans/{rec['file']}"
    (d / "manifest.json").write_text(json.dumps(data))
    return d, data, rec


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
