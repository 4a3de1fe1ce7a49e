"""`wn-export import keras`: WaveNets built and saved with Keras 3 itself (the torch backend; keras is a
`dev` dependency, the importer reads the .keras file with json + h5py only) → import → export; the
scoring and step graphs against Keras's own `predict` at the FP32 parity tolerances; every refusal.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported: no TensorFlow
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="keras-home-"))  # keras.json stays out of $HOME

import keras  # noqa: E402 - the test dependency (pyproject `dev`): a missing package fails, never skips
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from keras import layers  # noqa: E402

from cli import main  # noqa: E402
from reference_model import load_checkpoint, save_checkpoint  # noqa: E402
from reference_model.errors import CheckpointError  # noqa: E402
from wn_export.backends.onnxruntime.runner import OrtScoringRunner, OrtStepRunner  # noqa: E402
from wn_export.contract import read_manifest  # noqa: E402
from wn_export.export.pipeline import export_directory  # noqa: E402
from wn_export.importers import ImportError_, import_keras  # noqa: E402
from wn_export.parity.metrics import judge, logit_metrics  # noqa: E402


def conv(filters, kernel=1, **kw):
    return layers.Conv1D(filters, kernel, **kw)


def build(*, Q=32, R=8, D=6, S=10, K=2, dilations=(1, 2, 4, 8, 1, 2), bias=True, last_residual=True,
          front="embedding", W=1, skip_sum="single", head_relu="layer", softmax=False, mixed_bias=False, bad=None,
          seed=0):
    """The canonical Keras WaveNet; `mixed_bias`: no bias in the gates, layer 0's skip and the output conv;
    `bad` names one deviation for the refusal tests."""
    extra = None
    if front == "embedding":
        inp = keras.Input((None,), dtype="int32", name="tokens")
        x = layers.Embedding(Q, R, name="embed")(inp)
    else:
        inp = keras.Input((None, 1 if front == "scalar" else Q), name="samples")
        x = conv(R, W, padding="same" if bad == "front-padding" else "causal", use_bias=bias,
                 activation="tanh" if bad == "front-activation" else None, name="front")(inp)
    if bad == "two-inputs":
        extra = keras.Input((None, R), name="speaker_features")
        x = layers.Add(name="speaker_add")([x, extra])
    if bad == "dropout":
        x = layers.Dropout(0.1, name="dropout")(x)
    shared = conv(D, K, padding="causal", dilation_rate=1, activation="tanh", use_bias=bias, name="shared")
    skips = []
    for i, d in enumerate(dilations):
        bad_here = bad if i == 1 else None
        f = (shared if bad_here == "shared" or (bad == "shared" and i == 0) else
             conv(D + (bad_here == "filters"), K + (bad_here == "kernel"), padding="causal", dilation_rate=d,
                  activation="tanh", use_bias=bias, name=f"filter{i}"))(x)
        g = conv(D + (bad_here == "filters"), K + (bad_here == "kernel"),
                 padding="same" if bad_here == "same-padding" else "causal",
                 dilation_rate=d * (2 if bad_here == "gate-dilation" else 1),
                 activation="relu" if bad_here == "relu-gate" else "sigmoid", use_bias=bias and not mixed_bias,
                 name=f"gate{i}")(x)
        if bad == "shared" and i == 0:
            g = layers.Activation("sigmoid", name="gate0")(shared(x))
        h = (layers.Add(name="add_not_multiply") if bad_here == "add-not-multiply" else
             layers.Multiply(name=f"gated{i}"))([f, g])
        skip = (layers.Dense(S, name="dense_skip") if bad_here == "dense-skip" else
                conv(S, 1, strides=2 if bad_here == "strides" else 1, use_bias=bias and not (mixed_bias and i == 0),
                     name=f"skip{i}"))(h)
        skips.append(skip)
        if bad_here == "extra-skip":
            skips.append(conv(S, 1, use_bias=bias, name="extra_skip")(h))
        if bad_here == "input-tap":
            skips.append(layers.Dense(S, name="input_tap")(x))
        if (last_residual or i < len(dilations) - 1) and bad_here != "no-residual":
            x = layers.Add(name=f"residual_add{i}")([x, conv(R, 1, use_bias=bias, name=f"residual{i}")(h)])
            if bad_here == "scaled-residual":
                x = layers.Rescaling(0.5 ** 0.5, name="scaled_residual")(x)
    if skip_sum == "chain":
        total = skips[0]
        for i, s in enumerate(skips[1:]):
            total = layers.Add(name=f"skip_sum{i}")([total, s])
    elif bad == "concat-skips":
        total = layers.Concatenate(name="concat_skips")(skips)
    else:
        total = layers.Add(name="skip_sum")(skips)
    y = total if bad == "head-no-relu" else (
        layers.ReLU(max_value=6.0, name="relu6") if bad == "relu6" else layers.Activation("relu", name="relu0"))(total)
    y = conv(S + (bad == "head-filters"), 3 if bad == "head-kernel" else 1, padding="causal",
             activation="relu" if head_relu == "fused" else None, use_bias=bias, name="head1")(y)
    if head_relu == "layer":
        y = layers.ReLU(name="relu1")(y)
    y = conv(Q + (bad == "classes"), 1, use_bias=bias and not mixed_bias, name="head2")(y)
    if softmax:
        y = layers.Softmax(name="softmax")(y)
    if bad == "extra-output":
        y = layers.Activation("tanh", name="squash")(y)
    model = keras.Model([inp, extra] if extra is not None else inp, [y, total] if bad == "two-outputs" else y)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.4, w.shape).astype("float32") for w in model.get_weights()])
    return model


CASES = {
    "bias, last residual": dict(bias=True, last_residual=True),
    "bias, no last residual": dict(bias=True, last_residual=False),
    "no bias, last residual": dict(bias=False, last_residual=True, K=3),
    "no bias, no last residual": dict(bias=False, last_residual=False, K=3),
    "one-hot conv front W=3, chained skip sum, fused ReLU, softmax": dict(
        front="onehot", W=3, skip_sum="chain", head_relu="fused", softmax=True, dilations=(1, 2, 4, 1)),
    "scalar conv front W=4, no bias in the gates, one skip and the output conv": dict(
        front="scalar", W=4, dilations=(1, 2, 4, 8), mixed_bias=True),
    "one-hot 1×1 conv front with bias (→ embedding)": dict(front="onehot", W=1, dilations=(1, 2, 4, 1, 2)),
}


def keras_inputs(case: dict, B: int, T: int, Q: int = 32, seed: int = 1):
    """(Keras model input, our graph input)."""
    rng = np.random.default_rng(seed)
    if case.get("front") == "scalar":
        samples = rng.uniform(-1, 1, (B, T)).astype(np.float32)
        return samples[..., None], samples
    tokens = rng.integers(0, Q, (B, T))
    return (np.eye(Q, dtype=np.float32)[tokens] if case.get("front") == "onehot" else tokens), tokens


MEASURED: dict[str, dict[str, float]] = {}


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras's NumPy 2 __array__ notices


@pytest.mark.parametrize("name", list(CASES))
def test_imported_graphs_match_keras_predict(tmp_path, name):
    case = CASES[name]
    km = build(**case)
    if case.get("last_residual"):  # computed, but it reaches nothing: Keras leaves it out of the saved graph
        names = [layer.name for layer in km.layers]
        assert "residual5" not in names and "residual4" in names
    km.save(tmp_path / "m.keras")
    model, notes = import_keras(tmp_path / "m.keras")
    save_checkpoint(model, tmp_path / "m.safetensors")
    cfg = model.cfg
    assert cfg.separate_gate and not cfg.last_residual and cfg.has_dilated_bias == case.get("bias", True)
    assert cfg.input_kind == ("scalar" if case.get("front") == "scalar" else "onehot")
    B, T = 2, 2 * cfg.receptive_field + 9
    kx, ours = keras_inputs(case, B, T)
    logits_model = keras.Model(km.inputs, km.get_layer("head2").output) if case.get("softmax") else km
    want = logits_model.predict(kx, verbose=0).astype(np.float64)  # (B, T, Q), Keras's own float32 forward
    assert np.abs(want).max() > 0.5
    if case.get("mixed_bias"):
        assert any(n.startswith("zero biases for gate0, gate1") for n in notes)
    if case.get("softmax"):
        assert any("softmax" in n for n in notes)
        np.testing.assert_allclose(km.predict(kx, verbose=0), torch.softmax(torch.as_tensor(want), -1).numpy(),
                                   atol=1e-6)

    with torch.no_grad():
        fwd = load_checkpoint(tmp_path / "m.safetensors", torch.float64)(torch.as_tensor(ours)).numpy()
    assert np.abs(fwd - want).max() < 1e-4  # Keras computes in float32
    export_directory(tmp_path / "d", tmp_path / "m.safetensors")
    manifest = read_manifest(tmp_path / "d")
    with OrtScoringRunner(manifest) as runner:
        scored = runner.infer(ours)
    with OrtStepRunner(manifest) as runner:
        teacher = runner.teacher_force(ours)
    m = {"scoring": judge("scoring graph vs Keras predict", "keras", "fp32", logit_metrics(scored["logits"], want)),
         "step": judge("step graph vs Keras predict", "keras", "fp32", logit_metrics(teacher, want))}
    for key, check in m.items():
        assert check, (key, check.failures, check.metrics)
    MEASURED[name] = {"scoring max_abs": m["scoring"].metrics["max_abs"], "scoring top1": m["scoring"].metrics["top1"],
                      "step max_abs": m["step"].metrics["max_abs"]}
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in MEASURED[name].items()))


def test_cli_import(tmp_path):
    build(bias=False).save(tmp_path / "m.keras")
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(main, ["import", "keras", str(tmp_path / "m.keras"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out).cfg.layers == 6 and str(out) in r.output and "sample_rate = 16000" in r.output
    before = (tmp_path / "m.keras").read_bytes()
    r = CliRunner().invoke(main, ["import", "keras", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.keras")])
    assert r.exit_code != 0 and "is also an input of this command" in r.output and "Traceback" not in r.output
    assert (tmp_path / "m.keras").read_bytes() == before
    r = CliRunner().invoke(main, ["import", "keras", str(tmp_path / "none.keras"), "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "does not exist" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["import", "keras", str(tmp_path / "m.keras"), "-o", str(tmp_path)])
    assert r.exit_code != 0 and "is a directory" in r.output and "Traceback" not in r.output


# ---- what cannot be mapped: built with Keras, refused naming the first layer that does not fit ----------
@pytest.mark.parametrize("bad, kwargs, message", [
    ("dropout", {}, "layer 'dropout' (Dropout) does not fit the WaveNet pattern: expected the filter Conv1D "
                    "(activation tanh) and gate Conv1D (sigmoid) of layer 0 of the stack"),
    ("same-padding", {}, "layer 'gate1' (Conv1D) does not fit the WaveNet pattern: expected a Conv1D with "
                         "padding=\"causal\""),
    ("relu-gate", {}, "layer 'gate1' (Conv1D) does not fit"),
    ("gate-dilation", {}, "layer 'gate1' (Conv1D) does not fit the WaveNet pattern: expected a Conv1D with "
                          "padding=\"causal\", kernel size ≥ 2, stride 1, one group, and the filter's kernel size, "
                          "dilation and filters in layer 1 of the stack"),
    ("add-not-multiply", {}, "layer 'add_not_multiply' (Add) does not fit the WaveNet pattern: expected the "
                             "Multiply of the filter and gate of layer 1"),
    ("dense-skip", {}, "layer 'dense_skip' (Dense) does not fit the WaveNet pattern: expected one skip 1×1 Conv1D "
                       "and at most one residual 1×1 Conv1D (whose Add reads the layer's input) reading the gated "
                       "product of layer 1"),
    ("extra-skip", {}, "layer 'extra_skip' (Conv1D) does not fit the WaveNet pattern: expected one skip 1×1"),
    ("input-tap", {}, "layer 'input_tap' (Dense) does not fit the WaveNet pattern: expected nothing else reading "
                      "the input of layer 1"),
    ("strides", {}, "layer 'skip1' (Conv1D) does not fit"),
    ("no-residual", {}, "layer 'filter1' (Conv1D) does not fit the WaveNet pattern: expected the filter Conv1D "
                        "(activation tanh) and gate Conv1D (sigmoid) of layer 1"),
    ("scaled-residual", {}, "layer 'scaled_residual' (Rescaling) does not fit"),
    ("shared", {}, "layer 'shared' (Conv1D) is called 3 times (shared weights) and cannot map"),
    ("two-inputs", {"front": "onehot", "W": 3}, "the model has 2 inputs"),
    ("two-outputs", {}, "the model has 2 outputs"),
    ("head-no-relu", {}, "layer 'head1' (Conv1D) does not fit the WaveNet pattern: expected ReLU"),
    ("relu6", {}, "layer 'relu6' (ReLU) does not fit the WaveNet pattern: expected ReLU"),
    ("head-kernel", {}, "layer 'head1' (Conv1D) does not fit the WaveNet pattern: expected the head's first 1×1"),
    ("head-filters", {}, "layer 'head1' (Conv1D) has filters=11, but the model's other layers imply 10"),
    ("filters", {}, "layer 'filter1' (Conv1D) has filters=7, but the model's other layers imply 6"),
    ("kernel", {}, "layer 'filter1' (Conv1D) has kernel_size=3, but the model's other layers imply 2"),
    ("classes", {}, "layer 'head2' (Conv1D) outputs 33 classes but the input has 32"),
    ("extra-output", {}, "layer 'squash' (Activation) does not fit the WaveNet pattern: expected the model's output"),
    ("concat-skips", {}, "layer 'concat_skips' (Concatenate) does not fit the WaveNet pattern: expected an Add "
                         "over every layer's skip output, each once"),
    ("head-relu-missing", {"head_relu": "none"}, "layer 'head2' (Conv1D) does not fit the WaveNet pattern: "
                                                 "expected ReLU after the head's first 1×1 Conv1D"),
    ("front-padding", {"front": "onehot", "W": 3}, "layer 'front' (Conv1D) does not fit the WaveNet pattern: "
                                                   "expected a Conv1D front end (linear, padding=\"causal\""),
    ("front-activation", {"front": "scalar", "W": 2}, "layer 'front' (Conv1D) does not fit the WaveNet pattern: "
                                                      "expected a Conv1D front end"),
])
def test_unmappable_models_name_the_first_layer_that_does_not_fit(tmp_path, bad, kwargs, message):
    build(bad=bad, **kwargs).save(tmp_path / "m.keras")
    with pytest.raises(ImportError_) as e:
        import_keras(tmp_path / "m.keras")
    assert message in str(e.value)


def test_a_dilated_convolution_of_width_one_is_refused(tmp_path):
    build(K=1, dilations=(1, 1)).save(tmp_path / "m.keras")
    with pytest.raises(ImportError_, match="layer 'filter0' .* expected a Conv1D with padding=\"causal\", kernel "
                                           "size ≥ 2"):
        import_keras(tmp_path / "m.keras")


def test_sequential_and_other_saved_files_are_refused(tmp_path):
    seq = keras.Sequential([keras.Input((None, 4)), layers.Conv1D(4, 2, padding="causal")])
    seq.save(tmp_path / "s.keras")
    with pytest.raises(ImportError_, match="the model is a Sequential: only functional models"):
        import_keras(tmp_path / "s.keras")
    with pytest.raises(CheckpointError, match="does not exist"):
        import_keras(tmp_path / "missing.keras")
    (tmp_path / "x.keras").write_bytes(b"not a zip")
    with pytest.raises(ImportError_, match="not a zip archive"):
        import_keras(tmp_path / "x.keras")


def _rewrite(src: Path, dst: Path, **members) -> Path:
    """A copy of a .keras zip with some members replaced (None: removed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in members:
                if members[item.filename] is not None:
                    zout.writestr(item.filename, members[item.filename])
            else:
                zout.writestr(item, zin.read(item.filename))
    return dst


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "m.keras"
    build(dilations=(1, 2)).save(path)
    return path


def _config(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


@pytest.mark.parametrize("change, message", [
    (lambda c, m: {"config.json": None}, "has no config.json: not a Keras 3 .keras file"),
    (lambda c, m: {"model.weights.h5": None}, "has no model.weights.h5"),
    (lambda c, m: {"metadata.json": json.dumps({"keras_version": "2.15.0"})}, "was saved by Keras 2.15.0"),
    (lambda c, m: {"config.json": "{not json"}, "config.json is not JSON"),
    (lambda c, m: {"model.weights.h5": b"\0" * 64}, "model.weights.h5 is not an HDF5 file"),
])
def test_damaged_keras_files_are_refused(tmp_path, saved, change, message):
    bad = _rewrite(saved, tmp_path / "bad.keras", **change(_config(saved), None))
    with pytest.raises(ImportError_) as e:
        import_keras(bad)
    assert message in str(e.value)


def _edit_config(saved: Path, tmp_path: Path, edit) -> Path:
    config = _config(saved)
    edit(config["config"])
    return _rewrite(saved, tmp_path / "bad.keras", **{"config.json": json.dumps(config)})


def _layer(config: dict, name: str) -> dict:
    return next(spec for spec in config["layers"] if spec["name"] == name)


def _history(spec: dict) -> list:
    return spec["inbound_nodes"][0]["args"][0]["config"]["keras_history"]


def _tensor(name: str) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"shape": [None, None, 10], "dtype": "float32",
                                                         "keras_history": [name, 0, 0]}}


def _stray_input() -> dict:
    return {"class_name": "InputLayer", "name": "stray", "config": {"batch_shape": [None, None, 10], "name": "stray"},
            "inbound_nodes": []}


@pytest.mark.parametrize("edit, message", [
    (lambda c: _history(_layer(c, "filter0")).__setitem__(2, 1), "layer 'filter0' (Conv1D) reads output 1 of call 0"),
    (lambda c: _history(_layer(c, "filter0")).__setitem__(0, "ghost"), "reads 'ghost', which is not a layer"),
    (lambda c: c.__setitem__("output_layers", [["head2", 1, 0]]), "the model's output ['head2', 1, 0] is not"),
    (lambda c: _layer(c, "tokens")["config"].__setitem__("batch_shape", [None]), "layer 'tokens' (InputLayer) does "
                                                                                "not fit the WaveNet pattern"),
    (lambda c: _layer(c, "filter1")["config"].__setitem__("groups", 2), "layer 'filter1' (Conv1D) does not fit"),
    (lambda c: [_layer(c, "head2")["config"].__setitem__("filters", 33),
                _layer(c, "embed")["config"].__setitem__("input_dim", 33)],
     "layer 'embed' (Embedding): variable 0 in model.weights.h5 is ((32, 8), 'float32'); expected a float tensor "
     "of shape (33, 8)"),
    (lambda c: _layer(c, "skip1")["config"].__setitem__("use_bias", False), "layer 'skip1' (Conv1D) has 2 variables "
                                                                            "in model.weights.h5; expected 1"),
    (lambda c: c.__setitem__("input_layers", [["embed", 0, 0]]), "layer 'embed' (Embedding) does not fit the "
                                                                 "WaveNet pattern: expected an InputLayer"),
    (lambda c: _layer(c, "tokens")["config"].__setitem__("batch_shape", [None, None, None]),
     "layer 'tokens' (InputLayer) does not fit the WaveNet pattern: expected an InputLayer of shape"),
    (lambda c: _history(_layer(c, "filter0")).__setitem__(0, "tokens"),
     "layer 'tokens' (InputLayer) does not fit the WaveNet pattern: expected an Embedding of the μ-law tokens "
     "(the input's only reader)"),
    (lambda c: _layer(c, "embed").__setitem__("class_name", "Dense"),
     "layer 'embed' (Dense) does not fit the WaveNet pattern: expected an Embedding"),
    (lambda c: _layer(c, "skip_sum")["inbound_nodes"][0]["args"][0].append(
        _layer(c, "skip_sum")["inbound_nodes"][0]["args"][0][1]),
     "layer 'skip_sum' (Add) does not fit the WaveNet pattern: expected an Add over every layer's skip output, "
     "each once"),
    (lambda c: [c["layers"].insert(0, _stray_input()), _layer(c, "skip_sum")["inbound_nodes"][0]["args"][0].append(
        _tensor("stray"))],
     "layer 'stray' (InputLayer) does not fit the WaveNet pattern: expected a skip 1×1 Conv1D or an Add of skip "
     "outputs in the skip sum"),
    (lambda c: c["layers"].append({"class_name": "ReLU", "name": "stray", "config": {"name": "stray"},
                                   "inbound_nodes": [{"args": [_tensor("head2")], "kwargs": {}}]}),
     "layer 'stray' (ReLU) does not fit the WaveNet pattern: expected no further layers"),
    (lambda c: c["layers"].insert(2, c["layers"].pop(3)),  # swaps two Conv1Ds: their weight groups follow the order
     "model.weights.h5's layers/conv1d_1/vars belongs to layer 'gate0', not 'filter0' (Conv1D)"),
])
def test_configs_that_contradict_themselves_or_the_weights_are_refused(tmp_path, saved, edit, message):
    with pytest.raises(ImportError_) as e:
        import_keras(_edit_config(saved, tmp_path, edit))
    assert message in str(e.value)


def test_non_finite_weights_and_oversized_configs_are_refused(tmp_path, monkeypatch):
    km = build(dilations=(1, 2))
    km.get_layer("skip0").kernel.assign(np.full((1, 6, 10), np.nan, np.float32))
    km.save(tmp_path / "nan.keras")
    with pytest.raises(ImportError_, match="NaN or Inf"):
        import_keras(tmp_path / "nan.keras")
    build(dilations=(1, 2)).save(tmp_path / "m.keras")
    monkeypatch.setattr("wn_export.importers.keras.MAX_JSON_BYTES", 100)
    with pytest.raises(ImportError_, match="config.json is .* bytes \\(limit 100\\)"):
        import_keras(tmp_path / "m.keras")


def test_a_weight_group_missing_from_the_h5_file_is_refused(tmp_path, saved):
    import h5py

    with zipfile.ZipFile(saved) as z:
        (tmp_path / "w.h5").write_bytes(z.read("model.weights.h5"))
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        del f["layers/conv1d_2"]  # residual0, the third Conv1D
    bad = _rewrite(saved, tmp_path / "bad.keras", **{"model.weights.h5": (tmp_path / "w.h5").read_bytes()})
    with pytest.raises(ImportError_, match="model.weights.h5 has no layers/conv1d_2/vars for layer 'residual0'"):
        import_keras(bad)


def test_a_model_that_maps_to_an_invalid_config_is_refused(tmp_path):
    build(Q=1, dilations=(1, 2)).save(tmp_path / "m.keras")
    with pytest.raises(ImportError_, match="the model maps to no valid config: .*quantization_channels"):
        import_keras(tmp_path / "m.keras")
