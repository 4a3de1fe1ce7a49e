"""The backend registry and the runners' host-side input preparation (no GPU needed).

- One registry: unknown names, options a backend does not take and an fp16 reference are one clear error.
- The TensorRT step runner feeds the step input in the manifest's dtype: a scalar-input model's float
  `sample` must reach the engine as float32, not be cast to int64 (which turned 0.37 into 0). The runner's
  real `step` runs here with its CUDA parts replaced by CPU stand-ins.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch

from reference_model import WaveNet, WaveNetConfig, save_checkpoint
from wn_export.backends import REGISTRY, open_step
from wn_export.backends.base import step_feeds
from wn_export.backends.tensorrt.runner import TrtStepRunner
from wn_export.contract import read_manifest
from wn_export.errors import BackendError, InputError
from wn_export.export.pipeline import export_directory

SMALL = dict(quantization_channels=16, residual_channels=4, gate_channels=6, skip_channels=5, kernel_size=2,
             layers=3, stacks=1)
CONFIGS = {"token": WaveNetConfig(**SMALL),
           "scalar": WaveNetConfig(**SMALL, input_kind="scalar", local_channels=2, hop_size=2)}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    out = {}
    for name, cfg in CONFIGS.items():
        root = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        save_checkpoint(WaveNet(cfg).eval(), root / "m.safetensors")
        export_directory(root / "d", root / "m.safetensors")
        out[name] = read_manifest(root / "d")
    return out


def test_registry_refuses_what_it_does_not_know(manifests):
    m = manifests["token"]
    assert list(REGISTRY) == ["onnxruntime", "torch", "tensorrt", "triton"]
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        open_step(m, "cuda")
    with pytest.raises(InputError, match="torch backend does not take threads"):
        open_step(m, "torch", threads=2)
    with pytest.raises(InputError, match="float64 reference: it has no fp16 variant"):
        open_step(m, "torch", "step.fp16")
    with pytest.raises(Exception, match="no TensorRT engine for 'step'"):
        open_step(m, "tensorrt")
    runner = open_step(m, "onnxruntime", threads=None, fused=False)  # None means the default
    assert runner.name == "onnxruntime" and runner.graph.name == "step"
    assert open_step(m, "torch").model.cfg == m.config


@pytest.mark.parametrize("name, value, dtype", [("token", [3, 7], np.int64), ("scalar", [0.37, -0.5], np.float32)])
def test_step_feeds_follow_the_manifest(manifests, name, value, dtype):
    g = manifests[name].graph("step")
    feeds = step_feeds(g, 2, np.asarray(value), None if name == "token" else np.ones((2, 2)))
    assert feeds[g.feed.name].dtype == dtype and np.allclose(feeds[g.feed.name], value)
    if name == "scalar":
        assert feeds["cond"].dtype == np.float32 and feeds["cond"].shape == (2, 2)
        with pytest.raises(InputError, match="per-sample conditioning"):
            step_feeds(g, 2, np.asarray(value))


def _cpu_trt_runner(manifest, batch: int) -> TrtStepRunner:
    """A TrtStepRunner whose engine, stream and CUDA calls are CPU stand-ins; its `step` is the real one."""
    runner = TrtStepRunner.__new__(TrtStepRunner)
    g = manifest.graph("step")
    runner.graph, runner.use_graph, runner.steps, runner.pairs, runner.rings = g, False, 0, [], []
    fake_cuda = types.SimpleNamespace(stream=lambda _s: contextlib.nullcontext())
    runner.torch = types.SimpleNamespace(cuda=fake_cuda, from_numpy=torch.from_numpy)
    runner.stream = types.SimpleNamespace(synchronize=lambda: None, cuda_stream=0)
    runner.context = types.SimpleNamespace(execute_async_v3=lambda _s: True, set_tensor_address=lambda *a: None)
    dtype = getattr(torch, g.feed.dtype)
    runner.token, runner.token_host = torch.zeros(batch, dtype=dtype), torch.zeros(batch, dtype=dtype)
    runner.cond = torch.zeros(batch, g.input("cond").shape[1]) if g.input("cond") is not None else None
    runner.logits_dev = torch.zeros(batch, g.distribution.shape[1])
    runner.logits = torch.zeros_like(runner.logits_dev)
    return runner


def test_tensorrt_step_feeds_a_scalar_sample_as_float(manifests):
    runner = _cpu_trt_runner(manifests["scalar"], 2)
    runner.step(np.array([0.37, -0.5], dtype=np.float32), np.full((2, 2), 0.25, np.float32))
    assert runner.token.dtype == torch.float32
    assert torch.allclose(runner.token, torch.tensor([0.37, -0.5])) and torch.all(runner.cond == 0.25)
    tokens = _cpu_trt_runner(manifests["token"], 2)
    tokens.step(np.array([3, 7]))
    assert tokens.token.dtype == torch.int64 and tokens.token.tolist() == [3, 7]
