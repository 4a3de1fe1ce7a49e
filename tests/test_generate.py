"""Generation: the host API, its sampler, the lowered step graph, the ORT step runner, `wn-export generate`.

Speed lives in `wn-export bench`; these tests check behaviour only (no timings).
"""

from __future__ import annotations

import json
import wave

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import CONFIGS, random_model

from reference_model import WaveNetConfig, save_checkpoint
from reference_model.sampling import draw, uniforms
from wn_export.backends.onnxruntime.runner import OrtStepRunner, _Ring
from wn_export.backends.torch_ref import TorchStepRunner
from wn_export.contract.manifest import read_manifest
from wn_export.errors import ArtifactError, BackendError, InputError
from wn_export.export.graph_match import NoMatch as UnsupportedGraph
from wn_export.export.lowering import lower_pass, lower_step_graph, lowering_error
from wn_export.export.pipeline import export_directory
from wn_export.export.precision import FP32
from wn_export.export.wrappers import build_graph, example_inputs
from wn_export.generation.generator import Generator, Sampler, generate_to_wav, open_generator

EXPORTS = [("k2", "ring"), ("k3-odd", "full"), ("conditioned", "ring"), ("conditioned", "full"),
           ("explicit-dilations", "ring")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{(config, layout): export directory} of small random models (FP32 graphs)."""
    root = tmp_path_factory.mktemp("gen")
    out = {}
    for name, layout in EXPORTS:
        ckpt = root / f"{name}.safetensors"
        if not ckpt.exists():
            save_checkpoint(random_model(CONFIGS[name], seed=3), ckpt)
        out[name, layout] = root / f"{name}-{layout}"
        export_directory(out[name, layout], ckpt, layout=layout)
    return out


def _conditioning(cfg: WaveNetConfig, batch: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch, cfg.local_channels, -(-n // cfg.hop_size))) if cfg.local else None
    speaker = rng.integers(0, cfg.speakers, batch).tolist() if cfg.global_ else None
    return {"features": features, "speaker": speaker}


# ---- sampling --------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, classes, temperature", [(1, 256, 1.0), (1, 256, 0.7), (1, 17, 1.3),
                                                         (3, 32, 1.0), (4, 256, 0.9)])
def test_sampler_is_bit_identical_to_reference_draw(batch, classes, temperature):
    rng = np.random.default_rng(batch * 1000 + classes)
    sampler = Sampler(batch, classes, "sample", temperature)
    for i in range(400):
        scale = (0.01, 1.0, 8.0, 60.0)[i % 4]
        logits = (rng.standard_normal((batch, classes)) * scale).astype(np.float32)
        if i % 50 == 0:
            logits[:, rng.integers(classes)] = 1e4  # one overwhelming class
        u = rng.random(batch)
        if i % 97 == 0:
            u[:] = 0.0
        got = sampler(logits, u[:, None])
        assert np.array_equal(got, draw(logits, "sample", u, temperature)), i
    greedy = Sampler(batch, classes, "greedy")
    logits = rng.standard_normal((batch, classes)).astype(np.float32)
    assert np.array_equal(greedy(logits, None), draw(logits, "greedy"))


@pytest.mark.parametrize("native", [None, False])
@pytest.mark.parametrize("batch, temperature", [(1, 1.0), (3, 0.8)])
def test_bound_sampler_draws_the_reference_tokens(native, batch, temperature):
    """`Sampler.bind` (the step loop's form) gives the reference tokens for every step of a chunk, from
    the bound logits buffer (native: through precomputed pointers) and from any other array."""
    rng = np.random.default_rng(batch)
    classes, steps = 64, 50
    u = uniforms(3, steps, batch)[:, :, None]
    buffer = np.zeros((batch, classes), np.float32)
    sample = Sampler(batch, classes, "sample", temperature, native=native).bind(buffer, u)
    for i in range(steps):
        buffer[...] = rng.standard_normal((batch, classes)) * 3
        other = (rng.standard_normal((batch, classes)) * 3).astype(np.float32)
        for logits in (buffer, other):
            assert np.array_equal(sample(logits, i), draw(logits, "sample", u[i, :, 0], temperature)), i


def test_sampler_accepts_float64_logits_of_the_reference_runner():
    rng = np.random.default_rng(5)
    logits, u = rng.standard_normal((2, 40)), rng.random(2)
    assert np.array_equal(Sampler(2, 40)(logits, u[:, None]), draw(logits, "sample", u))
    assert np.array_equal(Sampler(1, 40)(logits[:1], u[:1, None]), draw(logits[:1], "sample", u[:1]))


@pytest.mark.parametrize("start, steps, batch", [(0, 5, 1), (7, 11, 3), (1000, 3, 64)])
def test_uniform_blocks_are_rows_of_the_reference_uniforms(start, steps, batch):
    assert np.array_equal(uniforms(12345, steps, batch, start=start), uniforms(12345, start + steps, batch)[start:])


def test_sampler_rejects_bad_options():
    with pytest.raises(InputError, match="temperature must be a finite number"):
        Sampler(1, 8, "sample", 0.0)
    with pytest.raises(InputError, match="unknown sampling method"):
        Sampler(1, 8, "beam")


# ---- the lowered step graph -------------------------------------------------------------------
@pytest.mark.parametrize("name, layout", EXPORTS)
def test_exported_fp32_step_graph_is_lowered(exports, name, layout):
    graph = onnx.load(str(exports[name, layout] / "step.onnx"))
    note = {p.key: p.value for p in graph.metadata_props}["wn_export.lowering"]
    assert note.startswith("lowered"), note
    ops = {n.op_type for n in graph.graph.node}
    assert "Conv" not in ops and "Gemm" in ops  # 1×1 and dilated convolutions became Gemms
    cfg = CONFIGS[name]
    # one skip Gemm for all layers: the per-layer skip projections are gone
    assert sum(n.op_type == "Gemm" for n in graph.graph.node) <= 3 * cfg.layers + 5


@pytest.mark.parametrize("name, layout", EXPORTS)
def test_lowered_step_graph_teacher_forced_matches_the_reference(exports, name, layout):
    directory = exports[name, layout]
    manifest = read_manifest(directory)
    cfg = manifest.config
    model = random_model(CONFIGS[name], seed=3).double()
    rng = np.random.default_rng(1)
    T = cfg.receptive_field + 20
    tokens = rng.integers(0, cfg.quantization_channels, (2, T))
    with torch.no_grad():
        cond = model.upsample(torch.as_tensor(rng.standard_normal((2, cfg.local_channels, -(-T // cfg.hop_size)))),
                              T).numpy() if cfg.local else None
    speaker = rng.integers(0, cfg.speakers, 2) if cfg.global_ else None
    with OrtStepRunner(manifest) as runner:
        got = runner.teacher_force(tokens, None if cond is None else cond.astype(np.float32), speaker)
    with TorchStepRunner(model) as ref:
        want = ref.teacher_force(tokens, cond, speaker)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def _traced_step(cfg, layout="ring"):
    import io
    import warnings

    wrapper = build_graph(random_model(cfg, seed=1), "step", FP32, layout)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(example_inputs(wrapper.spec, cfg)), buf, dynamo=False, opset_version=17,
                          input_names=[t.name for t in wrapper.spec.inputs],
                          output_names=[t.name for t in wrapper.spec.outputs], dynamic_axes=wrapper.spec.dynamic_axes())
    return wrapper, onnx.load_from_string(buf.getvalue())


def test_lowering_refuses_a_structure_it_does_not_know():
    cfg = CONFIGS["k2"]
    wrapper, traced = _traced_step(cfg)
    assert lowering_error(wrapper, lower_step_graph(traced, wrapper.spec, cfg)) < 1e-5
    for node in traced.graph.node:  # a different gate non-linearity: not the WaveNet gate any more
        if node.op_type == "Tanh":
            node.op_type = "Relu"
            break
    with pytest.raises(UnsupportedGraph, match="expected one Tanh"):
        lower_step_graph(traced, wrapper.spec, cfg)
    # and the wrapper keeps such a graph as traced, saying why
    kept = lower_pass(traced, wrapper)
    assert kept is traced
    assert {p.key: p.value for p in kept.metadata_props}["wn_export.lowering"].startswith("not lowered")


def test_lowering_verification_catches_a_wrong_rewrite(monkeypatch):
    from wn_export.errors import ExportError
    from wn_export.export import lowering as step_lowering

    cfg = CONFIGS["k2"]
    wrapper, traced = _traced_step(cfg)
    real = step_lowering._emit

    def broken(model, plan, spec, cfg_):
        plan["layers"][1].skip_w = plan["layers"][1].skip_w * 1.01  # a 1% error in one skip projection
        return real(model, plan, spec, cfg_)

    monkeypatch.setattr(step_lowering, "_emit", broken)
    with pytest.raises(ExportError, match="lowered step graph differs"):
        lower_pass(traced, wrapper)


VARIANTS = {  # WaveNetConfig variants the lowering covers (True) or leaves traced (False)
    "separate-gate": (dict(separate_gate=True, local_channels=2, hop_size=2), True),
    "r9y9-legacy-skip": (dict(legacy_skip_scale=True, scale_residual=True), True),
    "no-last-residual+per-conv-bias": (dict(last_residual=False, skip_bias=False, residual_bias=False), True),
    "front-end-conv": (dict(initial_filter_width=3), False),
    "scalar-input": (dict(input_kind="scalar"), False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("layout", ["ring", "full"])
def test_lowering_covers_the_variants_it_knows_and_keeps_the_others_traced(tmp_path, variant, layout):
    kw, lowered = VARIANTS[variant]
    cfg = WaveNetConfig(quantization_channels=16, residual_channels=6, gate_channels=8, skip_channels=5,
                        layers=4, stacks=2, **kw)
    save_checkpoint(random_model(cfg, seed=2), tmp_path / "m.safetensors")
    export_directory(tmp_path / "d", tmp_path / "m.safetensors", layout=layout)
    note = {p.key: p.value for p in onnx.load(str(tmp_path / "d" / "step.onnx")).metadata_props}["wn_export.lowering"]
    assert note.startswith("lowered" if lowered else "not lowered"), note
    features = np.random.default_rng(0).standard_normal((1, 2, 60)) if cfg.local else None
    with open_generator(tmp_path / "d") as gen:
        a = gen.generate(120, 2, seed=9, features=features)
    with open_generator(tmp_path / "d", "torch") as gen:
        b = gen.generate(120, 2, seed=9, features=features)
    assert np.array_equal(a, b)


# ---- the ring writer ----------------------------------------------------------------------------
@pytest.mark.parametrize("table_limit", [1 << 20, 100, 0])
def test_ring_writer_matches_the_manifest_rule(table_limit):
    rings = ((0, 1), (1, 4), (5, 3), (8, 6))  # (offset, length) as the manifest's StateRecord holds them
    B, R = 3, 5
    state, update = np.zeros((B, 14, R), np.float32), np.zeros((B, 4, R), np.float32)
    ring, want = _Ring(state, update, rings, table_limit), np.zeros_like(state)
    # period 12: 48 entries per table, 144 with every stream's rows
    assert bool(ring.period) == bool(table_limit) and (ring.full is not None) == (table_limit > 144)
    rng = np.random.default_rng(0)
    for position in range(50):
        update[...] = rng.standard_normal(update.shape)
        ring.write(position)
        for l, (offset, length) in enumerate(rings):
            want[:, offset + position % length] = update[:, l]
        assert np.array_equal(state, want)


# ---- generation through the host API ----------------------------------------------------------
@pytest.mark.parametrize("name, layout", EXPORTS)
def test_fp32_generation_is_identical_on_onnxruntime_and_the_reference(exports, name, layout):
    cfg = CONFIGS[name]
    kw = dict(seed=11, temperature=0.9, **_conditioning(cfg, 2, 300))
    with open_generator(exports[name, layout], "onnxruntime") as gen:
        ort_tokens = gen.generate(300, 2, **kw)
    with open_generator(exports[name, layout], "torch") as gen:
        ref_tokens = gen.generate(300, 2, **kw)
    assert ort_tokens.shape == (2, 300) and ort_tokens.dtype == np.int64
    assert np.array_equal(ort_tokens, ref_tokens)
    assert len(np.unique(ort_tokens)) > 3  # really sampled, not stuck


def test_generation_is_deterministic_for_a_seed_and_differs_across_seeds(exports):
    d = exports["k2", "ring"]
    with open_generator(d) as gen:
        a = gen.generate(200, 3, seed=5)
        b = gen.generate(200, 3, seed=5)
        c = gen.generate(200, 3, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # streams draw different uniforms


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_streaming_output_equals_one_shot_output(exports, backend):
    d = exports["conditioned", "full"]
    kw = dict(seed=2, **_conditioning(CONFIGS["conditioned"], 2, 257))
    seen = []
    with open_generator(d, backend) as gen:
        whole = gen.generate(257, 2, **kw)
        for chunk in (1, 7, 100, 257, 1000):
            parts = list(gen.stream(257, 2, chunk=chunk, progress=lambda done, n: seen.append((done, n)), **kw))
            assert [p.shape[1] for p in parts[:-1]] == [chunk] * (len(parts) - 1)
            assert np.array_equal(np.concatenate(parts, axis=1), whole)
    assert seen[-1] == (257, 257)


def test_greedy_generation_matches_across_backends(exports):
    d = exports["k3-odd", "full"]
    with open_generator(d) as gen:
        a = gen.generate(150, 2, method="greedy")
    with open_generator(d, "torch") as gen:
        b = gen.generate(150, 2, method="greedy")
    assert np.array_equal(a, b) and np.array_equal(a[0], a[1])  # greedy ignores the seed and the stream


def test_one_speaker_and_shared_features_broadcast_over_the_batch(exports):
    cfg = CONFIGS["conditioned"]
    d = exports["conditioned", "ring"]
    features = np.random.default_rng(0).standard_normal((cfg.local_channels, 40))
    with open_generator(d) as gen:
        a = gen.generate(100, 2, seed=1, features=features, speaker=2)
        b = gen.generate(100, 2, seed=1, features=np.stack([features] * 2), speaker=[2, 2])
    assert np.array_equal(a, b)


# ---- bad inputs --------------------------------------------------------------------------------
def test_bad_requests_give_one_clear_error(exports):
    cfg = CONFIGS["conditioned"]
    d = exports["conditioned", "ring"]
    ok = _conditioning(cfg, 1, 100)
    with pytest.raises(BackendError, match="unknown backend 'cuda'.*onnxruntime, torch, tensorrt"):
        Generator(d, "cuda")
    with open_generator(d) as gen:
        cases = [
            (dict(n=100, features=ok["features"][:, :, :10], speaker=1), "covers 10 frames × hop 4 = 40 samples"),
            (dict(n=100, features=None, speaker=1), "needs local conditioning"),
            (dict(n=100, features=ok["features"][:, :2], speaker=1), "must be \\(3, frames\\)"),
            (dict(n=100, features=ok["features"]), "needs a speaker id"),
            (dict(n=100, features=ok["features"], speaker=3), "speaker ids must lie in \\[0, 2\\]"),
            (dict(n=100, features=ok["features"], speaker=[0, 1, 2]), "one integer id or 1 of them"),
            (dict(n=0, **ok), "samples must be a positive integer"),
            (dict(n=100, batch=0, **ok), "batch must be a positive integer"),
            (dict(n=100, seed=-1, **ok), "seed must be an integer in \\[0, 2\\^64\\)"),
            (dict(n=100, temperature=0, **ok), "temperature must be a finite number"),
            (dict(n=100, method="top-k", **ok), "unknown sampling method"),
            (dict(n=100, chunk=0, **ok), "chunk must be a positive integer"),
        ]
        for kwargs, message in cases:
            with pytest.raises(InputError, match=message):
                gen.request(**kwargs)
    with open_generator(exports["k2", "ring"]) as gen:
        with pytest.raises(InputError, match="no local conditioning"):
            gen.request(10, features=np.zeros((1, 3, 10)))
        with pytest.raises(InputError, match="no global conditioning"):
            gen.request(10, speaker=0)


def test_batch_larger_than_the_engine_profile_is_refused_before_any_gpu_work(exports, tmp_path):
    import shutil

    d = tmp_path / "with-engine"
    shutil.copytree(exports["k2", "ring"], d)
    data = json.loads((d / "manifest.json").read_text())
    data["engines"] = {"step": {"file": "step.engine", "sha256": "0" * 64, "backend": "tensorrt",
                                "profiles": [{"token": {"min": [1], "opt": [2], "max": [4]},
                                              "state": {"min": [1, 32, 6], "opt": [2, 32, 6], "max": [4, 32, 6]}}]}}
    (d / "manifest.json").write_text(json.dumps(data))
    gen = Generator(d, "tensorrt")
    assert gen.max_batch == 4
    gen.request(10, batch=4)
    with pytest.raises(InputError, match="batch 8 is larger than the TensorRT engine's profile allows \\(4\\)"):
        gen.request(10, batch=8)
    with pytest.raises(ArtifactError, match="no TensorRT engine for 'step'"):
        Generator(exports["k2", "ring"], "tensorrt")


def test_fp16_requests_need_fp16_graphs(exports):
    with pytest.raises(ArtifactError, match="no 'step.fp16' graph"):
        Generator(exports["k2", "ring"], precision="fp16")
    with pytest.raises(InputError, match="unknown precision"):
        Generator(exports["k2", "ring"], precision="int8")


# ---- files and the CLI --------------------------------------------------------------------------
def _wav(path):
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnframes(), w.getsampwidth()


def test_generate_to_wav_writes_decoded_audio_and_a_plot(exports, tmp_path):
    pytest.importorskip("matplotlib")
    d = exports["k2", "ring"]
    paths = generate_to_wav(d, tmp_path / "a.wav", 400, batch=2, seed=3, plot=True)
    assert [p.name for p in paths] == ["a.0.wav", "a.1.wav", "a.png"]
    rate = read_manifest(d).config.sample_rate
    assert _wav(paths[0]) == (rate, 400, 2)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open_generator(d) as gen:  # the WAV holds the μ-law decoded tokens
        audio = gen.decode(gen.generate(400, 2, seed=3))
    with wave.open(str(paths[1]), "rb") as w:
        pcm = np.frombuffer(w.readframes(400), dtype="<i2")
    assert np.array_equal(pcm, np.round(np.clip(audio[1], -1, 1) * 32767).astype("<i2"))
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind


def test_cli_generate(exports, tmp_path):
    from cli import main

    d = exports["conditioned", "ring"]
    cfg = CONFIGS["conditioned"]
    np.save(tmp_path / "feat.npy", np.random.default_rng(0).standard_normal((cfg.local_channels, 100)))
    runner = CliRunner()
    out = tmp_path / "x.wav"
    r = runner.invoke(main, ["generate", str(d), "-n", "300", "-o", str(out), "--cond", str(tmp_path / "feat.npy"),
                             "--speaker", "1", "--seed", "4", "--temperature", "0.8"])
    assert r.exit_code == 0, r.output
    assert _wav(out)[1] == 300 and str(out) in r.output
    bad = [
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["--speaker", "1", "--cond", str(tmp_path / "missing.npy")], "cannot read conditioning features"),
        (["--speaker", "x1", "--cond", str(tmp_path / "feat.npy")], "speaker must be an integer"),
        (["--speaker", "1"], "needs local conditioning"),
        (["--speaker", "1", "--cond", str(tmp_path / "feat.npy"), "-n", "500"], "fewer than the 500 samples"),
        (["--speaker", "1", "--cond", str(tmp_path / "feat.npy"), "--method", "argmax"], "unknown sampling method"),
    ]
    for extra, message in bad:
        args = ["generate", str(d), "-n", "300", "-o", str(tmp_path / "bad.wav"), *extra]
        r = runner.invoke(main, args)
        assert r.exit_code == 1, (extra, r.output)
        assert message in r.output and r.output.strip().count("\n") == 0, r.output  # one line
        assert not (tmp_path / "bad.wav").exists()
    r = runner.invoke(main, ["generate", str(tmp_path / "nowhere"), "-n", "10", "-o", str(tmp_path / "y.wav")])
    assert r.exit_code == 1 and "does not exist" in r.output
