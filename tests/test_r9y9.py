"""`wn-export import r9y9`: their model (PyPI wavenet_vocoder 0.1.1, the real package) in several
configurations → import → our reference forward, exported scoring graph and step graph against their
`forward` and `incremental_forward`, judged with the parity harness's FP32 tolerances.

Shims for their 2018 release on current PyTorch live here, not in the package: `weight_norm` and
backward-hook deprecation warnings are silenced, `incremental_forward` gets an explicit initial input
(its default hard-codes class 127) and, for scalar input, a stand-in for their mixture sampler that
records the raw parameters (their loop only returns samples).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import wavenet_vocoder  # the test dependency (pyproject `dev` extra): a missing package fails, never skips
import wavenet_vocoder.wavenet
from click.testing import CliRunner

from cli import main
from reference_model import load_checkpoint, save_checkpoint
from wn_export.backends.onnxruntime.runner import OrtScoringRunner, OrtStepRunner, OrtUpsampleRunner
from wn_export.contract.manifest import read_manifest
from wn_export.export.pipeline import export_directory
from wn_export.importers import ImportError_, import_r9y9
from wn_export.parity.harness import judge, log_prob_metrics, logit_metrics, param_metrics, run_parity


@pytest.fixture(autouse=True)
def _quiet_old_api():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm, register_backward_hook
        warnings.simplefilter("ignore", UserWarning)  # F.sigmoid and friends
        yield


# their WaveNet(...) arguments, and the preset JSON given to the importer (None: no --hparams)
CASES = {
    "mulaw-k3": (dict(out_channels=32, layers=6, stacks=2, residual_channels=8, gate_channels=12,
                      skip_out_channels=10, kernel_size=3),
                 {"input_type": "mulaw-quantize", "quantize_channels": 32, "stacks": 2, "sample_rate": 16000}),
    "mol-scalar-upsample": (dict(out_channels=3 * 4, layers=6, stacks=3, residual_channels=8, gate_channels=8,
                                 skip_out_channels=6, kernel_size=3, scalar_input=True, cin_channels=3,
                                 upsample_conditional_features=True, upsample_scales=[2, 2],
                                 freq_axis_kernel_size=3),
                            {"input_type": "raw", "quantize_channels": 65536, "log_scale_min": -9.0, "stacks": 3,
                             "layers": 6, "upsample_conditional_features": True, "upsample_scales": [2, 2],
                             "cin_channels": 3, "hop_size": 4}),
    "local-upsample-nolegacy": (dict(out_channels=24, layers=4, stacks=2, residual_channels=6, gate_channels=10,
                                     skip_out_channels=7, kernel_size=3, cin_channels=3,
                                     upsample_conditional_features=True, upsample_scales=[2, 3],
                                     freq_axis_kernel_size=3, legacy=False),
                                {"stacks": 2, "legacy": False, "freq_axis_kernel_size": 3}),
    "global-local-plain": (dict(out_channels=20, layers=4, stacks=1, residual_channels=6, gate_channels=8,
                                skip_out_channels=5, kernel_size=3, gin_channels=4, n_speakers=3, cin_channels=2,
                                weight_normalization=False),
                           {"stacks": 1, "gin_channels": 4, "n_speakers": 3, "cin_channels": 2, "hop_size": 3}),
}


def their_model(kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """Their WaveNet with every parameter (weight-norm g and v included) drawn at a scale where every
    layer matters; float64 for the comparisons."""
    torch.manual_seed(seed)
    model = wavenet_vocoder.WaveNet(**kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if name.endswith("weight_g") else 0.3)
            if name.startswith("upsample_conv"):  # keep the upsampled features alive through the ReLUs
                p.abs_()
    return model.eval()


def their_inputs(kwargs, hparams, batch: int, T: int, seed: int = 1):
    """Inputs for their model and the same inputs in our convention."""
    g = torch.Generator().manual_seed(seed)
    scalar = kwargs.get("scalar_input", False)
    Q = kwargs["out_channels"]
    ours = {}
    if scalar:
        y = torch.rand(batch, T, generator=g, dtype=torch.float64) * 2 - 1
        y[0, 5], y[0, 7] = 1.0, -1.0  # the edge bins of the mixture likelihood
        y[1, 5], y[1, 7] = 0.995, -0.995  # just inside them
        y = y.float().double()  # representable in float32: the graphs see the same samples
        x = y.unsqueeze(1)  # (B, 1, T)
        ours["tokens"] = y.numpy().astype(np.float32)
    else:
        tok = torch.randint(0, Q, (batch, T), generator=g)
        x = torch.nn.functional.one_hot(tok, Q).double().transpose(1, 2)  # (B, Q, T)
        ours["tokens"] = tok.numpy()
    c = frames = None
    cin = kwargs.get("cin_channels", -1)
    if cin > 0:
        if kwargs.get("upsample_conditional_features"):
            hop = math.prod(kwargs["upsample_scales"])
            frames = torch.rand(batch, cin, T // hop, generator=g, dtype=torch.float64)
            c = frames
        else:  # their pipeline repeats frame features hop_size times before the model
            hop = hparams.get("hop_size", 1)
            frames = torch.rand(batch, cin, T // hop, generator=g, dtype=torch.float64)
            c = frames.repeat_interleave(hop, dim=-1)
        ours["frames"] = frames.numpy()
    spk = None
    if kwargs.get("gin_channels", -1) > 0:
        spk = torch.randint(0, kwargs["n_speakers"], (batch,), generator=g)
        ours["speaker"] = spk.numpy()
    return x, c, None if spk is None else spk.view(batch, 1), ours


def their_incremental(model, x, c, g, monkeypatch) -> torch.Tensor:
    """Teacher-forced `incremental_forward` → raw outputs (B, C, T) (logits, or mixture parameters)."""
    recorded = []

    def record(y, log_scale_min=-7.0):  # stands in for their sampler: keep the parameters
        recorded.append(y)
        return y.reshape(y.shape[0], -1)

    monkeypatch.setattr(wavenet_vocoder.wavenet, "sample_from_discretized_mix_logistic", record)
    with torch.no_grad():
        out = model.incremental_forward(initial_input=x[:, :, :1], c=c, g=g, T=None, test_inputs=x,
                                        softmax=False, quantize=False)
    return out


def _import(tmp_path, name, kwargs, hparams, *, wrap=True):
    model = their_model(kwargs)
    ckpt = tmp_path / f"{name}.pth"
    state = model.state_dict()
    if wrap:  # their train.py's checkpoint dict, with a DataParallel prefix
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": {},
                    "global_step": 10, "global_epoch": 1}, ckpt)
    else:
        torch.save(state, ckpt)
    ours, notes = import_r9y9(ckpt, hparams)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(ours, path)
    return model.double(), path, notes


def _judge(name, metrics):
    check = judge(name, "r9y9", "fp32", metrics)
    assert check, (name, check.failures, metrics)
    return metrics


MEASURED: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_import_matches_their_forward_and_incremental_forward(tmp_path, name, monkeypatch):
    kwargs, hparams = CASES[name]
    theirs, path, _ = _import(tmp_path, name, kwargs, hparams, wrap=name != "mulaw-k3")
    ref = load_checkpoint(path, torch.float64)
    cfg = ref.cfg
    mol = kwargs.get("scalar_input", False)
    assert cfg.mol == mol and cfg.scale_residual and cfg.legacy_skip_scale == kwargs.get("legacy", True)
    B, T = 2, 3 * cfg.receptive_field + 5
    T -= T % cfg.hop_size  # whole frames (their upsampler's output must equal T)
    x, c, g, ours = their_inputs(kwargs, hparams, B, T)
    with torch.no_grad():
        want = theirs(x, c, g).transpose(1, 2).numpy()  # (B, T, O)
    stepped = their_incremental(theirs, x, c, g, monkeypatch).transpose(1, 2).numpy()
    assert np.abs(want).max() > 0.3  # not a comparison of near-zero tensors
    metric = param_metrics if mol else logit_metrics
    tok = torch.as_tensor(ours["tokens"], dtype=torch.float64 if mol else torch.int64)
    frames = None if "frames" not in ours else torch.as_tensor(ours["frames"])
    speaker = None if "speaker" not in ours else torch.as_tensor(ours["speaker"])

    # their forward ≡ their incremental_forward (sanity of the shims)
    np.testing.assert_allclose(stepped, want, rtol=0, atol=1e-9)
    # our float64 reference forward and step
    with torch.no_grad():
        fwd = ref(tok, frames, speaker).numpy()
        cond_t = ref.upsample(frames, T) if cfg.local else None
        state, rows = ref.initial_state(B), []
        for t in range(T):
            out, state = ref.step(tok[:, t], state, None if cond_t is None else cond_t[:, :, t], speaker)
            rows.append(out)
        step = torch.stack(rows, 1).numpy()
    m = {"reference-forward": _judge("reference forward vs their forward", metric(fwd, want)),
         "reference-step": _judge("reference step vs their incremental_forward", metric(step, stepped))}
    assert m["reference-forward"]["max_abs"] < 1e-5  # float64 both: only the float32 checkpoint rounding

    # the exported graphs (ONNX Runtime, fp32)
    out_dir = tmp_path / "export"
    export_directory(out_dir, path)
    manifest = read_manifest(out_dir)
    cond = None
    if cfg.local:
        with OrtUpsampleRunner(manifest) as up:
            cond = up.upsample(ours["frames"])[:, :, :T]
        assert cond.std(axis=-1).min() > 0.01  # the conditioning varies: a wrong upsampler would show
    with OrtScoringRunner(manifest) as runner:
        scored = runner.infer(ours["tokens"], cond, ours.get("speaker"))
    with OrtStepRunner(manifest) as runner:
        teacher = runner.teacher_force(ours["tokens"], cond, ours.get("speaker"))
    key = "mol_params" if mol else "logits"
    m["scoring-graph"] = _judge("scoring graph vs their forward", metric(scored[key], want))
    m["step-graph"] = _judge("step graph vs their incremental_forward", metric(teacher, stepped))

    # log-likelihood of the next sample: theirs (loss / log-softmax, float64) vs the scoring graph
    if mol:
        from wavenet_vocoder.mixture import discretized_mix_logistic_loss

        y = torch.as_tensor(ours["tokens"], dtype=torch.float64)[:, 1:, None]
        ll = -discretized_mix_logistic_loss(torch.as_tensor(want).transpose(1, 2)[:, :, :-1], y,
                                            num_classes=cfg.quantization_channels,
                                            log_scale_min=cfg.log_scale_min, reduce=False)[..., 0].numpy()
    else:
        logp = torch.log_softmax(torch.as_tensor(want), -1)
        ll = logp[:, :-1].gather(-1, tok[:, 1:, None])[..., 0].numpy()
    m["log-prob"] = _judge("scoring graph log_prob vs theirs", log_prob_metrics(scored["log_prob"], ll))
    MEASURED[name] = {k: v.get("max_abs", v.get("ll_diff")) for k, v in m.items()}
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in MEASURED[name].items()))


@pytest.mark.parametrize("name", ["mol-scalar-upsample", "global-local-plain"])
def test_imported_models_pass_the_parity_harness(tmp_path, name):
    kwargs, hparams = CASES[name]
    _, path, _ = _import(tmp_path, name, kwargs, hparams)
    export_directory(tmp_path / "d", path, fp16=True)
    report = run_parity(tmp_path / "d", generation_samples=300)
    assert report, [(c.name, c.graph, c.failures) for c in report.checks if not c]
    gen = next(c for c in report.checks if c.name == "step/generation" and c.graph == "step")
    assert gen.metrics["first_divergence"] == -1


def test_freshly_initialised_checkpoint_imports_and_exports(tmp_path):
    """Their own init (all biases zero, so torch.onnx deduplicates them) imports and exports cleanly."""
    kwargs, hparams = CASES["mol-scalar-upsample"]
    torch.manual_seed(0)
    torch.save(wavenet_vocoder.WaveNet(**kwargs).state_dict(), tmp_path / "fresh.pth")
    model, _ = import_r9y9(tmp_path / "fresh.pth", hparams)
    save_checkpoint(model, tmp_path / "fresh.safetensors")
    assert (model.layers[0].conv.bias == 0).all()
    manifest = export_directory(tmp_path / "d", tmp_path / "fresh.safetensors")
    assert {"scoring", "step", "upsample"} <= set(manifest["graphs"])


def test_weight_norm_is_folded_and_g_matters(tmp_path):
    kwargs, hparams = CASES["mulaw-k3"]
    theirs, path, _ = _import(tmp_path, "wn", kwargs, hparams)
    ours = load_checkpoint(path, torch.float64)
    conv = theirs.conv_layers[2].conv
    with torch.no_grad():
        w = torch._weight_norm(conv.weight_v, conv.weight_g, 0)  # what their pre-forward hook computes
    torch.testing.assert_close(ours.layers[2].conv.weight, w, rtol=1e-6, atol=1e-7)
    assert (conv.weight_g.flatten().abs() - conv.weight_v.flatten(1).norm(dim=1)).abs().max() > 0.1  # g ≠ ‖v‖


def test_parametrizations_weight_norm_naming_is_folded():
    from wn_export.importers import fold_weight_norm

    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(3, 4, 2))
    with torch.no_grad():
        conv.parametrizations.weight.original0.normal_()
    state = {k: v.detach() for k, v in conv.state_dict().items()}
    assert "parametrizations.weight.original0" in state
    folded = fold_weight_norm({f"x.{k}": v for k, v in state.items()})
    assert set(folded) == {"x.weight", "x.bias"}
    torch.testing.assert_close(folded["x.weight"], conv.weight.detach())


def test_cli_import(tmp_path):
    kwargs, hparams = CASES["mol-scalar-upsample"]
    model = their_model(kwargs)
    torch.save({"state_dict": model.state_dict(), "global_step": 1}, tmp_path / "c.pth")
    (tmp_path / "preset.json").write_text(json.dumps({"name": "wavenet_vocoder", "builder": "wavenet",
                                                      **hparams}))
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(main, ["import", "r9y9", str(tmp_path / "c.pth"), "--hparams",
                                  str(tmp_path / "preset.json"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    cfg = load_checkpoint(out).cfg
    assert (cfg.mol, cfg.mixtures, cfg.log_scale_min, cfg.upsample_scales, cfg.quantization_channels) == (
        True, 4, -9.0, (2, 2), 65536)
    assert "mixture of 4 logistics" in r.output and str(out) in r.output
    # without hparams: stacks is not in the checkpoint
    r = CliRunner().invoke(main, ["import", "r9y9", str(tmp_path / "c.pth"), "-o", str(tmp_path / "n.safetensors")])
    assert r.exit_code != 0 and "--stacks" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["import", "r9y9", str(tmp_path / "c.pth"), "--stacks", "3",
                                  "-o", str(tmp_path / "n.safetensors")])
    assert r.exit_code == 0, r.output
    assert "log_scale_min" in r.output and "quantize_channels = 65536" in r.output  # assumed defaults noted


def _save(tmp_path, state, name="x.pth"):
    torch.save(state, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("change, hparams, message", [
    ("none", {"stacks": 4}, "stacks=4 does not divide layers=6"),
    ("none", {"stacks": 2, "layers": 8}, "hparams layers=8, but the checkpoint has 6"),
    ("none", {"stacks": 2, "input_type": "raw"}, "input_type='raw', but first_conv reads 32"),
    ("none", {"stacks": 2, "output_distribution": "Normal"}, "output_distribution='Normal' is not supported"),
    ("none", {"stacks": 2, "cin_pad": 2}, "cin_pad=2 is not supported"),
    ("none", {"stacks": 2, "builder": "wavenet_plus"}, "builder='wavenet_plus'"),
    ("upsample_net", {"stacks": 2}, "upsample_net"),
    ("no_embed", {"stacks": 2}, "use_speaker_embedding=False"),
    ("gaussian", {"stacks": 2}, "not 3 × mixtures"),
    ("even_freq", {"stacks": 2}, "freq_axis_kernel_size=2 is even"),
    ("out_mismatch", {"stacks": 2}, "differs from the 32 one-hot input classes"),
])
def test_unmappable_settings_give_clear_errors(tmp_path, change, hparams, message):
    kwargs = dict(CASES["mulaw-k3"][0])
    if change == "no_embed":
        kwargs.update(gin_channels=3, use_speaker_embedding=False)
    if change == "even_freq":
        kwargs.update(cin_channels=2, upsample_conditional_features=True, upsample_scales=[2],
                      freq_axis_kernel_size=2)
    if change == "gaussian":
        kwargs.update(scalar_input=True, out_channels=2)
    state = their_model(kwargs).state_dict()
    if change == "upsample_net":
        state["upsample_net.up_layers.1.weight"] = torch.zeros(1, 1, 3, 8)
    if change == "out_mismatch":
        state["last_conv_layers.3.weight_v"] = state["last_conv_layers.3.weight_v"][:30]
        state["last_conv_layers.3.weight_g"] = state["last_conv_layers.3.weight_g"][:30]
        state["last_conv_layers.3.bias"] = state["last_conv_layers.3.bias"][:30]
    with pytest.raises(ImportError_, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_r9y9(_save(tmp_path, state), hparams)


def test_unreadable_checkpoints(tmp_path):
    from reference_model.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        import_r9y9(tmp_path / "missing.pth", {"stacks": 1})
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        import_r9y9(tmp_path / "junk.pth", {"stacks": 1})
    with pytest.raises(CheckpointError, match="neither a state dict"):
        import_r9y9(_save(tmp_path, {"global_step": 3}), {"stacks": 1})
    (tmp_path / "h.json").write_text("stacks=2")
    with pytest.raises(ImportError_, match="not JSON"):
        import_r9y9(_save(tmp_path, their_model(CASES["mulaw-k3"][0]).state_dict()), tmp_path / "h.json")


@pytest.mark.parametrize("name", ["mulaw-k3", "global-local-plain"])
def test_bench_baseline_computes_their_incremental_forward(tmp_path, name, monkeypatch):
    """`wn-export bench`'s eager-incremental baseline (our re-implementation of their loop) on the imported
    model = their own `incremental_forward`, teacher-forced: the bench times their algorithm."""
    from wn_export.bench.baseline_r9y9 import R9y9Incremental

    kwargs, hparams = CASES[name]
    theirs, path, _ = _import(tmp_path, name, kwargs, hparams)
    model = load_checkpoint(path, torch.float32)
    cfg = model.cfg
    B, T = 2, cfg.receptive_field + 9
    T -= T % cfg.hop_size  # whole frames
    x, c, g, ours = their_inputs(kwargs, hparams, B, T)
    want = their_incremental(theirs, x, c, g, monkeypatch).transpose(1, 2).numpy()  # (B, T, Q)
    base = R9y9Incremental(model)
    base.clear_buffer()
    cond = None
    if cfg.local:
        with torch.no_grad():
            cond = model.upsample(torch.as_tensor(ours["frames"], dtype=torch.float32), T)  # (B, C, T)
    gt = base.speaker_input(ours["speaker"]) if "speaker" in ours else None
    got = np.empty_like(want)
    with torch.no_grad():
        for t in range(T):
            ct = None if cond is None else cond[:, :, t].unsqueeze(1)
            got[:, t] = base.step(x[:, :, t].float().unsqueeze(1), ct, gt).numpy()
    assert np.abs(want).max() > 0.3
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
