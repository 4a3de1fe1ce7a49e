"""The architecture variants of the common WaveNet implementations: each one step ≡ forward in
float64, exported (ring and full state layouts), judged by the parity harness, and read by a host that
knows only the manifest. Plus their config validation, checkpoint names, the mixture-of-logistics
likelihood and sampler, and the r9y9 upsampling network."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from reference_model import (
    ConfigError,
    WaveNet,
    WaveNetConfig,
    load_checkpoint,
    mol_draw,
    mol_uniforms,
    mulaw_encode,
    save_checkpoint,
    uniforms,
)
from reference_model.mixture import mol_log_prob
from tests.conftest import assert_exact_receptive_field, random_model
from wn_export.backends.torch_ref import TorchScoringRunner, TorchStepRunner
from wn_export.export.pipeline import export_directory
from wn_export.generation.loop import generate
from wn_export.parity.harness import run_parity

SMALL = dict(quantization_channels=16, residual_channels=5, gate_channels=8, skip_channels=6, kernel_size=2,
             layers=4)
VARIANTS = {
    # Keras formulation: no residual 1×1 in the last layer; per-conv biases
    "keras-last-no-residual": WaveNetConfig(**SMALL, last_residual=False, dilated_bias=False, skip_bias=False,
                                            residual_bias=True),
    # ibab tensorflow-wavenet: one-hot input through an initial causal conv of width 2, no biases
    "ibab-onehot-w2": WaveNetConfig(**SMALL, initial_filter_width=2, bias=False),
    # ibab with scalar input, initial_filter_width 5 (their 32, shrunk), categorical output, conditioned
    "ibab-scalar-w5": WaveNetConfig(**SMALL, input_kind="scalar", initial_filter_width=5, input_bias=True,
                                    local_channels=2, hop_size=2, speakers=2, speaker_channels=3),
    # separate filter and gate tensors (and conditioning projections), kernel 3
    "separate-gate": WaveNetConfig(**{**SMALL, "kernel_size": 3, "layers": 3}, separate_gate=True,
                                   local_channels=2, hop_size=2, speakers=2, speaker_channels=3),
    # r9y9: scalar input, mixture of logistics, legacy skip scaling, transposed-conv upsampling
    "r9y9-mol": WaveNetConfig(**{**SMALL, "quantization_channels": 65536, "kernel_size": 3}, stacks=2,
                              input_kind="scalar", input_bias=True, output_kind="mol", mixtures=3,
                              legacy_skip_scale=True, scale_residual=True, local_channels=3, hop_size=6,
                              upsample="conv_transpose", upsample_scales=(2, 3)),
    # μ-law companded scalar samples with an initial filter: the front-end state with a mol output
    "scalar-mulaw-mol-w3": WaveNetConfig(**{**SMALL, "quantization_channels": 256}, input_kind="scalar",
                                         scalar_mulaw=True, initial_filter_width=3, output_kind="mol", mixtures=2),
}


def _inputs(cfg: WaveNetConfig, batch: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if cfg.scalar_input:
        tokens = (torch.rand(batch, T, generator=g, dtype=torch.float64) * 2 - 1).float().double()
    else:
        tokens = torch.randint(0, cfg.quantization_channels, (batch, T), generator=g)
    cond = (torch.randn(batch, cfg.local_channels, -(-T // cfg.hop_size), generator=g, dtype=torch.float64)
            if cfg.local else None)
    speaker = torch.randint(0, cfg.speakers, (batch,), generator=g) if cfg.global_ else None
    return tokens, cond, speaker


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return request.param


@torch.no_grad()
def test_step_equals_forward_float64(variant):
    cfg = VARIANTS[variant]
    model = random_model(cfg).double()
    B, T = 3, 3 * cfg.receptive_field + 5
    tokens, cond, speaker = _inputs(cfg, B, T)
    full = model(tokens, cond, speaker)  # (B, T, O)
    assert full.shape == (B, T, cfg.output_channels)
    per_sample = model.upsample(cond, T) if cfg.local else None
    state = model.initial_state(B)
    for t in range(T):
        out, state = model.step(tokens[:, t], state, None if cond is None else per_sample[:, :, t], speaker)
        torch.testing.assert_close(out, full[:, t], rtol=0, atol=1e-10)
    assert full.abs().max() > 0.1


def test_causality_and_exact_receptive_field(variant):
    cfg = VARIANTS[variant]
    assert_exact_receptive_field(random_model(cfg).double(), *_inputs(cfg, 1, 2 * cfg.receptive_field))


def test_front_end_receptive_field_counts_its_width():
    assert VARIANTS["ibab-scalar-w5"].receptive_field == (1 + 2 + 4 + 8) + 1 + 4
    assert VARIANTS["ibab-onehot-w2"].receptive_field == (1 + 2 + 4 + 8) + 1 + 1


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    out = {}
    for name, cfg in VARIANTS.items():
        ckpt = root / f"{name}.safetensors"
        save_checkpoint(random_model(cfg), ckpt)
        out[name] = (root / name, ckpt)
        export_directory(root / name, ckpt, fp16=name in ("ibab-scalar-w5", "r9y9-mol"))
    for name in ("ibab-scalar-w5", "scalar-mulaw-mol-w3"):  # front-end state in the full layout too
        export_directory(root / f"{name}-full", out[name][1], layout="full")
        out[f"{name}-full"] = (root / f"{name}-full", out[name][1])
    return out


@pytest.mark.parametrize("name", [*sorted(VARIANTS), "ibab-scalar-w5-full", "scalar-mulaw-mol-w3-full"])
def test_exported_variants_pass_parity(exports, name):
    directory, _ = exports[name]
    report = run_parity(directory, generation_samples=300)
    assert report, [(c.name, c.graph, c.failures) for c in report.checks if not c]
    gen = next(c for c in report.checks if c.name == "step/generation" and c.graph == "step")
    assert gen.metrics["first_divergence"] == -1 and gen.metrics["samples"] == 300


def test_manifest_contract_of_variants(exports):
    m = json.loads((exports["ibab-scalar-w5"][0] / "manifest.json").read_text())
    step, scoring = m["graphs"]["step"], m["graphs"]["scoring"]
    assert scoring["inputs"][0] == {"name": "samples", "role": "samples", "dtype": "float32", "shape": ["batch", "time"]}
    assert step["inputs"][0] == {"name": "sample", "role": "sample", "dtype": "float32", "shape": ["batch"]}
    assert [s["input"] for s in step["state"]] == ["state", "input_state"]
    front = step["state"][1]
    assert front == {"input": "input_state", "output": "input_state_update", "dtype": "float32",
                     "shape": ["batch", 4, 1], "init": 0.0, "update": "ring", "position": "position",
                     "rings": [{"offset": 0, "length": 4}]}
    assert m["graphs"]["step.fp16"]["state"][1]["dtype"] == "float16"
    full = json.loads((exports["ibab-scalar-w5-full"][0] / "manifest.json").read_text())["graphs"]["step"]
    assert [s["input"] for s in full["state"]][:2] == ["state.input", "state.0"]
    assert full["state"][0]["shape"] == ["batch", 1, 4]
    mol = json.loads((exports["r9y9-mol"][0] / "manifest.json").read_text())["graphs"]
    assert mol["scoring"]["outputs"][0] == {"name": "mol_params", "role": "mol_params", "dtype": "float32",
                                            "shape": ["batch", "time", 9]}
    assert mol["step"]["outputs"][0]["shape"] == ["batch", 9] and "upsample" in mol
    onehot = json.loads((exports["ibab-onehot-w2"][0] / "manifest.json").read_text())["graphs"]["step"]
    assert onehot["inputs"][0]["role"] == "token" and onehot["state"][1]["shape"] == ["batch", 1, 16]


def _manifest_only_host(directory, tokens, cond, speaker):
    """A generic host written against manifest.json alone: teacher-forced step graph, every state rule
    and input/output role of the variants (scalar samples, mixture parameters, several ring states)."""
    m = json.loads((directory / "manifest.json").read_text())
    g = m["graphs"]["step"]
    sess = ort.InferenceSession(str(directory / g["file"]), providers=["CPUExecutionProvider"])
    B, T = tokens.shape
    buffers = {s["input"]: np.full([B if d == "batch" else d for d in s["shape"]], s["init"], dtype=s["dtype"])
               for s in g["state"]}
    out = []
    for t in range(T):
        feeds = dict(buffers)
        for i in g["inputs"]:
            if i["role"] in ("token", "sample"):
                feeds[i["name"]] = tokens[:, t].astype(i["dtype"])
            elif i["role"] == "cond":
                feeds[i["name"]] = cond[:, :, t].astype(i["dtype"])
            elif i["role"] == "speaker":
                feeds[i["name"]] = speaker.astype(i["dtype"])
            elif i["role"] == "position":
                feeds[i["name"]] = np.array([t], dtype=i["dtype"])
        names = [o["name"] for o in g["outputs"]]
        res = dict(zip(names, sess.run(names, feeds)))
        out.append(res[next(o["name"] for o in g["outputs"] if o["role"] in ("logits", "mol_params"))])
        for s in g["state"]:
            if s["update"] == "replace":
                buffers[s["input"]] = res[s["output"]]
            else:
                for row, ring in enumerate(s["rings"]):
                    buffers[s["input"]][:, ring["offset"] + t % ring["length"], :] = res[s["output"]][:, row, :]
    return np.stack(out, axis=1)


@pytest.mark.parametrize("name", ["ibab-scalar-w5", "ibab-onehot-w2", "scalar-mulaw-mol-w3",
                                  "scalar-mulaw-mol-w3-full"])
def test_manifest_only_host_reproduces_reference(exports, name):
    directory, ckpt = exports[name]
    model = load_checkpoint(ckpt)
    cfg = model.cfg
    tokens, frames, speaker = _inputs(cfg, 2, 3 * cfg.receptive_field, seed=3)
    tokens = tokens.numpy().astype(np.float32 if cfg.scalar_input else np.int64)
    ref = TorchScoringRunner(model.double())
    cond = None if frames is None else ref.upsample(frames.numpy())[:, :, :tokens.shape[1]].astype(np.float32)
    spk = None if speaker is None else speaker.numpy()
    want = ref.infer(tokens, cond, spk)["mol_params" if cfg.mol else "logits"]
    got = _manifest_only_host(directory, tokens, cond, spk)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.abs(want).max() > 0.3


# ---- checkpoint names and parameters ----------------------------------------------------------------
def test_default_config_checkpoint_names_are_unchanged():
    cfg = WaveNetConfig(quantization_channels=8, residual_channels=3, gate_channels=4, skip_channels=5, layers=2,
                        local_channels=2, speakers=2, speaker_channels=2)
    layer = ["conv.weight", "conv.bias", "cond.weight", "speaker.weight", "skip.weight", "skip.bias",
             "out.weight", "out.bias"]
    assert list(WaveNet(cfg).state_dict()) == [
        "embed.weight", "speaker_embed.weight", *[f"layers.{i}.{n}" for i in range(2) for n in layer],
        "head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"]


def test_variant_parameters():
    keys = set(WaveNet(VARIANTS["keras-last-no-residual"]).state_dict())
    assert "layers.2.out.weight" in keys and not any(k.startswith("layers.3.out") for k in keys)
    assert not any(k.endswith("conv.bias") or k.endswith("skip.bias") for k in keys)
    assert "layers.0.out.bias" in keys and "head.3.bias" in keys
    keys = set(WaveNet(VARIANTS["ibab-onehot-w2"]).state_dict())
    assert "input_conv.weight" in keys and "embed.weight" not in keys and not any(k.endswith("bias") for k in keys)
    assert WaveNet(VARIANTS["ibab-onehot-w2"]).input_conv.weight.shape == (5, 16, 2)
    keys = set(WaveNet(VARIANTS["separate-gate"]).state_dict())
    assert {"layers.0.filter.weight", "layers.0.gate.bias", "layers.0.cond_filter.weight",
            "layers.0.speaker_gate.weight"} <= keys and "layers.0.conv.weight" not in keys
    keys = set(WaveNet(VARIANTS["r9y9-mol"]).state_dict())
    assert {"upsample_convs.0.weight", "upsample_convs.1.bias", "input_conv.bias"} <= keys
    assert WaveNet(VARIANTS["r9y9-mol"]).head[-1].weight.shape[0] == 9


@torch.no_grad()
def test_last_layer_residual_is_unused_output():
    """Dropping the last residual 1×1 changes no output: the same weights give the same outputs."""
    cfg = VARIANTS["keras-last-no-residual"]
    without = random_model(cfg).double()
    with_ = WaveNet(WaveNetConfig(**{**cfg.to_dict(), "last_residual": True})).double()
    missing = with_.load_state_dict(without.state_dict(), strict=False)
    assert missing.missing_keys == ["layers.3.out.weight", "layers.3.out.bias"]
    tokens, _, _ = _inputs(cfg, 2, 40)
    torch.testing.assert_close(with_(tokens), without(tokens), rtol=0, atol=0)


@torch.no_grad()
def test_separate_filter_gate_maps_onto_the_split_convolution(exports):
    """Separate filter/gate tensors = the split convolution with them concatenated (filter first), and
    the exported graph runs ONE dilated conv per layer, like the split model."""
    cfg = VARIANTS["separate-gate"]
    sep = random_model(cfg).double()
    split = WaveNet(WaveNetConfig(**{**cfg.to_dict(), "separate_gate": False})).double()
    s = sep.state_dict()
    mapped = {k: v for k, v in s.items() if ".layers." not in f".{k}" or not any(
        p in k for p in ("filter", "gate"))}
    for i in range(cfg.layers):
        p = f"layers.{i}."
        mapped[p + "conv.weight"] = torch.cat([s[p + "filter.weight"], s[p + "gate.weight"]])
        mapped[p + "conv.bias"] = torch.cat([s[p + "filter.bias"], s[p + "gate.bias"]])
        mapped[p + "cond.weight"] = torch.cat([s[p + "cond_filter.weight"], s[p + "cond_gate.weight"]])
        mapped[p + "speaker.weight"] = torch.cat([s[p + "speaker_filter.weight"], s[p + "speaker_gate.weight"]])
    split.load_state_dict(mapped)
    tokens, cond, speaker = _inputs(cfg, 2, 30)
    torch.testing.assert_close(split(tokens, cond, speaker), sep(tokens, cond, speaker), rtol=0, atol=1e-12)
    graph = onnx.load(str(exports["separate-gate"][0] / "scoring.onnx"))
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    # dilated, cond, residual, skip per layer (the last layer's residual output is unused), two in the head
    assert len(convs) == cfg.layers * 4 - 1 + 2


@torch.no_grad()
def test_conv_transpose_upsampling_is_r9y9s_network():
    cfg = VARIANTS["r9y9-mol"]
    model = random_model(cfg).double()
    frames = torch.rand(2, cfg.local_channels, 5, dtype=torch.float64)
    c = frames.unsqueeze(1)
    for conv in model.upsample_convs:  # their loop: ConvTranspose2d then ReLU, over (B, 1, C, frames)
        c = torch.relu(F.conv_transpose2d(c, conv.weight, conv.bias, stride=(1, conv.weight.shape[3]),
                                          padding=((cfg.upsample_freq_kernel - 1) // 2, 0)))
    torch.testing.assert_close(model.upsample(frames), c.squeeze(1), rtol=0, atol=1e-12)
    assert model.upsample(frames).shape == (2, cfg.local_channels, 5 * cfg.hop_size)


# ---- output kinds ------------------------------------------------------------------------------------
def test_mol_likelihood_is_a_distribution_over_the_bins():
    Q = 64
    torch.manual_seed(0)
    params = torch.randn(5, 9, dtype=torch.float64)
    params[:, 6:] = params[:, 6:] * 0.5 - 2.0  # log scales around −2: masses above 1e-5 near the modes
    bins = torch.linspace(-1, 1, Q, dtype=torch.float64)
    ll = mol_log_prob(params[:, None, :].expand(5, Q, 9), bins.expand(5, Q), Q, -7.0)
    np.testing.assert_allclose(ll.exp().sum(-1).numpy(), 1.0, atol=2e-3)
    assert (ll.exp() > 0.05).any()


@torch.no_grad()
def test_scalar_categorical_log_prob_is_mulaw_class_of_next_sample():
    cfg = VARIANTS["ibab-scalar-w5"]
    model = random_model(cfg).double()
    tokens, cond, speaker = _inputs(cfg, 2, 30)
    out = model(tokens, cond, speaker)
    target = torch.as_tensor(mulaw_encode(tokens[:, 1:].numpy(), cfg.quantization_channels))
    want = torch.log_softmax(out[:, :-1], -1).gather(-1, target[..., None])[..., 0]
    torch.testing.assert_close(model.log_prob(out, tokens), want)


def test_mol_sampler_consumes_two_uniforms_per_sample():
    params = np.array([[0.0, 2.0, -1.0, 0.5, -0.3, 0.9, -2.0, -3.0, -1.0],
                       [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -9.0, -9.0, -9.0]])
    u = mol_uniforms(42, 3, 2)
    assert u.shape == (3, 2, 2) and np.array_equal(u.reshape(3, 4), uniforms(42, 3, 4))
    x = mol_draw(params, "sample", u[1], log_scale_min=-7.0)
    assert x.dtype == np.float32
    for b in range(2):  # by hand: inverse CDF over the weights with u₁, then the logistic with u₂
        w = np.exp(params[b, :3] - params[b, :3].max())
        k = int(np.searchsorted(np.cumsum(w), u[1, b, 0] * w.sum(), side="right"))
        v = 1e-5 + u[1, b, 1] * (1 - 2e-5)
        want = params[b, 3 + k] + np.exp(max(params[b, 6 + k], -7.0)) * np.log(v / (1 - v))
        assert x[b] == np.float32(np.clip(want, -1, 1))
    assert np.array_equal(mol_draw(params, "greedy"), np.float32([-0.3, 0.0]))


def test_mol_sampler_matches_the_mixture():
    params = np.array([[np.log(0.3), np.log(0.7), -0.5, 0.4, np.log(0.05), np.log(0.1)]])
    u = mol_uniforms(7, 20000, 1)
    x = np.array([mol_draw(params, "sample", u[t]) for t in range(len(u))])[:, 0]
    q = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    # CDF of the mixture at the empirical quantiles
    cdf = lambda y: 0.3 / (1 + np.exp(-(y + 0.5) / 0.05)) + 0.7 / (1 + np.exp(-(y - 0.4) / 0.1))  # noqa: E731
    np.testing.assert_allclose(cdf(np.quantile(x, q)), q, atol=0.015)


def test_mol_generation_is_seeded_float_samples():
    cfg = VARIANTS["scalar-mulaw-mol-w3"]
    model = random_model(cfg)
    with TorchStepRunner(model) as runner:
        a = generate(runner, 50, 2, seed=3, cfg=cfg)
        b = generate(runner, 50, 2, seed=3, cfg=cfg)
        c = generate(runner, 50, 2, seed=4, cfg=cfg)
    assert a.dtype == np.float32 and a.shape == (2, 50) and np.abs(a).max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.unique(a).size > 50


# ---- config -----------------------------------------------------------------------------------------
def test_variant_configs_round_trip_json():
    for cfg in VARIANTS.values():
        assert WaveNetConfig.from_json(cfg.to_json()) == cfg
    old = {k: v for k, v in WaveNetConfig().to_dict().items() if k in (
        "quantization_channels", "residual_channels", "layers", "bias")}  # a config written before variants
    assert WaveNetConfig.from_dict(old) == WaveNetConfig()


@pytest.mark.parametrize("changes, message", [
    (dict(input_kind="raw"), "input_kind must be one of onehot, scalar"),
    (dict(output_kind="gauss"), "output_kind must be one of categorical, mol"),
    (dict(output_kind="mol", mixtures=2), "output_kind 'mol' needs input_kind 'scalar'"),
    (dict(input_kind="scalar", output_kind="mol"), "needs mixtures >= 1"),
    (dict(mixtures=3), "mixtures is only for output_kind 'mol'"),
    (dict(initial_filter_width=0), "initial_filter_width must be an integer >= 1"),
    (dict(input_bias=True), "input_bias needs input_kind 'scalar' or initial_filter_width > 1"),
    (dict(scalar_mulaw=True), "scalar_mulaw needs input_kind 'scalar'"),
    (dict(skip_bias="yes"), "skip_bias must be true, false or null"),
    (dict(last_residual=0), "last_residual must be true or false"),
    (dict(scale_skip=True, legacy_skip_scale=True), "choose one"),
    (dict(log_scale_min=float("nan")), "log_scale_min must be a finite number"),
    (dict(upsample="conv_transpose"), "needs local conditioning"),
    (dict(local_channels=2, hop_size=6, upsample="conv_transpose"), "needs upsample_scales"),
    (dict(local_channels=2, hop_size=6, upsample="conv_transpose", upsample_scales=[2, 2]),
     r"product of upsample_scales \[2, 2\] is 4, but hop_size is 6"),
    (dict(local_channels=2, hop_size=4, upsample_scales=[2, 2]), "only for upsample 'conv_transpose'"),
    (dict(local_channels=2, hop_size=4, upsample="conv_transpose", upsample_scales=[2, 2], upsample_freq_kernel=2),
     "upsample_freq_kernel must be odd"),
    (dict(upsample_scales="x"), "upsample_scales must be a list of integers"),
])
def test_variant_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        WaveNetConfig(**{**SMALL, **changes})


def test_scalar_model_input_errors():
    from reference_model import InputError

    model = random_model(VARIANTS["scalar-mulaw-mol-w3"])
    with pytest.raises(InputError, match="scalar samples"):
        model(torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(InputError, match="finite"):
        model(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(InputError, match="stateful front end"):
        model.step(torch.zeros(1), model.initial_state(1)[1:])
