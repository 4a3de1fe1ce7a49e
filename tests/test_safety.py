"""The pieces behind the hostile-input guarantees: sizes computed without building a model, limits and
their overrides, debris removal, and the parity harness's pieces equal to the whole."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from reference_model import WaveNet, WaveNetConfig
from reference_model.errors import ConfigError, LimitError
from reference_model.limits import limit
from tests.conftest import CONFIGS, random_model
from wn_export.contract.lock import export_lock, remove_debris, staging_directory
from wn_export.parity.metrics import MetricStream, log_prob_metrics, logit_metrics, param_metrics

SMALL = dict(quantization_channels=20, residual_channels=5, gate_channels=6, skip_channels=7, kernel_size=3,
             layers=4, stacks=2)
VARIANTS = [dict(input_kind="scalar", output_kind="mol", mixtures=3, initial_filter_width=3, input_bias=True,
                 last_residual=False),
            dict(separate_gate=True, local_channels=3, speakers=2, speaker_channels=4, dilated_bias=False,
                 skip_bias=True, residual_bias=False),
            dict(initial_filter_width=2, bias=False, local_channels=2, hop_size=6, upsample="conv_transpose",
                 upsample_scales=[2, 3], upsample_freq_kernel=5)]


@pytest.mark.parametrize("cfg", [*CONFIGS.values(), *(WaveNetConfig(**SMALL, **v) for v in VARIANTS)],
                         ids=[*CONFIGS, "scalar-mol", "separate-gate", "conv-transpose"])
def test_sizes_are_computed_without_building_the_model(cfg):
    model = WaveNet(cfg)
    assert cfg.parameter_count == model.parameter_count()
    assert cfg.state_bytes == sum(4 * t.numel() for t in model.initial_state(1))


def test_limits_can_be_raised(monkeypatch):
    deep = dict(SMALL, layers=2000, stacks=2000)  # receptive field 4001: only the layer count is too large
    with pytest.raises(ConfigError, match="layers is 2,000, above the limit of 1,024 .*WN_EXPORT_MAX_LAYERS"):
        WaveNetConfig(**deep)
    monkeypatch.setenv("WN_EXPORT_MAX_LAYERS", "4096")
    assert WaveNetConfig(**deep).layers == 2000
    monkeypatch.setenv("WN_EXPORT_MAX_LAYERS", "lots")
    with pytest.raises(LimitError, match="WN_EXPORT_MAX_LAYERS='lots' is not a positive integer"):
        limit("layers")
    monkeypatch.delenv("WN_EXPORT_MAX_LAYERS")
    with pytest.raises(ConfigError, match="receptive field is 9,223,372,036,854,775,811 samples"):
        WaveNetConfig(**dict(SMALL, layers=2, dilations=[1, 2**62]))
    with pytest.raises(ConfigError, match="receptive field is about 2\\^201 samples"):
        WaveNetConfig(**dict(SMALL, layers=2, dilations=[1, 2**200]))


def test_debris_of_dead_writers_only_is_removed(tmp_path):
    d = tmp_path / "exp"
    with export_lock(d, create=True):
        mine = staging_directory(d)  # a live writer's (this process)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    d.mkdir()
    stale = tmp_path / f".exp.staging-{dead}-abcd1234"
    stale.mkdir()
    (stale / "step.onnx").write_bytes(b"x")
    user = [tmp_path / ".exp.backup", d / ".notes.txt.abcdefgh.tmp", d / f".step.engine.{dead}.txt"]
    for path in user:
        path.write_bytes(b"keep")
    temps = [d / ".manifest.json.k2j4_x9a.tmp", d / ".step.onnx.abcdefgh.tmp", d / f".step.engine.{dead}.partial",
             d / f"..step.engine.{dead}.partial.abcdefgh.tmp"]
    for path in temps:
        path.write_bytes(b"debris")
    live_partial = d / f".step.engine.{__import__('os').getpid()}.partial"
    live_partial.write_bytes(b"being built")
    assert sorted(remove_debris(d)) == sorted([stale, *temps])
    assert mine.is_dir() and live_partial.exists() and all(p.exists() for p in user)


def test_a_failed_first_export_leaves_no_directory(tmp_path):
    with pytest.raises(RuntimeError), export_lock(tmp_path / "new", create=True):
        raise RuntimeError("the export failed")
    assert list(tmp_path.iterdir()) == []


def test_metric_streams_equal_the_whole():
    rng = np.random.default_rng(0)
    test, ref = rng.standard_normal((3, 700, 16)).astype(np.float32), rng.standard_normal((3, 700, 16))
    lp_test, lp_ref = rng.standard_normal((3, 699)).astype(np.float32), rng.standard_normal((3, 699))
    for metrics, kind in ((logit_metrics, "logits"), (param_metrics, "params")):
        stream = MetricStream(kind)
        stream.BLOCK = 100  # blocks inside pieces, too
        for s, e in ((0, 1), (1, 250), (250, 700)):
            stream.add(test[:, s:e], ref[:, s:e])
            stream.add_log_prob(lp_test[:, s:min(e, 699)], lp_ref[:, s:min(e, 699)])
        whole = metrics(test, ref) | log_prob_metrics(lp_test, lp_ref)
        got = stream.result()
        assert got.keys() == whole.keys()
        for key in whole:
            assert got[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15), key
    brute = np.abs(test.astype(np.float64) - ref).max()
    assert logit_metrics(test, ref)["max_abs"] == brute


def test_parity_in_pieces_equals_parity_in_one_piece(tmp_path, monkeypatch):
    """The harness's windows (the scoring graph) and pieces (the reference) give the figures of one run
    over each whole input: tiny windows against windows larger than any input."""
    from reference_model import save_checkpoint
    from wn_export.export.pipeline import export_directory
    from wn_export.parity import harness

    cfg = CONFIGS["conditioned"]
    save_checkpoint(random_model(cfg, seed=4), tmp_path / "m.safetensors")
    export_directory(tmp_path / "exp", tmp_path / "m.safetensors")
    reports = {}
    for rows, chunk in ((10**9, 1), (256, 5)):
        monkeypatch.setattr(harness, "WINDOW_ROWS", rows)
        monkeypatch.setattr(harness, "MIN_CHUNK", chunk)
        reports[rows] = harness.run_parity(tmp_path / "exp", generation_samples=50)
    whole, pieces = ({(c.name, c.graph): c.metrics for c in r.checks} for r in reports.values())
    assert whole.keys() == pieces.keys() and reports[256]
    for key, metrics in whole.items():
        for name, value in metrics.items():
            assert pieces[key][name] == pytest.approx(value, rel=1e-6, abs=1e-12), (key, name)


def test_hygiene_refuses_weights_that_are_not_finite():
    from onnx import TensorProto, helper, numpy_helper

    from wn_export.errors import ExportError
    from wn_export.export.hygiene import check_graph

    def graph(weight):
        return helper.make_model(helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 2])],
            [numpy_helper.from_array(np.array(weight, np.float16), "w")]), opset_imports=[helper.make_opsetid("", 17)])

    assert check_graph(graph([1.0, 2.0]), {"batch"}, "ok.onnx")["initializers"] == 1
    with pytest.raises(ExportError, match="weights not finite in the graph's precision: w \\(float16\\)"):
        with np.errstate(over="ignore"):
            check_graph(graph([1.0, 1e5]), {"batch"}, "loud.onnx")
