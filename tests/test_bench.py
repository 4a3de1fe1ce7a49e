"""`wn-export bench`: the r9y9 baseline computes our model, the report is complete, options are checked.

No timing assertions: the numbers are printed by the bench; these tests check what it measures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CONFIGS, random_model

from reference_model import WaveNetConfig, save_checkpoint
from wn_export.backends.torch_ref import TorchStepRunner
from wn_export.bench import run as bench
from wn_export.bench.run import R9y9Incremental, parse_batches, parse_layouts, run_bench
from wn_export.errors import InputError
from wn_export.export.pipeline import export_directory


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    save_checkpoint(random_model(CONFIGS["conditioned"], seed=2), root / "m.safetensors")
    export_directory(root / "dir", root / "m.safetensors")
    return root / "dir"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_r9y9_incremental_baseline_computes_the_reference_logits(name):
    """Teacher-forced through the baseline's shifted input buffers = the reference step, so the bench
    compares implementations of the same function."""
    cfg = CONFIGS[name]
    model = random_model(cfg, seed=4)
    base = R9y9Incremental(model)
    rng = np.random.default_rng(0)
    B, T = 2, cfg.receptive_field + 15
    tokens = rng.integers(0, cfg.quantization_channels, (B, T))
    cond = None
    if cfg.local:
        with torch.no_grad():
            cond = model.upsample(torch.as_tensor(rng.standard_normal((B, cfg.local_channels, -(-T // cfg.hop_size))),
                                                  dtype=torch.float32), T)
    speaker = rng.integers(0, cfg.speakers, B) if cfg.global_ else None
    with TorchStepRunner(model, torch.float32) as ref:
        want = ref.teacher_force(tokens, None if cond is None else cond.numpy(), speaker)
    base.clear_buffer()
    g = base.speaker_input(speaker) if speaker is not None else None
    got = np.empty_like(want)
    with torch.no_grad():
        for t in range(T):
            onehot = torch.nn.functional.one_hot(torch.as_tensor(tokens[:, t]), cfg.quantization_channels)
            ct = None if cond is None else cond[:, :, t].unsqueeze(1)
            got[:, t] = base.step(onehot.float().unsqueeze(1), ct, g).numpy()
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_r9y9_baseline_shifts_a_buffer_of_dilated_extent_and_samples_one_hot():
    cfg = WaveNetConfig(quantization_channels=16, residual_channels=4, gate_channels=6, skip_channels=5,
                        layers=4, stacks=1)
    base = R9y9Incremental(random_model(cfg))
    x = base.initial_input(3)
    with torch.no_grad():
        for _ in range(3):
            x = base.sample(base.step(x))
    assert x.shape == (3, 1, 16) and torch.equal(x.sum(-1), torch.ones(3, 1))
    assert [layer.conv.input_buffer.shape[1] for layer in base.layers] == [2, 3, 5, 9]  # (K−1)·d + 1
    assert base.layers[2].conv._get_linearized_weight().shape == (6, 2 * 4)  # (out, kw·in)


def test_run_bench_reports_every_backend_and_batch(small_export):
    report = run_bench(small_export, batches=(1, 3), seconds=0.02, rounds=2, min_steps=3, scoring_samples=64)
    steps = {(r.backend, r.batch) for r in report.results if r.kind == "step"}
    for backend in ("onnxruntime", "torch reference", bench.BASELINE):
        assert {(backend, 1), (backend, 3)} <= steps
    scoring = {(r.backend, r.batch) for r in report.results if r.kind == "scoring"}
    assert scoring == {(b, n) for b in ("onnxruntime scoring", "torch eager forward") for n in (1, 3)}
    for r in report.results:
        assert r.samples_per_s > 0 and len(r.rounds) == 2 and r.spread[0] <= r.samples_per_s <= r.spread[1]
        assert r.p50_ms <= r.p99_ms
        ratio = report.ratio(r)
        assert ratio is not None and ratio > 0
    base = report.get("step", bench.BASELINE, 1)
    assert report.ratio(base) == pytest.approx(1.0)
    # the floor of the weights the host streams (this export has no w16 graph), one and two threads, per batch
    # and round
    assert sorted((f.batch, f.weights, f.threads, f.round) for f in report.floors) == [
        (b, "fp32", n, k) for b in (1, 3) for n in (1, 2) for k in (0, 1)]
    assert all(f.samples_per_s > 0 and f.p50_samples_per_s > 0 and f.pass_us > 0 for f in report.floors)
    # each two-thread floor carries the hand-over round trip measured beside it (one thread: none)
    assert all((f.round_trip_ns is not None and 0 < f.round_trip_ns < 1e8) == (f.threads == 2) for f in report.floors)
    host = report.get("step", bench.HOST, 1)
    assert host.weights == "fp32" and "native loop" in host.note
    per_round = report.round_floors(1, "fp32")
    assert [f.round for f in per_round] == [0, 1]
    assert report.floor_share(host) == pytest.approx(np.median([rate / f.samples_per_s
                                                                for rate, f in zip(host.rounds, per_round)]))
    assert report.floor_share(base) is None  # baselines are not judged against the floor
    assert report.get("step", "onnxruntime (fused, per step)", 3) is not None  # the Python-per-sample path
    data = json.loads(report.to_json())
    assert data["target"] is None  # not the 30-layer target model
    assert {d["backend"] for d in data["results"]} >= {"onnxruntime", bench.BASELINE}
    assert all("ratio_vs_baseline" in d and "floor_share" in d for d in data["results"])
    assert len(data["floors"]) == len(report.floors)
    from rich.console import Console

    console = Console(record=True, width=200)
    for table in report.tables():
        console.print(table)
    text = console.export_text()
    assert "onnxruntime" in text and "eager incremental" in text and "scoring" in text
    assert "hand-over ns" in text and f"{report.floors[1].round_trip_ns:,.0f}" in text


def test_bench_without_a_directory_builds_and_measures_the_target(monkeypatch):
    """The default run builds the target model itself (here a small stand-in for the 30-layer one) in
    every requested layout and reports the target line."""
    monkeypatch.setattr(bench, "TARGET", dict(layers=4, stacks=2, residual_channels=8, gate_channels=8,
                                              skip_channels=8, kernel_size=2, quantization_channels=16))
    seen = []
    report = run_bench(None, batches=(1,), seconds=0.02, rounds=1, min_steps=2, layouts=("ring", "full"),
                       scoring=False, progress=seen.append)
    backends = {r.backend for r in report.results}
    assert {"onnxruntime", "onnxruntime (full)"} <= backends
    assert any("exporting" in m for m in seen)
    assert "onnxruntime (w16)" in backends  # the built target is exported with its 16-bit-weight step graph
    target = report.target()
    assert target is not None and target["goal"] == bench.TARGET_SAMPLES_PER_S
    assert target["row"] in ("onnxruntime", "onnxruntime (w16)") and target["fp32_floor_share"] > 0
    assert "target: batch 1 ONNX Runtime" in report.summary() and "of the fp32 floor" in report.summary()
    assert "machine: " in report.summary() and "L2" in report.summary()


def test_bench_options_are_checked(small_export):
    assert parse_batches("1, 8,64") == [1, 8, 64]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(InputError, match="batch sizes"):
            parse_batches(bad)
    assert parse_layouts("ring,full") == ("ring", "full")
    with pytest.raises(InputError, match="layouts"):
        parse_layouts("ring,packed")
    with pytest.raises(InputError, match="its own layout"):
        parse_layouts("full", small_export)
    with pytest.raises(InputError, match="seconds"):
        run_bench(small_export, seconds=0)


def test_cli_bench_prints_tables_and_writes_json(small_export, tmp_path):
    from cli import main

    runner = CliRunner()
    out = tmp_path / "b.json"
    r = runner.invoke(main, ["bench", str(small_export), "--batch", "1,2", "--seconds", "0.02", "--rounds", "1",
                             "--no-scoring", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "generation step loop" in r.output and "× eager incremental" in r.output
    data = json.loads(out.read_text())
    assert {d["batch"] for d in data["results"]} == {1, 2}
    r = runner.invoke(main, ["bench", str(small_export), "--batch", "0"])
    assert r.exit_code == 1 and "batch sizes must be" in r.output
    r = runner.invoke(main, ["bench", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output


def _program(path, body: str):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_a_cpp_host_named_explicitly_must_be_an_executable(tmp_path, monkeypatch):
    """--cpp or $WN_CPP_HOST naming something that cannot run is an error, never another program's rows."""
    (tmp_path / "text").write_text("not a program")
    good = _program(tmp_path / "wn_generate", "exit 0")
    monkeypatch.delenv("WN_CPP_HOST", raising=False)
    for bad in (tmp_path / "text", tmp_path, tmp_path / "missing"):
        with pytest.raises(InputError, match="--cpp .* is not an executable file"):
            bench.cpp_host(bad)
        monkeypatch.setenv("WN_CPP_HOST", str(bad))
        with pytest.raises(InputError, match="WN_CPP_HOST .* is not an executable file"):
            bench.cpp_host()
        assert bench.cpp_host(good) == good  # an explicit --cpp is taken before the variable
    monkeypatch.setenv("WN_CPP_HOST", str(good))
    assert bench.cpp_host() == good
    monkeypatch.setenv("WN_CPP_HOST", "")  # set but empty: as if unset
    assert bench.cpp_host() in (None, Path(bench.__file__).resolve().parents[2] / "hosts/cpp/build/wn_generate")


REPORT = {"path": "native", "setup": "x", "split": "alone", "batch": 2, "samples": 512, "seconds": 0.01,
          "samples_per_s": 51200.0, "step_ms_p50": 0.01, "step_ms_p99": 0.02}


@pytest.mark.parametrize("stdout, why", [
    ("", "nothing"), ("garbage", "not JSON"), ("[1, 2]", "not an object"),
    (json.dumps({**REPORT, "samples_per_s": "fast"}), "a string rate"),
    (json.dumps({**REPORT, "samples_per_s": -5.0}), "a negative rate"),
    (json.dumps({**REPORT, "seconds": 0}), "no time"),
    (json.dumps({**REPORT, "batch": 3}), "another batch"),
    (json.dumps({**REPORT, "path": "onnxruntime", "step_ms_p50": None}), "not the native loop"),
    (json.dumps({k: v for k, v in REPORT.items() if k != "step_ms_p99"}), "a missing field"),
    ("NaN", "a bare NaN"),
], ids=lambda v: v if " " in v or not v.startswith(("{", "[")) else None)
def test_a_cpp_host_that_prints_garbage_is_one_error(tmp_path, stdout, why):
    exe = _program(tmp_path / "wn_generate", f"cat <<'END'\n{stdout}\nEND")
    row = bench._CppRow(bench.CPP, tmp_path, "step", "fp32", bench.HOST)
    with pytest.raises(InputError, match="did not print a native loop report of 512 samples x 2 streams"):
        bench._cpp_run(exe, row, 2, 512, "alone", None, tmp_path)
    _program(exe, f"echo progress\necho '{json.dumps(REPORT)}'")  # the control: the last line is the report
    assert bench._cpp_run(exe, row, 2, 512, "alone", None, tmp_path)["samples_per_s"] == 51200.0


def test_a_cpp_host_that_hangs_or_fails_is_one_error(tmp_path, monkeypatch):
    row = bench._CppRow(bench.CPP, tmp_path, "step", "fp32", bench.HOST)
    monkeypatch.setattr(bench, "CPP_TIMEOUT", 0.5)
    monkeypatch.setattr(bench, "CPP_SLACK", 0.0)
    start = time.monotonic()
    with pytest.raises(InputError, match="did not finish 512 samples x 2 streams in 0.5 s"):
        bench._cpp_run(_program(tmp_path / "slow", "exec sleep 30"), row, 2, 512, "alone", None, tmp_path)
    assert time.monotonic() - start < 10
    with pytest.raises(InputError, match=r"the C\+\+ host failed: boom"):
        bench._cpp_run(_program(tmp_path / "fails", "echo boom >&2; exit 3"), row, 2, 512, "alone", None, tmp_path)
    from cli import main

    r = CliRunner().invoke(main, ["bench", str(tmp_path), "--cpp", str(tmp_path / "fails"), "--no-cpp"])
    assert r.exit_code == 2 and "give one of them" in r.output


def test_the_package_row_times_wavenet_vocoder_itself(tmp_path):
    cfg = WaveNetConfig(quantization_channels=16, residual_channels=4, gate_channels=6, skip_channels=5,
                        layers=4, stacks=2)
    save_checkpoint(random_model(cfg), tmp_path / "m.safetensors")
    export_directory(tmp_path / "d", tmp_path / "m.safetensors")
    report = run_bench(tmp_path / "d", batches=(1, 2), seconds=0.02, rounds=2, min_steps=3, scoring=False)
    rows = [r for r in report.results if r.backend == bench.PACKAGE]
    assert [r.batch for r in rows] == [1]  # its sampler draws one stream
    assert rows[0].samples_per_s > 0 and rows[0].p50_ms is None and "wavenet_vocoder" in rows[0].note
    from rich.console import Console

    console = Console(record=True, width=200)
    for t in report.tables():
        console.print(t)
    assert bench.PACKAGE in console.export_text()


def test_the_floor_is_paired_with_the_rows_round_by_round():
    """A round's floor is its faster thread count; achieved ÷ floor is the median over rounds of the row's rate
    ÷ that round's floor (both sides under the same load); the floor shown is the median round's."""
    F = bench.Floor
    floors = [F(1, "fp32", 2, 60.0, 9_000.0, 16_000.0, 0), F(1, "fp32", 1, 60.0, 16_000.0, 16_500.0, 0),
              F(1, "fp32", 2, 30.0, 30_000.0, 33_000.0, 1), F(1, "fp32", 1, 60.0, 15_000.0, 16_000.0, 1),
              F(1, "fp32", 2, 32.0, 32_000.0, 34_000.0, 2), F(1, "w16", 2, 21.0, 40_000.0, 47_000.0, 0),
              F(8, "fp32", 2, 90.0, 80_000.0, 88_000.0, 0)]
    report = bench.BenchReport({}, "", {}, {}, [], floors=floors)
    assert [(f.threads, f.samples_per_s) for f in report.round_floors(1, "fp32")] == [
        (1, 16_000.0), (2, 30_000.0), (2, 32_000.0)]
    assert report.floor(1, "fp32").samples_per_s == 30_000.0 and report.floor(1, "w16").samples_per_s == 40_000.0
    row = bench.Result("step", bench.HOST, 1, 24_000.0, (12_000.0, 25_600.0), rounds=[12_000.0, 24_000.0, 25_600.0],
                       p50_ms=0.04, weights="fp32")
    assert report.floor_share(row) == pytest.approx(0.8)  # median of 0.75, 0.8, 0.8
    assert report.floor_share_p50(row) == pytest.approx(25_000.0 / 33_000.0)
    unpaired = bench.Result("step", bench.HOST, 1, 24_000.0, (24_000.0, 24_000.0), rounds=[24_000.0], weights="fp32")
    assert report.floor_share(unpaired) == pytest.approx(0.8)  # no pairing possible: median ÷ median floor


def test_the_hand_over_round_trip_is_measured_within_its_budget():
    """wn_round_trip times cache-line round trips between two threads, stops at its time budget, refuses bad
    arguments; round_trip_ns is their median."""
    import ctypes

    from wn_export.backends.onnxruntime.native import library
    from wn_export.bench.floor import round_trip_ns

    fn = ctypes.CDLL(str(library())).wn_round_trip
    fn.restype, fn.argtypes = ctypes.c_int64, [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    ns = np.zeros(1_000_000, np.int64)
    t0 = time.perf_counter()
    done = fn(len(ns), 5_000_000, ns.ctypes.data)  # 5 ms: fewer than asked on any machine (≥ 5 ns each)
    assert 0 < done < len(ns) and time.perf_counter() - t0 < 1.0
    assert (ns[:done] > 0).all() and (ns[done:] == 0).all()
    assert fn(0, 1, ns.ctypes.data) == -1 and fn(5, 0, ns.ctypes.data) == -1 and fn(5, 1, None) == -1
    assert 0 < round_trip_ns(500) < 1e8


def test_the_floor_share_is_split_by_the_hand_over_of_each_round():
    """Rounds whose two-thread floor measured a hand-over within twice the run's fastest are one group, the
    slower ones another (the VM's cores sharing a cache or not); each group's share pairs the row's rate with its
    own round's floor. The target line prints both groups; rounds that are all alike make one group."""
    F = bench.Floor
    trips = [130.0, 130.0, 400.0, 125.0, 380.0]
    two = [30_000.0, 32_000.0, 30_000.0, 31_000.0, 29_000.0]  # each round's floor
    floors = [F(1, "fp32", 2, 30.0, two[k], 33_000.0, k, trips[k]) for k in range(5)]
    floors += [F(1, "fp32", 1, 60.0, 16_000.0, 16_500.0, k) for k in range(5)]
    rates = [s * f for s, f in zip([0.85, 0.9, 0.72, 0.86, 0.76], two)]
    row = bench.Result("step", bench.HOST, 1, 25_500.0, (min(rates), max(rates)), rounds=rates, p50_ms=0.036,
                       weights="fp32")
    machine = {"processor": "cpu", "load_before": "0", "load_after": "0", "onnxruntime": "1", "torch": "2",
               "torch_threads": 2}
    report = bench.BenchReport({"is_target": True, "description": "target"}, "", machine, {}, [row], floors=floors)
    groups = report.floor_share_by_hand_over(row)
    assert [(g["rounds"], g["round_trip_ns"]) for g in groups] == [(3, 130.0), (2, 390.0)]
    assert [g["share"] for g in groups] == pytest.approx([0.86, 0.74])
    assert report.floor_share(row) == pytest.approx(0.85)  # all five rounds, as before
    assert report.target()["fp32_floor_share_by_hand_over"] == groups
    line = report.summary()
    assert "fp32 weights at 85% of the fp32 floor" in line
    assert "86% in the 3 rounds with 130 ns hand-overs, 74% in the 2 rounds with 390 ns hand-overs" in line
    assert json.loads(report.to_json())["results"][0]["floor_share_by_hand_over"] == groups
    alike = bench.BenchReport({}, "", {}, {}, [], floors=[
        F(1, "fp32", 2, 30.0, 30_000.0, 33_000.0, k, t) for k, t in enumerate([130.0, 250.0, 140.0, 125.0, 200.0])])
    assert [g["rounds"] for g in alike.floor_share_by_hand_over(row)] == [5]
    unpaired = bench.Result("step", bench.HOST, 1, 24_000.0, (24_000.0, 24_000.0), rounds=[24_000.0], weights="fp32")
    assert report.floor_share_by_hand_over(unpaired) == []
    untimed = bench.BenchReport({}, "", {}, {}, [], floors=[F(1, "fp32", 2, 30.0, 30_000.0, 33_000.0, k)
                                                            for k in range(5)])
    assert untimed.floor_share_by_hand_over(row) == []  # floors without a hand-over measured
