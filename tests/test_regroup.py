"""Continuous batching's state carry (`backends.base.Regroup`, `TrtStepRunner.regroup` / `carry_state`): streams
leave and join a running batch between steps. The TensorRT runner's buffer protocol (replace pairs alternating
by step parity, the ring scattered at its position) is replayed on the host with ONNX Runtime running the step
graph, so `carry_state` is proven without a GPU; the runner itself on a GPU (marked `gpu`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CONFIGS
from wn_export.backends.base import Regroup
from wn_export.backends.tensorrt.runner import carry_state
from wn_export.contract.manifest import read_manifest
from wn_export.errors import InputError


def test_plan_carries_rows_and_fills_new_ones():
    plan = Regroup([2, -1, 0, -1], 3)
    assert plan.batch == 4 and plan.kept.tolist() == [0, 2] and plan.sources.tolist() == [2, 0]
    assert plan.fresh.tolist() == [1, 3]
    old = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    new = np.zeros((4, 2), np.float32)
    plan.carry(old, new, -1.0)
    np.testing.assert_array_equal(new, [[4, 5], [-1, -1], [0, 1], [-1, -1]])
    Regroup([-1, -1], 0).carry(None, new[:2], 7.0)  # before the first reset: every row new
    assert (new[:2] == 7).all()
    for rows, batch in (([], 3), ([3], 3), ([[0]], 3), ([0], 0)):
        with pytest.raises(InputError, match="regroup"):
            Regroup(rows, batch)


class _TrtProtocol:
    """`TrtStepRunner`'s buffers and state rules on the host, the step graph run by ONNX Runtime: every I/O
    tensor has a buffer per `reset`; a replace pair is (input, output), step t reads pair[t % 2] and writes
    pair[1 − t % 2]; a ring's update rows go to offset + position mod length, then the position advances."""

    def __init__(self, graph):
        import onnxruntime

        self.graph = graph
        self.session = onnxruntime.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])

    def reset(self, batch):
        from wn_export.backends.onnxruntime.runner import resolve

        self.bufs = {t.name: np.zeros(resolve(t.shape, {"batch": batch}), t.dtype)
                     for t in (*self.graph.inputs, *self.graph.outputs)}
        for s in self.graph.state:
            self.bufs[s.input][...] = s.init
        self.steps = 0

    def step(self, token):
        g, bufs, parity = self.graph, self.bufs, self.steps % 2
        bufs[g.feed.name][...] = token
        feeds = {t.name: bufs[t.name] for t in g.inputs}
        for s in g.state:
            if s.update == "replace":
                feeds[s.input] = (bufs[s.input], bufs[s.output])[parity]
        outputs = dict(zip([t.name for t in g.outputs], self.session.run([t.name for t in g.outputs], feeds)))
        for s in g.state:
            if s.update == "replace":
                (bufs[s.input], bufs[s.output])[1 - parity][...] = outputs[s.output]
            else:  # the update rows (B, L, R) into the ring (B, N, R)
                rows = [offset + int(bufs[s.position].reshape(-1)[0]) % length for offset, length in s.rings]
                bufs[s.input][:, rows] = outputs[s.output]
        for s in g.state:
            if s.update == "ring":
                bufs[s.position] += 1
                break
        self.steps += 1
        return outputs[g.distribution.name].copy()


@pytest.mark.parametrize("layout,n1", [("full", 5), ("full", 6), ("ring", 5)])
def test_carry_state_continues_rows_in_the_tensorrt_buffer_protocol(tmp_path, checkpoint_factory, layout, n1):
    """Stream rows 0 and 2 leave or move and a new stream joins after n1 steps (odd n1: a replace pair's state
    sits in its output buffer): each continuing row computes what it computed uninterrupted, the new row what
    a fresh stream computes."""
    from wn_export.export.pipeline import export_directory

    cfg = CONFIGS["k2"]
    export_directory(tmp_path / "x", checkpoint_factory(cfg, seed=4), layout=layout)
    graph = read_manifest(tmp_path / "x").graph("step")
    assert {s.update for s in graph.state} == {"ring" if layout == "ring" else "replace"}
    n2 = cfg.receptive_field + 3
    tokens = np.random.default_rng(1).integers(0, cfg.quantization_channels, (3, n1 + n2))
    whole, fresh, regrouped = _TrtProtocol(graph), _TrtProtocol(graph), _TrtProtocol(graph)
    whole.reset(3)
    expected = np.stack([whole.step(tokens[:, t]) for t in range(n1 + n2)], 1)  # (3, T, Q)
    fresh.reset(3)
    expected_new = np.stack([fresh.step(tokens[:, n1 + t]) for t in range(n2)], 1)
    regrouped.reset(3)
    for t in range(n1):
        regrouped.step(tokens[:, t])
    plan = Regroup([2, -1, 0], 3)
    old, steps = regrouped.bufs, regrouped.steps
    regrouped.reset(3)
    carry_state(graph.state, old, steps, regrouped.bufs, plan)
    feed = tokens[[2, 1, 0], n1:]  # row 1: the new stream reads the same tokens as `fresh` row 1
    got = np.stack([regrouped.step(feed[:, t]) for t in range(n2)], 1)
    atol = 1e-5
    np.testing.assert_allclose(got[0], expected[2, n1:], rtol=0, atol=atol)
    np.testing.assert_allclose(got[2], expected[0, n1:], rtol=0, atol=atol)
    np.testing.assert_allclose(got[1], expected_new[1], rtol=0, atol=atol)
    assert np.abs(expected[1, n1:] - expected_new[1]).max() > 1e-2  # the history matters: a carry is observable


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["ring", "full"])
def test_tensorrt_runner_regroup_continues_rows(tmp_path, checkpoint_factory, layout):
    """TrtStepRunner.regroup on the GPU: continuing rows and a new one compute what uninterrupted and fresh
    streams compute (the same engine, batch 3 throughout)."""
    from click.testing import CliRunner

    from cli import main
    from wn_export.backends import open_step
    from wn_export.export.pipeline import export_directory

    cfg = CONFIGS["k2"]
    export_directory(tmp_path / "x", checkpoint_factory(cfg, seed=4), layout=layout)
    assert CliRunner().invoke(main, ["trt", str(tmp_path / "x")]).exit_code == 0
    n1, n2 = 5, cfg.receptive_field + 3
    tokens = np.random.default_rng(1).integers(0, cfg.quantization_channels, (3, n1 + n2))
    with open_step(read_manifest(tmp_path / "x"), "tensorrt", "step") as runner:
        runner.reset(3)
        expected = np.stack([runner.step(tokens[:, t]).copy() for t in range(n1 + n2)], 1)
        runner.reset(3)
        expected_new = np.stack([runner.step(tokens[:, n1 + t]).copy() for t in range(n2)], 1)
        runner.reset(3)
        for t in range(n1):
            runner.step(tokens[:, t])
        runner.regroup([2, -1, 0])
        got = np.stack([runner.step(tokens[[2, 1, 0], n1 + t]).copy() for t in range(n2)], 1)
    for row, want in ((0, expected[2, n1:]), (1, expected_new[1]), (2, expected[0, n1:])):
        np.testing.assert_allclose(got[row], want, rtol=0, atol=1e-4)
