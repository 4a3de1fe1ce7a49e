"""The fused Triton step kernel: its numerics on CPU under Triton's interpreter against the float64
reference, its generation contract, its errors, its ahead-of-time PTX, and (gpu) the same kernel on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel module is imported: run it on CPU tensors

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from reference_model import WaveNetConfig, save_checkpoint  # noqa: E402
from reference_model.sampling import uniforms  # noqa: E402
from tests.conftest import CONFIGS, random_model  # noqa: E402
from wn_export.backends.torch_ref import TorchStepRunner  # noqa: E402
from wn_export.backends.triton.check import logit_check, loop_tokens, reference_logits  # noqa: E402
from wn_export.backends.triton.runner import TritonStepRunner, load_kernel  # noqa: E402
from wn_export.contract.specs import ring_offsets  # noqa: E402
from wn_export.errors import BackendError, InputError  # noqa: E402
from wn_export.generation.loop import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# small models; each is run for more samples than its receptive field, so every ring wraps around
CASES = {
    # tiles smaller than the layer: 3 gate tiles of 2 rows (the last one masked), 2 head tiles of 4
    "k2-tiles": (WaveNetConfig(quantization_channels=32, residual_channels=6, gate_channels=10, skip_channels=7,
                               kernel_size=2, layers=6, stacks=2), dict(block_h=2, block_o=4)),
    # kernel 3, local and global conditioning, residual and skip scaling
    "k3-conditioned": (CONFIGS["conditioned"], {}),
    # the r9y9 variants: separate filter/gate tensors, no last residual 1×1, legacy skip scaling, mixed biases
    "k3-variants": (WaveNetConfig(quantization_channels=20, residual_channels=5, gate_channels=6, skip_channels=9,
                                  kernel_size=3, layers=3, dilations=(1, 3, 2), bias=False, dilated_bias=True,
                                  separate_gate=True, last_residual=False, legacy_skip_scale=True,
                                  local_channels=2, hop_size=2, upsample="repeat"), {}),
}


def _inputs(cfg: WaveNetConfig, batch: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.quantization_channels, (batch, steps))
    cond = rng.standard_normal((batch, cfg.local_channels, steps)).astype(np.float32) if cfg.local else None
    speaker = rng.integers(0, cfg.speakers, batch) if cfg.global_ else None
    return tokens, cond, speaker


def _ring_as_reference_state(runner: TritonStepRunner, position: int) -> list[np.ndarray]:
    """The kernel's packed ring state → per layer (B, R, (K−1)·d) oldest first, like the reference's."""
    state = runner.state.to(torch.float64).numpy()  # (B, N, R)
    out = []
    for offset, n in ring_offsets(runner.cfg):
        rows = offset + (position + np.arange(n)) % n  # oldest first
        out.append(state[:, rows, :].transpose(0, 2, 1))
    return out


def test_interpreter_is_active():
    assert load_kernel()[1], "the kernel module was imported before TRITON_INTERPRET=1 was set"


@pytest.mark.parametrize("case,precision,batch", [("k2-tiles", "fp32", 2), ("k3-conditioned", "fp32", 3),
                                                  ("k3-variants", "fp32", 2), ("k2-tiles", "fp16", 2),
                                                  ("k3-conditioned", "fp16", 2)])
def test_step_matches_float64_reference(case, precision, batch):
    cfg, blocks = CASES[case]
    steps = cfg.receptive_field + 8
    model = random_model(cfg)
    tokens, cond, speaker = _inputs(cfg, batch, steps)
    runner = TritonStepRunner.from_model(model, precision, **blocks)
    logits = runner.teacher_force(tokens, cond, speaker)
    ref = reference_logits(model.double(), tokens, cond, speaker)
    check = logit_check(logits, ref, precision)
    assert not check["failures"], check
    assert check["max_abs"] > 0  # the kernel computes, it does not copy the reference
    # the ring holds every layer's last (K−1)·d inputs in the step graph's layout
    with TorchStepRunner(model.double()) as reference:
        reference.teacher_force(tokens, cond, speaker)
        expected = [s.numpy() for s in reference.state]
    atol = 1e-5 if precision == "fp32" else 5e-2
    for got, want in zip(_ring_as_reference_state(runner, steps), expected):
        np.testing.assert_allclose(got, want, atol=atol * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("case,method,temperature", [("k2-tiles", "sample", 1.0), ("k3-conditioned", "sample", 0.8),
                                                     ("k3-variants", "greedy", 1.0)])
def test_generated_tokens_equal_the_reference(case, method, temperature):
    """FP32: the runner with the host draw (wn_export.generate) and with the draw in the kernel, 16
    samples per launch, give the float64 reference's tokens for the same seed."""
    cfg = CASES[case][0]  # default tiles: the small ones are proven by the logits test
    n, batch = cfg.receptive_field + 12, 2
    model = random_model(cfg, seed=3)
    _, cond, speaker = _inputs(cfg, batch, n, seed=1)
    kw = dict(seed=7, method=method, temperature=temperature, cond=cond, speaker=speaker)
    with TorchStepRunner(model.double()) as reference:
        expected = generate(reference, n, batch, quantization_channels=cfg.quantization_channels, **kw)
    assert len(np.unique(expected)) > 3  # a real draw, not a constant stream
    runner = TritonStepRunner.from_model(model, "fp32", steps_per_launch=16)
    launches = _count_launches(runner)
    np.testing.assert_array_equal(generate(runner, n, batch, quantization_channels=cfg.quantization_channels,
                                           **kw), expected)
    assert launches == [16] * (n // 16) + [n % 16]  # the loop's block path: the draw in the kernel
    if method == "sample":
        np.testing.assert_array_equal(loop_tokens(runner, cfg, n, batch, block=False, **kw), expected)


def _count_launches(runner) -> list[int]:
    """The steps of each drawing launch of `runner` from now on (appended as they happen)."""
    launches, launch = [], runner._launch

    def counted(token, cond, steps, **kw):
        if kw.get("draw"):
            launches.append(steps)
        return launch(token, cond, steps, **kw)
    runner._launch = counted
    return launches


@pytest.mark.parametrize("seed", [4, 9])
def test_per_stream_temperatures_draw_each_streams_reference_tokens(seed):
    """generate_block with (B,) temperatures, 0 = greedy: stream j draws what stream j of a reference generation
    at its own temperature (or greedy) draws from the same uniforms."""
    cfg = CASES["k2-tiles"][0]
    n, temperatures = cfg.receptive_field + 5, np.array([0.0, 0.7, 1.0, 1.6])
    B = len(temperatures)
    model = random_model(cfg, seed=seed)
    with TorchStepRunner(model.double()) as reference:
        expected = np.stack([generate(reference, n, B, seed=seed, quantization_channels=cfg.quantization_channels,
                                      **(dict(method="greedy") if t == 0 else dict(temperature=t)))[j]
                             for j, t in enumerate(temperatures)])
    assert len({tuple(row) for row in expected}) == B  # the settings draw differently
    runner = TritonStepRunner.from_model(model, "fp32", steps_per_launch=7)
    runner.reset(B)
    out = np.empty((n, B), dtype=np.int64)
    step_ns = np.zeros(n, dtype=np.int64)
    assert runner.generate_block(np.full(B, cfg.quantization_channels // 2), out, uniforms(seed, n, B), temperatures,
                                 step_ns=step_ns)
    np.testing.assert_array_equal(out.T, expected)
    assert runner.position == n and (step_ns > 0).all()


def test_regroup_carries_rows_and_starts_new_ones():
    """Streams leave and join between blocks: a continuing row draws what it would have drawn, a new row
    what a fresh stream draws, the position carries."""
    cfg, _ = CASES["k3-conditioned"]
    model = random_model(cfg, seed=2)
    rng = np.random.default_rng(0)
    n1, n2, Q = 5, 4, cfg.quantization_channels
    cond = rng.standard_normal((3, cfg.local_channels, n1 + n2)).astype(np.float32)
    speaker = np.array([0, 2, 1])
    runner = TritonStepRunner.from_model(model, "fp32")
    whole = loop_tokens(runner, cfg, n1 + n2, 3, block=True, seed=3, cond=cond, speaker=speaker)
    fresh = loop_tokens(runner, cfg, n2, 1, block=True, seed=8, cond=cond[1:2, :, :n2], speaker=speaker[1:2])
    runner.reset(3, speaker)
    out = np.empty((n1, 3), dtype=np.int64)
    runner.generate_block(np.full(3, Q // 2), out, uniforms(3, n1, 3), 1.0, cond[:, :, :n1])
    assert np.array_equal(out.T, whole[:, :n1])
    state = runner.state.clone()  # (B, N, R)
    runner.regroup([2, -1, 0], np.array([1, 2, 0]))  # row 1 leaves, a new stream joins between the others
    assert runner.batch == 3 and runner.position == n1
    assert torch.equal(runner.state[0], state[2]) and torch.equal(runner.state[2], state[0])
    assert state[1].any() and not runner.state[1].any()
    u = np.stack([uniforms(3, n2, 3, start=n1)[:, 2], uniforms(8, n2, 1)[:, 0], uniforms(3, n2, 3, start=n1)[:, 0]], 1)
    c = np.stack([cond[2, :, n1:], cond[1, :, :n2], cond[0, :, n1:]])
    out2 = np.empty((n2, 3), dtype=np.int64)
    runner.generate_block(np.array([out[-1, 2], Q // 2, out[-1, 0]]), out2, u, 1.0, c)
    np.testing.assert_array_equal(out2.T, [whole[2, n1:], fresh[0], whole[0, n1:]])
    with pytest.raises(InputError, match="regroup"):
        runner.regroup([3, 0], np.array([0, 0]))


@pytest.mark.parametrize("change,option", [(dict(input_kind="scalar"), "input_kind 'scalar'"),
                                           (dict(input_kind="scalar", output_kind="mol", mixtures=2), "output_kind 'mol'"),
                                           (dict(initial_filter_width=3), "initial_filter_width 3"),
                                           (dict(kernel_size=4), "kernel_size 4")])
def test_unsupported_configs_are_refused_by_name(change, option):
    cfg = WaveNetConfig(**{**dict(quantization_channels=16, residual_channels=4, gate_channels=4, skip_channels=4,
                                  layers=2), **change})
    with pytest.raises(BackendError, match=option):
        TritonStepRunner.from_model(random_model(cfg), "fp32")


def test_bad_inputs_are_refused():
    cfg, _ = CASES["k3-conditioned"]
    runner = TritonStepRunner.from_model(random_model(cfg), "fp32")
    with pytest.raises(InputError, match="reset"):
        runner.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(InputError, match="speaker"):
        runner.reset(2)
    with pytest.raises(InputError, match=r"speaker ids must be in \[0, 3\)"):
        runner.reset(2, np.array([0, 3]))
    runner.reset(2, np.array([0, 2]))
    cond = np.zeros((2, cfg.local_channels), dtype=np.float32)
    with pytest.raises(InputError, match=r"tokens must be in \[0, 24\)"):
        runner.step(np.array([0, 24]), cond)
    with pytest.raises(InputError, match="cond"):
        runner.step(np.array([0, 1]))
    with pytest.raises(BackendError, match="precision"):
        TritonStepRunner.from_model(random_model(cfg), "bf16")
    out, u, cond4 = np.empty((4, 2), np.int64), np.full((4, 2), 0.5), np.zeros((2, 3, 4), np.float32)
    first = np.array([0, 1])
    for temperature in (0.0, -1.0, np.array([1.0, np.nan]), np.array([1.0, 1e-9]), np.array([1.0, 1.0, 1.0])):
        with pytest.raises(InputError, match="temperature"):
            runner.generate_block(first, out, u, temperature, cond4)
    with pytest.raises(InputError, match="uniforms"):
        runner.generate_block(first, out, u[:3], 1.0, cond4)
    with pytest.raises(InputError, match="cond"):
        runner.generate_block(first, out, u, 1.0, cond4[:, :, :3])
    with pytest.raises(InputError, match="steps_per_launch"):
        TritonStepRunner.from_model(random_model(cfg), "fp32", steps_per_launch=0)


def test_runner_from_an_export_directory(tmp_path):
    """TritonStepRunner(manifest, graph) runs the checkpoint the manifest records, at the graph's precision."""
    from wn_export.contract.manifest import read_manifest
    from wn_export.export.pipeline import export_directory

    cfg = CASES["k2-tiles"][0]
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(random_model(cfg), ckpt)
    export_directory(tmp_path / "out", ckpt, fp16=True)
    manifest = read_manifest(tmp_path / "out")
    tokens, _, _ = _inputs(cfg, 1, 6)
    for graph, precision in (("step", "fp32"), ("step.fp16", "fp16")):
        runner = TritonStepRunner(manifest, graph)
        assert runner.precision == precision
        direct = TritonStepRunner.from_model(random_model(cfg), precision)
        np.testing.assert_array_equal(runner.teacher_force(tokens), direct.teacher_force(tokens))
    with pytest.raises(BackendError, match="step graphs"):
        TritonStepRunner(manifest, "scoring")
    # the registry's `triton` backend behind the host API draws the reference's tokens (one generation loop)
    from wn_export.generation import open_generator

    with open_generator(tmp_path / "out", "triton") as gen, open_generator(tmp_path / "out", "torch") as ref:
        np.testing.assert_array_equal(gen.generate(12, 2, seed=5), ref.generate(12, 2, seed=5))


def _python(code_or_args, env_drop=("TRITON_INTERPRET",), **kw):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


_OPEN = ("from wn_export.backends.triton.runner import TritonStepRunner\n"  # not tests.conftest: it sets TRITON_INTERPRET
         "from reference_model import WaveNet, WaveNetConfig\n"
         "from wn_export.errors import BackendError\n"
         f"cfg = WaveNetConfig.from_json({CONFIGS['k2'].to_json()!r})\n"
         "try:\n"
         "    TritonStepRunner.from_model(WaveNet(cfg))\n"
         "except BackendError as e:\n"
         "    print(e)\n")


def test_one_clear_error_without_triton():
    run = _python("import sys; sys.modules['triton'] = None\n" + _OPEN)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.strip().splitlines() == [run.stdout.strip()] and "needs the triton package" in run.stdout


def test_one_clear_error_without_a_gpu_outside_the_interpreter():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the kernel runs on it")
    run = _python(_OPEN)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "needs a CUDA GPU" in run.stdout and "TRITON_INTERPRET=1" in run.stdout


def test_aot_ptx_assembles_with_ptxas(tmp_path):
    """Ahead-of-time PTX for sm_80 and sm_90 (no GPU needed), assembled by ptxas, usage recorded."""
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(CASES["k3-conditioned"][0].to_json())
    out = tmp_path / "ptx"
    run = _python(["-m", "wn_export.backends.triton.aot", "--arch", "80,90", "-o", str(out), "--config",
                   str(cfg_path), "--variant", "step,sample"], timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"wavenet_steps.{v}.fp16.sm_{cc}.{ext}" for v in ("step", "sample")
                           for cc in (80, 90) for ext in ("ptx", "json"))  # no temporary files left
    for meta_path in out.glob("*.json"):
        meta = json.loads(meta_path.read_text())
        ptx = meta_path.with_suffix(".ptx").read_text()
        import hashlib

        assert meta["sha256"] == hashlib.sha256(ptx.encode()).hexdigest()
        assert f".target {meta['target']}" in ptx and ".version 8.3" in ptx
        assert meta["target"] == ("sm_90a" if meta["cc"] == 90 else "sm_80")
        assert f".entry {meta['kernel']}(" in ptx
        assert 0 < meta["ptxas"]["registers"] <= 255
        assert meta["ptxas"]["spill_store_bytes"] >= 0 and meta["ptxas"]["spill_load_bytes"] >= 0
        assert meta["constexprs"]["K"] == 3 and meta["constexprs"]["HAS_COND"] is True


def test_aot_bad_arch_is_one_line():
    run = _python(["-m", "wn_export.backends.triton.aot", "--arch", "ninety", "-o", "unused"])
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("Error: --arch") and len(run.stderr.strip().splitlines()) == 1
    assert not (ROOT / "unused").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["k2-tiles", "k3-conditioned"])
def test_kernel_on_cuda_matches_float64_reference(tmp_path, case):
    """The same kernel JIT-compiled for the GPU: logits within tolerance, FP32 tokens equal the reference's."""
    cfg = tmp_path / "cfg.json"  # random weights from a config: no safetensors needed on the GPU machine
    cfg.write_text(CASES[case][0].to_json())
    run = _python(["-m", "wn_export.backends.triton.check", "parity", "--model", str(cfg), "--scale", "0.4",
                   "--steps", "200", "--generate", "200"], timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fp32:" in run.stdout and "fp16:" in run.stdout
