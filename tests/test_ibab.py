"""`wn-export import ibab`: checkpoints that TensorFlow itself wrote in ibab/tensorflow-wavenet's variable
naming (tests/data/ibab/, made once by scripts/make_ibab_fixture.py; TensorFlow is not a dependency)
→ our tensor-bundle reader → import → export; the scoring and step graphs against an independent NumPy
implementation of their forward (`causal_conv` through `time_to_batch`, VALID convolutions) at the FP32
parity tolerances, and generation through our hosts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from reference_model import load_checkpoint, save_checkpoint
from reference_model.errors import CheckpointError
from wn_export.backends.onnxruntime.runner import OrtScoringRunner, OrtStepRunner
from wn_export.contract import read_manifest
from wn_export.export.pipeline import export_directory
from wn_export.generation import open_generator
from wn_export.importers import ImportError_, import_ibab
from wn_export.importers.ibab import map_ibab
from wn_export.importers.tf_checkpoint import TFCheckpoint, _masked_crc, _messages
from wn_export.parity.metrics import judge, log_prob_metrics, logit_metrics

DATA = Path(__file__).parent / "data" / "ibab"
CASES = ["onehot-bias", "onehot-nobias-k3", "scalar-w5", "gc"]


def fixture(case: str) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """(checkpoint prefix, their params, every variable as TensorFlow held it — from weights.npz)."""
    params = json.loads((DATA / case / "wavenet_params.json").read_text())
    with np.load(DATA / case / "weights.npz") as w:
        weights = {k: w[k] for k in w.files}
    return DATA / case / "model.ckpt-7", params, weights


def test_fixtures_are_the_files_tensorflow_wrote():
    listed = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    present = {p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert present == set(listed) and len(listed) == 5 * len(CASES)
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("case", CASES)
def test_reader_returns_every_variable_tensorflow_saved(case):
    prefix, _, weights = fixture(case)
    ckpt = TFCheckpoint(prefix)
    optimizer = [n for n in ckpt.names() if n not in weights]
    assert (len(optimizer) > 0) == (case == "onehot-bias")  # that case also saved Adam's slots
    assert all(n.endswith(("/Adam", "/Adam_1")) or n.startswith("beta") for n in optimizer)
    for name, value in weights.items():
        got = ckpt.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), name
    assert ckpt.entry("wavenet/causal_layer/filter").shape == weights["wavenet/causal_layer/filter"].shape


# ---- their forward, in NumPy (float64) --------------------------------------------------------------
def time_to_batch(value: np.ndarray, dilation: int) -> np.ndarray:
    """(B, T, C) → (B·d, ⌈T/d⌉, C), their reshapes: pad the end to a multiple of d, interleave phases."""
    B, T, C = value.shape
    pad = dilation - 1 - (T + dilation - 1) % dilation
    padded = np.pad(value, ((0, 0), (0, pad), (0, 0)))
    return padded.reshape(-1, dilation, C).transpose(1, 0, 2).reshape(B * dilation, -1, C)


def batch_to_time(value: np.ndarray, dilation: int) -> np.ndarray:
    C = value.shape[2]
    return value.reshape(dilation, -1, C).transpose(1, 0, 2).reshape(value.shape[0] // dilation, -1, C)


def conv1d_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """TensorFlow conv1d, padding VALID: x (B, T, C), w (K, C, O) → (B, T − K + 1, O)."""
    K, T = w.shape[0], x.shape[1] - w.shape[0] + 1
    return sum(x[:, k:k + T] @ w[k] for k in range(K))


def causal_conv(value: np.ndarray, filter_: np.ndarray, dilation: int) -> np.ndarray:
    width = filter_.shape[0]
    if dilation > 1:
        restored = batch_to_time(conv1d_valid(time_to_batch(value, dilation), filter_), dilation)
    else:
        restored = conv1d_valid(value, filter_)
    return restored[:, :value.shape[1] - (width - 1) * dilation]


def their_receptive_field(p: dict) -> int:
    K = p["filter_width"]
    return (K - 1) * sum(p["dilations"]) + 1 + ((p["initial_filter_width"] if p["scalar_input"] else K) - 1)


def their_network(w: dict, p: dict, x: np.ndarray, gc_ids: np.ndarray | None) -> np.ndarray:
    """Their `_create_network`: x (B, T, Q one-hot or 1 scalar) → logits (B, T − receptive_field + 1, Q)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    positional = "wavenet/dilated_stack/layer0/Variable" in w  # their train.py's bias names, or name= forks'
    roles = (["Variable", "Variable_1", "Variable_2", "Variable_3"] if positional
             else ["filter_bias", "gate_bias", "dense_bias", "slip_bias"])
    out_width = x.shape[1] - their_receptive_field(p) + 1
    h = causal_conv(x, w["wavenet/causal_layer/filter"], 1)
    g = None if gc_ids is None else w["wavenet/embeddings/gc_embedding"][gc_ids][:, None, :]  # (B, 1, E)
    skips = 0.0
    for i, d in enumerate(p["dilations"]):
        v = {k.rsplit("/", 1)[1]: a for k, a in w.items() if k.startswith(f"wavenet/dilated_stack/layer{i}/")}
        conv_filter, conv_gate = causal_conv(h, v["filter"], d), causal_conv(h, v["gate"], d)
        if g is not None:
            conv_filter = conv_filter + g @ v["gc_filter"][0]
            conv_gate = conv_gate + g @ v["gc_gate"][0]
        if p["use_biases"]:
            conv_filter, conv_gate = conv_filter + v[roles[0]], conv_gate + v[roles[1]]
        out = np.tanh(conv_filter) / (1.0 + np.exp(-conv_gate))
        transformed = out @ v["dense"][0] + (v[roles[2]] if p["use_biases"] else 0.0)
        skips = skips + out[:, -out_width:] @ v["skip"][0] + (v[roles[3]] if p["use_biases"] else 0.0)
        h = h[:, h.shape[1] - transformed.shape[1]:] + transformed
    pp = "wavenet/postprocessing/"
    b1, b2 = (("Variable", "Variable_1") if positional else ("postprocess1_bias", "postprocess2_bias"))
    y = np.maximum(skips, 0.0) @ w[pp + "postprocess1"][0] + (w[pp + b1] if p["use_biases"] else 0.0)
    return np.maximum(y, 0.0) @ w[pp + "postprocess2"][0] + (w[pp + b2] if p["use_biases"] else 0.0)


def their_mu_law_encode(audio: np.ndarray, channels: int) -> np.ndarray:
    mu = channels - 1
    signal = np.sign(audio) * np.log1p(mu * np.minimum(np.abs(audio), 1.0)) / np.log1p(mu)
    return ((signal + 1) / 2 * mu + 0.5).astype(np.int32)


def inputs_for(p: dict, B: int, T: int, seed: int = 1):
    """(their network input (B, T, C), our graph input, next-sample classes (B, T), speaker ids or None)."""
    rng = np.random.default_rng(seed)
    Q = p["quantization_channels"]
    if p["scalar_input"]:
        samples = rng.uniform(-1, 1, (B, T)).astype(np.float32)
        x, ours, classes = samples[..., None].astype(np.float64), samples, their_mu_law_encode(samples, Q)
    else:
        tokens = rng.integers(0, Q, (B, T))
        x, ours, classes = np.eye(Q)[tokens], tokens, tokens
    return x, ours, classes, None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case → (checkpoint, export directory): every case imported and exported once."""
    root = tmp_path_factory.mktemp("ibab")
    out = {}
    for case in CASES:
        prefix, _, _ = fixture(case)
        model, _ = import_ibab(prefix, DATA / case / "wavenet_params.json")
        save_checkpoint(model, root / f"{case}.safetensors")
        export_directory(root / case, root / f"{case}.safetensors")
        out[case] = root / f"{case}.safetensors", root / case
    return out


MEASURED: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("case", CASES)
def test_imported_graphs_match_their_forward(exported, case):
    _, p, w = fixture(case)
    path, directory = exported[case]
    rf = their_receptive_field(p)
    ref = load_checkpoint(path, torch.float64)
    assert ref.cfg.receptive_field == rf
    B, T = 2, 3 * rf + 7
    x, ours, classes, _ = inputs_for(p, B, T)
    speaker = np.array([2, 0]) if ref.cfg.global_ else None
    want = their_network(w, p, x, speaker)  # (B, T − rf + 1, Q): theirs starts once the field is full
    assert want.shape == (B, T - rf + 1, p["quantization_channels"]) and np.abs(want).max() > 0.5

    with torch.no_grad():
        fwd = ref(torch.as_tensor(ours), None, None if speaker is None else torch.as_tensor(speaker)).numpy()
    assert np.abs(fwd[:, rf - 1:] - want).max() < 1e-9  # float64 both, the same float32 weights

    manifest = read_manifest(directory)
    with OrtScoringRunner(manifest) as runner:
        scored = runner.infer(ours, None, speaker)
    with OrtStepRunner(manifest) as runner:
        teacher = runner.teacher_force(ours, None, speaker)
    m = {"scoring": judge("scoring graph vs their forward", "ibab", "fp32",
                          logit_metrics(scored["logits"][:, rf - 1:], want)),
         "step": judge("step graph vs their forward", "ibab", "fp32", logit_metrics(teacher[:, rf - 1:], want))}
    # their loss: cross-entropy of logits j against the μ-law class of input rf + j
    logp = want[:, :-1] - want[:, :-1].max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ll = np.take_along_axis(logp, classes[:, rf:, None].astype(np.int64), -1)[..., 0]
    m["log-prob"] = judge("scoring graph log_prob vs their loss", "ibab", "fp32",
                          log_prob_metrics(scored["log_prob"][:, rf - 1:], ll))
    for name, check in m.items():
        assert check, (name, check.failures, check.metrics)
    MEASURED[case] = {"scoring max_abs": m["scoring"].metrics["max_abs"], "scoring top1": m["scoring"].metrics["top1"],
                      "step max_abs": m["step"].metrics["max_abs"], "ll_diff": m["log-prob"].metrics["ll_diff"]}
    print(f"\n{case}: " + ", ".join(f"{k} {v:.2e}" for k, v in MEASURED[case].items()))


@pytest.mark.parametrize("case", CASES)
def test_generation_through_our_hosts_is_identical_on_onnxruntime_and_the_reference(exported, case):
    _, directory = exported[case]
    speaker = [1, 2] if case == "gc" else None
    with open_generator(directory, "onnxruntime") as gen:
        ort_tokens = gen.generate(200, 2, seed=4, speaker=speaker)
    with open_generator(directory, "torch") as gen:
        ref_tokens = gen.generate(200, 2, seed=4, speaker=speaker)
    assert ort_tokens.shape == (2, 200) and np.array_equal(ort_tokens, ref_tokens)
    assert len(np.unique(ort_tokens)) > 3


# ---- the CLI -------------------------------------------------------------------------------------------
def _copy(tmp_path: Path, case: str, params: bool = True) -> Path:
    shutil.copytree(DATA / case, tmp_path / case)
    if not params:
        (tmp_path / case / "wavenet_params.json").unlink()
    return tmp_path / case


def test_cli_import(tmp_path):
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(main, ["import", "ibab", str(DATA / "gc"), "-o", str(out)])  # the training directory
    assert r.exit_code == 0, r.output
    cfg = load_checkpoint(out).cfg
    assert (cfg.speakers, cfg.speaker_channels, cfg.separate_gate, cfg.last_residual) == (3, 4, True, False)
    assert "3 speakers, embedding 4" in r.output and str(out) in r.output
    r = CliRunner().invoke(main, ["import", "ibab", str(DATA / "scalar-w5" / "model.ckpt-7.index"), "--params",
                                  str(DATA / "scalar-w5" / "wavenet_params.json"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out).cfg.input_kind == "scalar"


def test_cli_refuses_without_params_and_never_overwrites_an_input(tmp_path):
    d = _copy(tmp_path, "onehot-nobias-k3", params=False)
    r = CliRunner().invoke(main, ["import", "ibab", str(d / "model.ckpt-7"), "-o", str(tmp_path / "m.safetensors")])
    assert r.exit_code != 0 and "--params" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m.safetensors").exists()
    d = _copy(tmp_path / "b", "onehot-nobias-k3")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for target in ("model.ckpt-7.index", "model.ckpt-7.data-00000-of-00001", "wavenet_params.json"):
        r = CliRunner().invoke(main, ["import", "ibab", str(d), "--params", str(d / "wavenet_params.json"),
                                      "-o", str(d / target)])
        assert r.exit_code != 0 and "is also an input of this command" in r.output and "Traceback" not in r.output
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    (tmp_path / "empty").mkdir()
    for checkpoint, message in ((tmp_path / "empty", "without a 'checkpoint' file"),
                                (tmp_path / "nowhere" / "model.ckpt-1", "does not exist")):
        r = CliRunner().invoke(main, ["import", "ibab", str(checkpoint), "-o", str(tmp_path / "m.safetensors")])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


# ---- what cannot be mapped ----------------------------------------------------------------------------
def _tensors(case: str) -> dict[str, np.ndarray]:
    ckpt = TFCheckpoint(DATA / case)
    return {n: ckpt.read(n) for n in ckpt.names()}


def _map(t: dict[str, np.ndarray], params: dict):
    return map_ibab({n: a.shape for n, a in t.items()}, t.__getitem__, params)


L0 = "wavenet/dilated_stack/layer0/"


@pytest.mark.parametrize("case, change, message", [
    ("onehot-bias", lambda t, p: t.update({L0 + "lc_filter": np.zeros((1, 3, 6), np.float32)}),
     "local conditioning is not supported for ibab checkpoints (their master has none; found the fork's "
     "variable wavenet/dilated_stack/layer0/lc_filter)"),
    ("onehot-bias", lambda t, p: t.update({"wavenet/upsample/kernel": np.zeros(3, np.float32)}),
     "local conditioning"),
    ("onehot-bias", lambda t, p: t.update({"wavenet/postprocessing/extra": np.zeros(3, np.float32)}),
     "unknown variable(s) (not ibab's WaveNetModel?): wavenet/postprocessing/extra"),
    ("onehot-bias", lambda t, p: t.pop("wavenet/dilated_stack/layer3/gate"),
     "variable wavenet/dilated_stack/layer3/gate is missing"),
    ("onehot-bias", lambda t, p: t.pop("wavenet/postprocessing/postprocess1"),
     "variable wavenet/postprocessing/postprocess1 is missing"),
    ("onehot-bias", lambda t, p: t.update({"wavenet/dilated_stack/layer2/dense": np.zeros((1, 6, 7), np.float32)}),
     "wavenet/dilated_stack/layer2/dense has shape [1, 6, 7], which contradicts the other variables "
     "(expected [1, 6, 8])"),
    ("onehot-bias", lambda t, p: t.update({"wavenet/dilated_stack/layer5/dense": np.zeros((1, 6, 5), np.float32)}),
     "layer5/dense has shape [1, 6, 5], which contradicts"),  # the unused last dense is checked too
    ("onehot-bias", lambda t, p: t.update({"wavenet/dilated_stack/layer1/skip": np.zeros((1, 6), np.float32)}),
     "layer1/skip has shape [1, 6], which contradicts"),
    ("onehot-bias", lambda t, p: t.update({L0 + "filter": np.zeros((2, 8), np.float32)}),
     "variable wavenet/dilated_stack/layer0/filter has shape [2, 8]; expected rank 3"),
    ("onehot-nobias-k3", lambda t, p: [t.update({n: a[:1]}) for n, a in list(t.items())
                                       if n.endswith(("/filter", "/gate"))] and p.pop("filter_width"),
     "the checkpoint maps to no valid config: invalid WaveNet config: kernel_size must be an integer >= 2"),
    ("onehot-bias", lambda t, p: p.update(residual_channels=16),
     "params residual_channels=16, but the checkpoint has 8"),
    ("onehot-bias", lambda t, p: p.update(use_biases=False), "params use_biases=False, but the checkpoint has True"),
    ("onehot-bias", lambda t, p: p.update(dilations=[1, 2, 4]), "params list 3 dilations but the checkpoint has 6"),
    ("onehot-bias", lambda t, p: p.update(dilations=[1, 2, 0, 8, 1, 2]), "dilations must be a list of positive"),
    ("onehot-bias", lambda t, p: p.update(lc_channels=20), "lc_channels=20: local conditioning is not supported"),
    ("onehot-bias", lambda t, p: t.update({"wavenet/causal_layer/filter": np.zeros((3, 32, 8), np.float32)}),
     "causal_layer/filter is 3 wide; with one-hot input their causal layer is filter_width = 2 wide"),
    ("onehot-bias", lambda t, p: t.pop(L0 + "Variable_3"), "dilated_stack/layer0 has variables"),
    ("onehot-bias", lambda t, p: [t.pop(L0 + n) for n in ("Variable", "Variable_1", "Variable_2", "Variable_3")],
     "the layers and the postprocessing disagree about biases"),
    ("onehot-bias", lambda t, p: t.update({L0 + "filter": t[L0 + "filter"].astype(np.int32)}),
     "has dtype int32; weights must be floating point"),
    ("onehot-bias", lambda t, p: t[L0 + "skip"].__setitem__((0, 0, 0), np.nan), "NaN or Inf"),
    ("onehot-nobias-k3", lambda t, p: [t.pop(n) for n in list(t) if n.startswith("wavenet/dilated_stack/layer4")],
     "dilated_stack layers are not numbered 0…L−1"),
    ("onehot-nobias-k3", lambda t, p: [t.pop(n) for n in list(t) if n.startswith("wavenet/dilated_stack")],
     "no wavenet/dilated_stack/layer* variables"),
    ("gc", lambda t, p: t.pop("wavenet/embeddings/gc_embedding"),
     "global conditioning without the gc_embedding table (their dense global-condition vector) is not supported"),
    ("gc", lambda t, p: t.pop("wavenet/dilated_stack/layer3/gc_gate"),
     "gc_filter and gc_gate) must be in every dilated_stack layer or in none"),
    ("gc", lambda t, p: p.update(gc_cardinality=5), "params gc_cardinality=5, but the checkpoint has 3"),
    ("onehot-nobias-k3", lambda t, p: t.update({"wavenet/embeddings/gc_embedding": np.zeros((3, 4), np.float32)}),
     "gc_embedding is present but no layer has gc_filter/gc_gate"),
    ("scalar-w5", lambda t, p: p.update(initial_filter_width=32),
     "params initial_filter_width=32, but the checkpoint has 5"),
    ("scalar-w5", lambda t, p: p.update(scalar_input=False), "params scalar_input=False, but the checkpoint has True"),
])
def test_unmappable_checkpoints_give_clear_errors(case, change, message):
    t, p = _tensors(case), fixture(case)[1]
    change(t, p)
    with pytest.raises(ImportError_) as e:
        _map(t, p)
    assert message in str(e.value)


def test_params_errors(tmp_path):
    prefix = DATA / "onehot-bias" / "model.ckpt-7"
    (tmp_path / "p.json").write_text("filter_width: 2")
    with pytest.raises(ImportError_, match="is not JSON"):
        import_ibab(prefix, tmp_path / "p.json")
    (tmp_path / "p.json").write_text("[2]")
    with pytest.raises(ImportError_, match="must be a JSON object"):
        import_ibab(prefix, tmp_path / "p.json")
    with pytest.raises(ImportError_, match="cannot read params"):
        import_ibab(prefix, tmp_path / "missing.json")
    d = _copy(tmp_path, "onehot-bias", params=False)
    with pytest.raises(ImportError_, match="does not record the dilations: pass --params"):
        import_ibab(d / "model.ckpt-7")


def test_optional_params_and_their_defaults_are_noted():
    prefix, p, _ = fixture("onehot-bias")
    del p["sample_rate"]
    p["batch_size"] = 4
    model, notes = import_ibab(prefix, p)
    assert model.cfg.sample_rate == 16000
    assert any("sample_rate = 16000" in n for n in notes) and any("batch_size" in n for n in notes)
    assert any("108 optimizer variable(s)" in n for n in notes)


# ---- the reader's refusals ------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block(items) -> bytes:
    """A table block: entries without prefix compression, one restart point."""
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in items)
    return body + struct.pack("<II", 0, 1)


def write_table(path: Path, data_block: bytes, kind: int = 0, index_block: bytes | None = None,
                footer: bytes | None = None) -> None:
    """A LevelDB-format table: one data block, its index block, an empty metaindex, the footer."""
    out = bytearray()

    def emit(b: bytes, kind: int = 0) -> bytes:
        offset = len(out)
        out.extend(b + bytes([kind]) + struct.pack("<I", _masked_crc(b + bytes([kind]))))
        return _varint(offset) + _varint(len(b))

    handle = emit(data_block, kind)
    index = emit(index_block if index_block is not None else _block([(b"\xff", handle)]))
    meta = emit(_block([]))
    out.extend(footer if footer is not None else (meta + index).ljust(40, b"\0") + struct.pack("<Q", MAGIC))
    path.write_bytes(bytes(out))


MAGIC = 0xDB4775248B80FB57


def write_bundle(prefix: Path, entries: dict[str, bytes], header: bytes | None, data: bytes, kind: int = 0) -> None:
    """A tensor bundle (`header` None: none), for the refusal cases."""
    items = sorted([(b"", header)] * (header is not None) + [(k.encode(), v) for k, v in entries.items()])
    write_table(Path(f"{prefix}.index"), _block(items), kind)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)


def _entry(dtype: int = 1, shape=(2,), size: int = 8, shard: int = 0, slices: int = 0, data: bytes = b"\0" * 8):
    _, Entry = _messages()
    e = Entry(dtype=dtype, shard_id=shard, offset=0, size=size, crc32c=_masked_crc(data[:size]))
    for n in shape:
        e.shape.dim.add(size=n)
    for _ in range(slices):
        e.slices.append(b"\x0a\x00")
    return e.SerializeToString()


def _header(endianness: int = 0) -> bytes:
    Header, _ = _messages()
    return Header(num_shards=1, endianness=endianness).SerializeToString()


@pytest.mark.parametrize("entry, header, kind, message", [
    (_entry(), _header(), 0, None),  # the writer is right: this one reads
    (_entry(), _header(1), 0, "big-endian bundle"),
    (_entry(), None, 0, "has no bundle header"),
    (_entry(), _header(), 1, "is compressed (type 1, e.g. snappy)"),
    (_entry(slices=1), _header(), 0, "saved in slices (a partitioned variable)"),
    (_entry(dtype=7), _header(), 0, "has dtype string, which is not read"),
    (_entry(shape=(3,)), _header(), 0, "8 bytes do not hold shape [3] of float32"),
    (_entry(shape=(4,), size=16), _header(), 0, "lies outside"),
    (_entry(shard=2), _header(), 0, "names shard 2 of 1"),
    (_entry(data=b"\1" * 8), _header(), 0, "fails its CRC-32C check in"),
], ids=["reads", "big-endian", "no-header", "compressed", "sliced", "string", "size", "outside", "shard", "crc"])
def test_reader_refuses_what_it_cannot_read(tmp_path, entry, header, kind, message):
    prefix = tmp_path / "model.ckpt-1"
    write_bundle(prefix, {"w": entry}, header, b"\0" * 8, kind)
    if message is None:
        assert np.array_equal(TFCheckpoint(prefix).read("w"), np.zeros(2, np.float32))
        return
    with pytest.raises(CheckpointError) as e:
        TFCheckpoint(prefix).read("w")
    assert message in str(e.value)


@pytest.mark.parametrize("table, message", [
    (dict(footer=b"\xff" * 40 + struct.pack("<Q", MAGIC)), "footer: truncated or malformed varint"),
    (dict(index_block=_block([(b"\xff", _varint(10_000) + _varint(50))])), "data block at 10000+50 lies outside"),
    (dict(data_block=b"\0\0"), "data block is too short"),
    (dict(data_block=struct.pack("<I", 1000)), "data block has a malformed restart array"),
    (dict(data_block=_varint(0) + _varint(5) + _varint(100) + b"abcde" + struct.pack("<II", 0, 1)),
     "data block has an entry running past its end"),
    (dict(data_block=_block([(b"", b""), (b"w", b"\xff\xff")])), "the entry of w does not parse"),
], ids=["varint", "outside", "short", "restarts", "entry", "proto"])
def test_reader_refuses_malformed_tables(tmp_path, table, message):
    table = {"data_block": _block([(b"", _header())])} | table
    write_table(tmp_path / "m.index", **table)
    with pytest.raises(CheckpointError) as e:
        TFCheckpoint(tmp_path / "m")
    assert message in str(e.value)


def test_reader_refuses_damaged_and_missing_files(tmp_path):
    d = _copy(tmp_path, "onehot-nobias-k3")
    with pytest.raises(CheckpointError, match="does not exist"):
        TFCheckpoint(d / "model.ckpt-8")
    (d / "v1.ckpt").write_bytes(b"old")
    with pytest.raises(CheckpointError, match="TensorFlow V1 checkpoint"):
        TFCheckpoint(d / "v1.ckpt")
    with pytest.raises(CheckpointError, match="without a 'checkpoint' file"):
        TFCheckpoint(tmp_path)
    (tmp_path / "checkpoint").write_text("all_model_checkpoint_paths: 'x'\n")
    with pytest.raises(CheckpointError, match="names no model_checkpoint_path"):
        TFCheckpoint(tmp_path)
    assert TFCheckpoint(d / "model.ckpt-7.data-00000-of-00001").prefix == d / "model.ckpt-7"
    index = d / "model.ckpt-7.index"
    good = index.read_bytes()
    index.write_bytes(good[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="no table magic number"):
        TFCheckpoint(index)
    index.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # a bit of the first data block
    with pytest.raises(CheckpointError, match="data block fails its CRC-32C check"):
        TFCheckpoint(index)
    index.write_bytes(good)
    data = d / "model.ckpt-7.data-00000-of-00001"
    raw = data.read_bytes()
    data.write_bytes(raw[:-4])
    with pytest.raises(CheckpointError, match="lies outside model.ckpt-7.data-00000-of-00001"):
        TFCheckpoint(d).read("wavenet/postprocessing/postprocess2")
    data.write_bytes(raw[:10] + bytes([raw[10] ^ 1]) + raw[11:])
    ckpt = TFCheckpoint(d)
    first = min(ckpt.names(), key=lambda n: ckpt.entry(n).offset)
    with pytest.raises(CheckpointError, match="fails its CRC-32C check in model.ckpt-7.data"):
        ckpt.read(first)
    data.unlink()
    with pytest.raises(CheckpointError, match="data file .* does not exist"):
        ckpt.read(first)
