"""The ONNX Runtime host's native generation loop (plugins/ort/loop.cc through `native_loop`): whole blocks of
steps in one call draw exactly the tokens of the reference contract (SplitMix64 uniforms, float64 inverse
CDF), stream in chunks, and whatever the threads' split; graphs it does not know keep the per-step path.

Speed lives in `wn-export bench` (rows `onnxruntime` vs `onnxruntime (fused, per step)`)."""

from __future__ import annotations

import ctypes
import json
import time

import numpy as np
import onnx
import pytest
from conftest import LOOP_MODELS

from wn_export.backends.onnxruntime import native, policy
from wn_export.backends.onnxruntime.fusion import fuse
from wn_export.backends.onnxruntime.native_loop import plan_loop
from wn_export.backends.onnxruntime.runner import OrtStepRunner
from wn_export.backends.torch_ref import TorchStepRunner, reference_model_for
from wn_export.contract.manifest import read_manifest
from wn_export.errors import InputError
from wn_export.export.graph_match import NoMatch
from wn_export.generation.loop import StepLoop, generate

NAMES = LOOP_MODELS


@pytest.fixture
def exports(loop_exports):
    return loop_exports


def _kwargs(cfg, batch: int, n: int, **kw):
    rng = np.random.default_rng(batch)
    cond = rng.standard_normal((batch, cfg.local_channels, n)).astype(np.float32) if cfg.local else None
    speaker = rng.integers(0, cfg.speakers, batch) if cfg.global_ else None
    return dict(quantization_channels=cfg.quantization_channels, cond=cond, speaker=speaker, **kw)


class _Counting:
    """Counts the runner's native block calls (those that ran natively)."""

    def __init__(self, runner):
        self.calls, self._block = 0, runner.generate_block
        runner.generate_block = self

    def __call__(self, *args, **kwargs):
        done = self._block(*args, **kwargs)
        self.calls += bool(done)
        return done


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_native_loop_draws_the_reference_contracts_tokens(exports, name, batch):
    manifest = read_manifest(exports[name])
    cfg = manifest.config
    model = reference_model_for(manifest, None)
    n = 300
    with OrtStepRunner(manifest) as runner:
        assert runner.loop is not None and "native loop" in runner.setup
        counter = _Counting(runner)
        for seed, method, temperature in ((0, "sample", 1.0), (11, "sample", 0.7), (5, "sample", 1.3),
                                          (0, "greedy", 1.0)):
            kw = _kwargs(cfg, batch, n, seed=seed, method=method, temperature=temperature, chunk=128)
            with TorchStepRunner(model) as reference:
                want = generate(reference, n, batch, **kw)
            got = generate(runner, n, batch, **kw)
            assert got.shape == (batch, n) and got.dtype == np.int64
            assert np.array_equal(got, want), (seed, method, temperature)
            if method == "sample":
                assert len(np.unique(got)) > 3  # really sampled
        assert counter.calls == 4 * 3  # every chunk (128, 128, 44) ran natively


def test_chunks_stream_and_blocks_mix_with_single_steps(exports):
    manifest = read_manifest(exports["conditioned"])
    cfg = manifest.config
    kw = _kwargs(cfg, 2, 257, seed=3, temperature=0.9)
    with OrtStepRunner(manifest) as runner:
        whole = generate(runner, 257, 2, **kw)
        for chunk in (1, 7, 100, 257, 1000):
            parts = list(StepLoop(runner, 2, cfg, seed=3, temperature=0.9, cond=kw["cond"], speaker=kw["speaker"],
                                  window=chunk).chunks(257, chunk))
            assert [p.shape[1] for p in parts[:-1]] == [chunk] * (len(parts) - 1)
            assert np.array_equal(np.concatenate(parts, axis=1), whole)
        loop = StepLoop(runner, 2, cfg, seed=3, temperature=0.9, cond=kw["cond"], speaker=kw["speaker"], window=64)
        loop.reset()
        mixed = [loop.step().copy() for _ in range(5)]  # per step through ONNX Runtime …
        mixed += list(loop.advance(100))  # … then a native block from the same state and position …
        mixed += [loop.step().copy() for _ in range(2)]  # … and single steps again
        mixed += list(loop.advance(150))
        assert np.array_equal(np.stack(mixed, axis=1), whole)


@pytest.mark.parametrize("graph", ["step", "step.w16"])
def test_every_thread_split_draws_the_same_tokens(exports, monkeypatch, graph):
    """The split changes who computes which stream or layer, never a bit of the result."""
    manifest = read_manifest(exports["k2"])
    kw = _kwargs(manifest.config, 3, 200, seed=4)
    got = {}
    for split in policy.SPLITS:
        monkeypatch.setenv("WN_EXPORT_SPLIT", split)
        with OrtStepRunner(manifest, graph) as runner:
            assert runner.calibration.split(3) == split
            got[split] = generate(runner, 200, 3, **kw)
    assert np.array_equal(got["alone"], got["pipeline"]) and np.array_equal(got["alone"], got["rows"])


def test_the_helper_thread_takes_part_in_the_loop(exports, monkeypatch):
    monkeypatch.setenv("WN_EXPORT_SPLIT", "rows")
    lib = ctypes.CDLL(str(native.library()))
    lib.wn_ort_ops_helped_tasks.restype = ctypes.c_int64
    manifest = read_manifest(exports["k2"])
    with OrtStepRunner(manifest) as runner:
        before, start = lib.wn_ort_ops_helped_tasks(), time.monotonic()
        while lib.wn_ort_ops_helped_tasks() == before and time.monotonic() - start < 5:
            generate(runner, 50, 4, quantization_channels=manifest.config.quantization_channels)
        assert lib.wn_ort_ops_helped_tasks() > before  # one batch half ran on the helper


def test_graphs_the_loop_does_not_know_keep_the_per_step_path(exports):
    manifest = read_manifest(exports["k2"])
    lowered = onnx.load(str(manifest.graph("step").path))
    fused, chain = fuse(lowered)
    lib = str(native.library())
    assert plan_loop(fused, chain, manifest.graph("step"), lib) is not None
    shifted = onnx.ModelProto()
    shifted.CopyFrom(fused)  # tap rows that are not the manifest's rings
    shift = next(i for i in shifted.graph.initializer if i.name == "tap_shift")
    shift.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(shift) + 1, "tap_shift"))
    with pytest.raises(NoMatch, match="tap rows"):
        plan_loop(shifted, chain, manifest.graph("step"), lib)
    extra = onnx.ModelProto()
    extra.CopyFrom(fused)  # a node the loop would not compute
    logits = next(n for n in extra.graph.node if n.op_type == "WaveNetHead")
    logits.output[0] = "raw_logits"
    extra.graph.node.append(onnx.helper.make_node("Relu", ["raw_logits"], ["logits"]))
    with pytest.raises(NoMatch):
        plan_loop(extra, chain, manifest.graph("step"), lib)
    cfg = manifest.config
    kw = _kwargs(cfg, 2, 120, seed=1)
    with TorchStepRunner(reference_model_for(manifest, None)) as reference:
        want = generate(reference, 120, 2, **kw)
    with OrtStepRunner(manifest, native_loop=False) as runner:
        assert runner.loop is None and "per step" in runner.setup
        counter = _Counting(runner)
        assert np.array_equal(generate(runner, 120, 2, **kw), want)
        assert counter.calls == 0
    with OrtStepRunner(read_manifest(exports["k2-full"])) as runner:
        assert runner.loop is None and not runner.is_fused
        assert np.array_equal(generate(runner, 120, 2, **kw), want)


def test_the_loop_refuses_first_tokens_outside_the_classes(exports):
    manifest = read_manifest(exports["k2"])
    Q = manifest.config.quantization_channels
    with OrtStepRunner(manifest) as runner:
        runner.reset(2)
        out = np.empty((4, 2), np.int64)
        with pytest.raises(InputError, match="outside"):
            runner.generate_block(np.array([0, Q]), out, None)
        assert runner.generate_block(np.array([0, Q - 1]), out, None) and runner.position == 4


def test_calibration_is_measured_once_per_machine_and_model_and_cached(exports, monkeypatch, tmp_path):
    monkeypatch.setenv("WN_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WN_EXPORT_SPLIT", raising=False)
    monkeypatch.delenv("WN_EXPORT_RECALIBRATE", raising=False)
    monkeypatch.setattr(policy, "cores", lambda: 2)
    manifest = read_manifest(exports["k3-odd"])
    with OrtStepRunner(manifest) as runner:
        first = runner.calibration.split(1)
        assert first in ("alone", "pipeline")  # nothing to split by rows at batch 1
        assert runner.calibration.split(5) in policy.SPLITS
        path = runner.calibration.path
        saved = json.loads(path.read_text())
        assert saved["splits"] == {"1": first, "8": runner.calibration.split(8)}  # 5 → its bucket, 8
    monkeypatch.setattr(policy.Calibration, "_measure", lambda *a: pytest.fail("measured again"))
    with OrtStepRunner(manifest) as runner:
        assert runner.calibration.split(1) == first  # read back, not measured
    with OrtStepRunner(manifest, "step.w16") as runner:  # another model (its weights): its own entry
        assert runner.calibration.path != path and not runner.calibration.table
    monkeypatch.setenv("WN_EXPORT_SPLIT", "rows")
    with OrtStepRunner(manifest) as runner:
        assert runner.calibration.split(64) == "rows" and runner.calibration.path is None
    monkeypatch.setattr(policy, "cores", lambda: 1)
    monkeypatch.delenv("WN_EXPORT_SPLIT")
    with OrtStepRunner(manifest) as runner:
        assert runner.calibration.split(64) == "alone"  # one core: no helper
    native_lib = ctypes.CDLL(str(native.library()))
    native_lib.wn_ort_ops_set_helper(1)


def test_batch_buckets():
    assert [policy.bucket(b) for b in (1, 2, 3, 4, 5, 8, 9, 64, 65, 1000)] == [1, 2, 4, 4, 8, 8, 16, 64, 128, 256]


def test_rows_with_their_own_temperature_or_greedy_equal_their_own_generation(exports):
    """Per-row temperatures (0: greedy) let streams with different settings share one native call; each row
    equals the batch-1 generation with its settings (the rows do not depend on the batch)."""
    from reference_model.sampling import uniforms

    manifest = read_manifest(exports["k3-odd"])
    Q, n = manifest.config.quantization_channels, 150
    settings = [(3, "sample", 0.7), (4, "greedy", 1.0), (5, "sample", 1.3)]
    with OrtStepRunner(manifest) as runner:
        assert runner.batch_invariant
        runner.reset(3)
        first = np.full(3, Q // 2, np.int64)
        u = np.stack([uniforms(seed, n, 1)[:, 0] for seed, _, _ in settings], axis=1)
        out = np.empty((n, 3), np.int64)
        temperatures = np.array([t if m == "sample" else 0.0 for _, m, t in settings])
        assert runner.generate_block(first, out, u=u, temperature=temperatures)
        for row, (seed, method, temperature) in enumerate(settings):
            want = generate(runner, n, 1, seed=seed, method=method, temperature=temperature, quantization_channels=Q)
            assert np.array_equal(out[:, row], want[0]), row
        runner.reset(3)
        for bad in (np.array([1.0, -1.0, 1.0]), np.array([1.0, np.nan, 1.0]), np.ones(2)):
            with pytest.raises(InputError, match="per-row temperatures"):
                runner.generate_block(first, out, u=u, temperature=bad)
        with pytest.raises(InputError, match="per-row temperatures"):
            runner.generate_block(first, out, u=None, temperature=temperatures)


def test_temperatures_the_sampler_cannot_honour_are_refused_per_row_and_for_all(exports):
    """Below 1e-6 (denormals too) the float64 draw degenerates (far below, logit / T overflows and every draw is
    token 0), and infinity is no temperature: refused like `check_temperature` refuses them, before the loop runs
    (the position does not move); 1e-6 itself, huge finite ones and greedy rows (0) beside them run."""
    from reference_model.sampling import uniforms

    manifest = read_manifest(exports["k2"])
    Q, n = manifest.config.quantization_channels, 20
    with OrtStepRunner(manifest) as runner:
        runner.reset(3)
        first = np.full(3, Q // 2, np.int64)
        u = np.ascontiguousarray(uniforms(1, n, 3))
        out = np.empty((n, 3), np.int64)
        for bad in (1e-300, 5e-324, 1e-7, np.inf, -np.inf):
            with pytest.raises(InputError, match="per-row temperatures must be"):
                runner.generate_block(first, out, u=u, temperature=np.array([1.0, bad, 0.0]))
            with pytest.raises(InputError, match="temperature must be a finite number >= 1e-06"):
                runner.generate_block(first, out, u=u, temperature=bad)
        assert runner.position == 0
        assert runner.generate_block(first, out, u=u, temperature=np.array([1e-6, 1e300, 0.0]))
        assert runner.generate_block(first, out, u=None, temperature=1e-300)  # greedy: no temperature is read
        assert runner.position == 2 * n


def test_arrays_the_loop_would_read_or_write_past_their_end_are_refused(exports):
    """The loop reads and writes through data pointers: a reversed view as `out` was written past its end (the
    allocator aborted: "free(): invalid pointer"); short or float32 uniforms, a short `first` or short conditioning
    were read past theirs. Each is one InputError before the loop runs; the state does not move."""
    from reference_model.sampling import uniforms

    manifest = read_manifest(exports["conditioned"])
    cfg = manifest.config
    Q, C, n = cfg.quantization_channels, cfg.local_channels, 8
    with OrtStepRunner(manifest) as runner:
        runner.reset(2, np.array([0, 1]))
        first = np.full(2, Q // 2, np.int64)
        u = np.ascontiguousarray(uniforms(3, n, 2))
        cond = np.zeros((2, C, n), np.float32)
        out = np.empty((n, 2), np.int64)
        bad = {
            "out reversed": dict(out=np.empty((n, 2), np.int64)[::-1]),
            "out strided": dict(out=np.empty((n, 4), np.int64)[:, ::2]),
            "out int32": dict(out=np.empty((n, 2), np.int32)),
            "out read-only": dict(out=np.broadcast_to(np.empty(2, np.int64), (n, 2))),
            "u short": dict(u=u[:1]),
            "u float32": dict(u=u.astype(np.float32)),
            "u transposed": dict(u=np.asfortranarray(u)),
            "first short": dict(first=first[:1]),
            "cond short": dict(cond=cond[:, :, :n - 1]),
            "cond channels": dict(cond=np.zeros((2, C + 1, n), np.float32)),
            "cond float64": dict(cond=cond.astype(np.float64)),
            "step_ns short": dict(step_ns=np.zeros(n - 1, np.int64)),
        }
        for what, change in bad.items():
            args = {**dict(first=first, out=out, u=u, temperature=1.0, cond=cond), **change}
            with pytest.raises(InputError, match="the native loop's"):
                runner.generate_block(args.pop("first"), args.pop("out"), **args)
            assert runner.position == 0, what
        step_ns = np.zeros(n, np.int64)
        assert runner.generate_block(first, out, u=u, cond=cond[:, :, ::-1], step_ns=step_ns)  # any element strides
        assert runner.position == n and (step_ns > 0).all()
