"""r9y9 wavenet_vocoder (0.1.x) checkpoints → the reference WaveNet (`wn-export import r9y9`).

Their model (wavenet_vocoder/wavenet.py) and where it lands in ours:

| theirs | ours |
|---|---|
| `first_conv` 1×1 over one-hot Q (+ bias) | `embed` rows = weight columns + bias |
| `first_conv` 1×1 over a scalar (+ bias) | `input_conv` (input_kind scalar, input_bias) |
| `conv_layers.i.conv` dilated conv, kernel K, gate G | `layers.i.conv` (biases of conv1x1c and conv1x1g folded into its bias) |
| `conv_layers.i.conv1x1c` local-conditioning 1×1 | `layers.i.cond` |
| `conv_layers.i.conv1x1g` global-conditioning 1×1 | `layers.i.speaker` |
| `conv_layers.i.conv1x1_out`, `conv1x1_skip` | `layers.i.out`, `layers.i.skip` |
| (x + residual)·√0.5 | scale_residual |
| `legacy`: skips = (skips + h)·√0.5 | legacy_skip_scale |
| `last_conv_layers` ReLU–1×1–ReLU–1×1 | `head` |
| `embed_speakers` | `speaker_embed` |
| `upsample_conv` ConvTranspose2d(1, 1, (freq_k, s), stride (1, s)) + ReLU per scale | upsample conv_transpose |
| out_channels = Q (mulaw-quantize) | categorical output |
| out_channels = 3·mixtures (raw / mulaw, scalar input) | output_kind mol |

Weight normalisation (`weight_g` / `weight_v`) is folded. Settings the checkpoint does not record
(stacks, legacy, log_scale_min, quantize_channels of a scalar model, sample_rate, hop_size without an
upsampling network, input_type raw vs mulaw) come from `--hparams` (their preset JSON) or
`R9Y9_DEFAULTS`; every assumption is reported back as a note.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reference_model import WaveNet, WaveNetConfig
from reference_model.errors import ConfigError
from wn_export.importers.common import ImportError_, fold_weight_norm, load_torch_state_dict

# Their defaults where the checkpoint is silent (WaveNet(legacy=True), hparams.py of 0.1.x).
R9Y9_DEFAULTS = {"legacy": True, "log_scale_min": float(math.log(1e-14)), "quantize_channels_scalar": 65536,
                 "sample_rate": 22050}

_LAYER = re.compile(r"^conv_layers\.(\d+)\.(conv|conv1x1c|conv1x1g|conv1x1_out|conv1x1_skip)\.(weight|bias)$")
_UPSAMPLE = re.compile(r"^upsample_conv\.(\d+)\.(weight|bias)$")
_FIXED = {"first_conv.weight", "first_conv.bias", "last_conv_layers.1.weight", "last_conv_layers.1.bias",
          "last_conv_layers.3.weight", "last_conv_layers.3.bias", "embed_speakers.weight"}


# the hparams the importer reads, by JSON type (None is always allowed: "not set")
_HPARAM_TYPES = {
    **dict.fromkeys(("stacks", "layers", "residual_channels", "gate_channels", "skip_out_channels", "kernel_size",
                     "out_channels", "cin_channels", "gin_channels", "n_speakers", "freq_axis_kernel_size",
                     "hop_size", "quantize_channels", "sample_rate", "cin_pad"), "integer"),
    **dict.fromkeys(("legacy", "upsample_conditional_features", "use_speaker_embedding"), "boolean"),
    **dict.fromkeys(("builder", "input_type", "output_distribution"), "string"),
    "log_scale_min": "number", "upsample_scales": "list of integers",
}
MAX_HPARAMS_BYTES = 1 << 20


def read_hparams(path) -> dict[str, Any]:
    """Their preset / hparams as JSON (the `presets/*.json` format: a flat object)."""
    from reference_model.files import read_regular

    path = Path(path)
    data = read_regular(path, MAX_HPARAMS_BYTES, "hparams", ImportError_)
    try:
        data = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ImportError_(f"hparams {path} is not JSON (expected a wavenet_vocoder preset .json): "
                           f"{str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise ImportError_(f"hparams {path} must be a JSON object of hparam names and values")
    return data


def check_hparams(hp: dict) -> None:
    """Every hparam the importer reads has its JSON type (an `ImportError_` naming the first that has not)."""
    def fits(value, kind: str) -> bool:
        if kind == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "string":
            return isinstance(value, str)
        return isinstance(value, list) and all(fits(v, "integer") for v in value)

    for name, kind in _HPARAM_TYPES.items():
        if hp.get(name) is not None and not fits(hp[name], kind):
            raise ImportError_(f"hparams {name}={hp[name]!r:.40} must be a {kind}")


def _unsupported_keys(keys: list[str]) -> str:
    if any(k.startswith("upsample_net.") for k in keys):
        return ("the upsampling network `upsample_net` (wavenet_vocoder >= 0.2: UpsampleNetwork / "
                "ConvInUpsampleNetwork, Stretch2d + Conv2d) is not supported; only 0.1's transposed-"
                "convolution network `upsample_conv` (upsample_conditional_features) maps")
    return f"unexpected tensors (not a wavenet_vocoder 0.1 WaveNet?): {', '.join(sorted(keys)[:8])}"


def import_r9y9(checkpoint, hparams: dict | str | Path | None = None,
                stacks: int | None = None) -> tuple[WaveNet, list[str]]:
    """Read a wavenet_vocoder checkpoint → (float32 eval `WaveNet`, notes on every assumed setting)."""
    values = dict(read_hparams(hparams) if isinstance(hparams, (str, Path)) else (hparams or {}))
    check_hparams(values)
    if stacks is not None and (isinstance(stacks, bool) or not isinstance(stacks, int)):
        raise ImportError_(f"stacks must be an integer (got {stacks!r:.40})")
    state = fold_weight_norm(load_torch_state_dict(checkpoint))
    hp = _Hparams(values)
    _refuse_unsupported(hp.values, state)
    arch = _read_architecture(state)
    ups = _read_upsampling(state, arch.cin)
    cfg = _config(arch, ups, hp, stacks)
    return _load(cfg, _map_tensors(state, cfg, arch, ups)), hp.notes


class _Hparams:
    """Their hparams: settings the checkpoint does not record (each default taken becomes a note), and
    checks of the ones it does."""

    def __init__(self, values: dict):
        self.values, self.notes = dict(values), []

    def given(self, name: str) -> bool:
        return name in self.values and self.values[name] is not None

    def setting(self, name: str, default, why: str):
        if self.given(name):
            return self.values[name]
        self.notes.append(f"{name} = {default!r} ({why})")
        return default

    def check(self, name: str, actual) -> None:
        if self.given(name) and self.values[name] != actual:
            raise ImportError_(f"hparams {name}={self.values[name]!r}, but the checkpoint has {actual!r}")


def _refuse_unsupported(hp: dict, state: dict) -> None:
    """Settings and tensors we cannot express, named."""
    if hp.get("builder", "wavenet") != "wavenet":
        raise ImportError_(f"hparams builder={hp['builder']!r}: only the 'wavenet' builder maps")
    if str(hp.get("output_distribution", "Logistic")).lower() not in ("logistic", "mol"):
        raise ImportError_(f"hparams output_distribution={hp['output_distribution']!r} is not supported "
                           "(only the mixture of logistics and the categorical μ-law output map)")
    if hp.get("cin_pad", 0):
        raise ImportError_(f"hparams cin_pad={hp['cin_pad']!r} is not supported (only cin_pad 0 maps)")
    if hp.get("use_speaker_embedding", True) is False and (hp.get("gin_channels") or -1) > 0:
        raise ImportError_("hparams use_speaker_embedding=False is not supported: our graphs take speaker ids "
                           "and look up the embedding themselves")
    unknown = [k for k in state if k not in _FIXED and not _LAYER.match(k) and not _UPSAMPLE.match(k)]
    if unknown:
        raise ImportError_(_unsupported_keys(unknown))


def _need(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise ImportError_(f"the checkpoint lacks {key} (not a wavenet_vocoder WaveNet?)")
    return state[key]


@dataclass(frozen=True)
class _Architecture:
    """What the tensors say: channels, layers, conditioning, biases."""

    R: int  # residual channels
    c_in: int  # first_conv input channels: Q one-hot classes, or 1 (scalar)
    out_channels: int
    S: int  # skip channels
    L: int  # layers
    G: int  # gate channels
    K: int  # kernel size
    cin: int  # local-conditioning channels (0: none)
    gin: int  # global-conditioning channels (0: none)
    n_speakers: int
    dilated_bias: bool
    residual_bias: bool
    skip_bias: bool
    head_bias: bool
    first_bias: bool  # first_conv has a bias

    @property
    def scalar(self) -> bool:
        return self.c_in == 1


def _read_architecture(state: dict) -> _Architecture:
    first = _need(state, "first_conv.weight")
    if first.dim() != 3 or first.shape[2] != 1:
        raise ImportError_(f"first_conv.weight has shape {tuple(first.shape)}; expected a 1×1 conv (R, C, 1)")
    R, c_in = first.shape[0], first.shape[1]
    out_w = _need(state, "last_conv_layers.3.weight")
    out_channels, S = out_w.shape[0], out_w.shape[1]
    indices = sorted({int(m.group(1)) for k in state if (m := _LAYER.match(k))})
    if not indices or indices != list(range(len(indices))):
        raise ImportError_(f"conv_layers are not numbered 0…L−1 (found {indices[:10]})")
    L = len(indices)
    conv = _need(state, "conv_layers.0.conv.weight")
    G, K = conv.shape[0], conv.shape[2]
    if conv.shape[1] != R:
        raise ImportError_(f"conv_layers.0.conv reads {conv.shape[1]} channels but first_conv writes {R}")
    cin = state["conv_layers.0.conv1x1c.weight"].shape[1] if "conv_layers.0.conv1x1c.weight" in state else 0
    gin = state["conv_layers.0.conv1x1g.weight"].shape[1] if "conv_layers.0.conv1x1g.weight" in state else 0
    _check_layers_alike(state, L, cin, gin)
    n_speakers = _speakers(state, gin)

    def has_bias(name: str) -> bool:
        flags = {f"conv_layers.{i}.{name}.bias" in state for i in range(L)}
        if len(flags) != 1:
            raise ImportError_(f"some conv_layers.*.{name} have a bias and some do not")
        return flags.pop()

    dilated_bias = has_bias("conv") or (cin > 0 and has_bias("conv1x1c")) or (gin > 0 and has_bias("conv1x1g"))
    head_bias = {"last_conv_layers.1.bias" in state, "last_conv_layers.3.bias" in state}
    if len(head_bias) != 1:
        raise ImportError_("only one of last_conv_layers.1 / .3 has a bias")
    return _Architecture(R, c_in, out_channels, S, L, G, K, cin, gin, n_speakers, dilated_bias,
                         has_bias("conv1x1_out"), has_bias("conv1x1_skip"), head_bias.pop(),
                         "first_conv.bias" in state)


def _check_layers_alike(state: dict, L: int, cin: int, gin: int) -> None:
    for i in range(L):
        for name, present in (("conv", True), ("conv1x1_out", True), ("conv1x1_skip", True),
                              ("conv1x1c", cin > 0), ("conv1x1g", gin > 0)):
            if (f"conv_layers.{i}.{name}.weight" in state) != present:
                raise ImportError_(f"conv_layers.{i}.{name} is {'missing' if present else 'unexpected'}: "
                                   "every layer must have the same parts")


def _speakers(state: dict, gin: int) -> int:
    if gin:
        if "embed_speakers.weight" not in state:
            raise ImportError_("the layers have global conditioning (conv1x1g) but there is no embed_speakers: "
                               "use_speaker_embedding=False (external global features) is not supported; our "
                               "graphs take speaker ids")
        return state["embed_speakers.weight"].shape[0]
    if "embed_speakers.weight" in state:
        raise ImportError_("embed_speakers is present but no layer has conv1x1g (gin_channels)")
    return 0


@dataclass(frozen=True)
class _Upsampling:
    stages: list[int]  # upsample_conv module indices (0, 2, 4, …)
    scales: list[int]
    freq_k: int


def _read_upsampling(state: dict, cin: int) -> _Upsampling:
    """upsample_conv.{0,2,4…} = ConvTranspose2d (a ReLU module sits between them)."""
    stages = sorted({int(m.group(1)) for k in state if (m := _UPSAMPLE.match(k))})
    scales, freq_k = [], 3
    if not stages:
        return _Upsampling(stages, scales, freq_k)
    if stages != list(range(0, 2 * len(stages), 2)):
        raise ImportError_(f"upsample_conv modules {stages} are not ConvTranspose2d/ReLU pairs")
    for j in stages:
        w = _need(state, f"upsample_conv.{j}.weight")
        if w.dim() != 4 or w.shape[:2] != (1, 1):
            raise ImportError_(f"upsample_conv.{j}.weight has shape {tuple(w.shape)}; expected (1, 1, freq_k, s)")
        if f"upsample_conv.{j}.bias" not in state:
            raise ImportError_(f"upsample_conv.{j} has no bias")
        scales.append(int(w.shape[3]))
        freq_k = int(w.shape[2])
        if freq_k % 2 == 0:
            raise ImportError_(f"freq_axis_kernel_size={freq_k} is even: wavenet_vocoder's upsampling then "
                               "changes the number of feature channels; only odd sizes map")
    if not cin:
        raise ImportError_("upsample_conv is present but no layer has local conditioning (conv1x1c)")
    if len({int(state[f'upsample_conv.{j}.weight'].shape[2]) for j in stages}) != 1:
        raise ImportError_("the upsample_conv stages have different freq-axis kernel sizes")
    return _Upsampling(stages, scales, freq_k)


def _config(arch: _Architecture, ups: _Upsampling, hp: _Hparams, stacks: int | None) -> WaveNetConfig:
    """Settings from hparams / defaults, checked against the tensors → our config."""
    input_type = _input_type(arch, hp)
    for name, actual in (("layers", arch.L), ("residual_channels", arch.R), ("gate_channels", arch.G),
                         ("skip_out_channels", arch.S), ("kernel_size", arch.K), ("out_channels", arch.out_channels)):
        hp.check(name, actual)
    for name, actual in (("cin_channels", arch.cin), ("gin_channels", arch.gin)):  # theirs: −1 (or ≤ 0) = off
        if hp.given(name) and max(int(hp.values[name]), 0) != actual:
            raise ImportError_(f"hparams {name}={hp.values[name]!r}, but the checkpoint has {actual or 'none'}")
    if arch.gin:
        hp.check("n_speakers", arch.n_speakers)
    hop = _hop_size(arch, ups, hp)
    stacks = _stacks(arch, hp, stacks)
    Q, log_scale_min = _output(arch, hp)
    legacy = hp.setting("legacy", R9Y9_DEFAULTS["legacy"], "wavenet_vocoder's WaveNet default")
    if not isinstance(legacy, bool):
        raise ImportError_(f"hparams legacy={legacy!r} must be true or false")
    sample_rate = int(hp.setting("sample_rate", R9Y9_DEFAULTS["sample_rate"], "their hparams default"))
    a, stages = arch, ups.stages
    try:
        return WaveNetConfig(
            quantization_channels=Q, residual_channels=a.R, gate_channels=a.G, skip_channels=a.S, kernel_size=a.K,
            layers=a.L, stacks=stacks, bias=a.head_bias, local_channels=a.cin, hop_size=hop,
            # per-conv biases only where they differ from the head's (None: follow `bias`)
            dilated_bias=None if a.dilated_bias == a.head_bias else a.dilated_bias,
            residual_bias=None if a.residual_bias == a.head_bias else a.residual_bias,
            skip_bias=None if a.skip_bias == a.head_bias else a.skip_bias,
            upsample="conv_transpose" if stages else "repeat", upsample_scales=tuple(ups.scales) if stages else None,
            upsample_freq_kernel=ups.freq_k, speakers=a.n_speakers, speaker_channels=a.gin, scale_residual=True,
            legacy_skip_scale=legacy, sample_rate=sample_rate,
            input_kind="scalar" if a.scalar else "onehot", input_bias=a.scalar and a.first_bias,
            output_kind="mol" if a.scalar else "categorical", mixtures=a.out_channels // 3 if a.scalar else 0,
            log_scale_min=log_scale_min, scalar_mulaw=input_type == "mulaw")
    except ConfigError as e:
        raise ImportError_(f"the checkpoint maps to an invalid config: {e}") from None


def _input_type(arch: _Architecture, hp: _Hparams) -> str | None:
    input_type = hp.values.get("input_type")
    if input_type is not None:
        if input_type not in ("mulaw-quantize", "mulaw", "raw"):
            raise ImportError_(f"hparams input_type={input_type!r} is not one of mulaw-quantize, mulaw, raw")
        if (input_type != "mulaw-quantize") != arch.scalar:
            raise ImportError_(f"hparams input_type={input_type!r}, but first_conv reads {arch.c_in} channel(s) "
                               f"({'a scalar' if arch.scalar else 'one-hot classes'})")
    elif arch.scalar:
        hp.notes.append("input_type = 'raw' (scalar input, not μ-law companded; pass --hparams for 'mulaw')")
    return input_type


def _hop_size(arch: _Architecture, ups: _Upsampling, hp: _Hparams) -> int:
    values = hp.values
    if "upsample_conditional_features" in values and arch.cin:
        if bool(values["upsample_conditional_features"]) != bool(ups.stages):
            raise ImportError_(f"hparams upsample_conditional_features={values['upsample_conditional_features']!r}, "
                               f"but the checkpoint {'has' if ups.stages else 'has no'} upsample_conv network")
    if ups.stages:
        if values.get("upsample_scales") is not None and [int(s) for s in values["upsample_scales"]] != ups.scales:
            raise ImportError_(f"hparams upsample_scales={values['upsample_scales']!r}, but the checkpoint's "
                               f"upsample_conv kernels give {ups.scales}")
        hp.check("freq_axis_kernel_size", ups.freq_k)
        hop = math.prod(ups.scales)
        if values.get("hop_size") is not None and int(values["hop_size"]) != hop:
            raise ImportError_(f"hparams hop_size={values['hop_size']!r}, but upsample_scales {ups.scales} "
                               f"multiply to {hop}")
        return hop
    if arch.cin:  # their training repeats frame features hop_size times before the model
        return int(hp.setting("hop_size", 1, "no upsampling network: conditioning features are taken per sample"))
    return 1


def _stacks(arch: _Architecture, hp: _Hparams, stacks: int | None) -> int:
    if stacks is None:
        if not hp.given("stacks"):
            raise ImportError_("the checkpoint does not record stacks (the dilation cycles: dilation of layer i "
                               "is 2^(i mod layers/stacks)); pass --hparams PRESET.json or --stacks N")
        stacks = hp.values["stacks"]
    else:
        hp.check("stacks", stacks)
    stacks = int(stacks)
    if stacks < 1 or arch.L % stacks:
        raise ImportError_(f"stacks={stacks} does not divide layers={arch.L}")
    return stacks


def _output(arch: _Architecture, hp: _Hparams) -> tuple[int, float]:
    """(quantization channels, log_scale_min) of the output distribution."""
    if arch.scalar:
        if arch.out_channels % 3:
            raise ImportError_(f"out_channels={arch.out_channels} is not 3 × mixtures: a scalar-input model must have "
                               "a mixture-of-logistics output (a single Gaussian output_distribution is not supported)")
        Q = int(hp.setting("quantize_channels", R9Y9_DEFAULTS["quantize_channels_scalar"],
                           "bins of the discretised mixture likelihood"))
        return Q, float(hp.setting("log_scale_min", R9Y9_DEFAULTS["log_scale_min"], "their hparams default"))
    if arch.out_channels != arch.c_in:
        raise ImportError_(f"out_channels={arch.out_channels} differs from the {arch.c_in} one-hot input classes "
                           "(quantize_channels): a mulaw-quantize model predicts its own input classes")
    hp.check("quantize_channels", arch.c_in)
    return arch.c_in, -7.0


def _map_tensors(state: dict, cfg: WaveNetConfig, arch: _Architecture, ups: _Upsampling) -> dict[str, torch.Tensor]:
    """Their tensors under our names, in float64."""
    def f64(key: str) -> torch.Tensor:
        return state[key].double()

    def bias_sum(*keys: str) -> torch.Tensor | None:
        present = [f64(k) for k in keys if k in state]
        return sum(present) if present else None

    mapped: dict[str, torch.Tensor] = {}
    if arch.scalar:
        mapped["input_conv.weight"] = f64("first_conv.weight")
        if cfg.input_bias:
            mapped["input_conv.bias"] = f64("first_conv.bias")
    else:  # one-hot → 1×1 with bias ≡ embedding rows W[:, q] + b
        rows = f64("first_conv.weight")[:, :, 0].t()
        mapped["embed.weight"] = rows + f64("first_conv.bias") if "first_conv.bias" in state else rows
    for i in range(arch.L):
        p, q = f"conv_layers.{i}.", f"layers.{i}."
        mapped[q + "conv.weight"] = f64(p + "conv.weight")
        b = bias_sum(p + "conv.bias", p + "conv1x1c.bias", p + "conv1x1g.bias")  # all add before the gate
        if b is not None:
            mapped[q + "conv.bias"] = b
        if arch.cin:
            mapped[q + "cond.weight"] = f64(p + "conv1x1c.weight")
        if arch.gin:
            mapped[q + "speaker.weight"] = f64(p + "conv1x1g.weight")[:, :, 0]
        for theirs, ours in (("conv1x1_out", "out"), ("conv1x1_skip", "skip")):
            mapped[q + ours + ".weight"] = f64(p + theirs + ".weight")
            if p + theirs + ".bias" in state:
                mapped[q + ours + ".bias"] = f64(p + theirs + ".bias")
    for j in (1, 3):
        mapped[f"head.{j}.weight"] = f64(f"last_conv_layers.{j}.weight")
        if arch.head_bias:
            mapped[f"head.{j}.bias"] = f64(f"last_conv_layers.{j}.bias")
    if arch.gin:
        mapped["speaker_embed.weight"] = f64("embed_speakers.weight")
    for n, j in enumerate(ups.stages):
        mapped[f"upsample_convs.{n}.weight"] = f64(f"upsample_conv.{j}.weight")
        mapped[f"upsample_convs.{n}.bias"] = f64(f"upsample_conv.{j}.bias")
    return mapped


def _load(cfg: WaveNetConfig, mapped: dict[str, torch.Tensor]) -> WaveNet:
    """The mapped tensors into our model, refusing any misfit or non-finite weight."""
    model = WaveNet(cfg)
    expected = model.state_dict()
    problems = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}"
                for k in mapped if k in expected and mapped[k].shape != expected[k].shape]
    missing, extra = sorted(set(expected) - set(mapped)), sorted(set(mapped) - set(expected))
    if problems or missing or extra:
        raise ImportError_("the checkpoint's tensors do not fit the inferred architecture: "
                           + "; ".join(problems[:4] + [f"missing {', '.join(missing[:4])}"] * bool(missing)
                                       + [f"unexpected {', '.join(extra[:4])}"] * bool(extra)))
    if not all(torch.isfinite(v).all() for v in mapped.values()):
        raise ImportError_("the checkpoint contains NaN or Inf weights")
    mapped = {k: v.to(torch.float32) for k, v in mapped.items()}
    beyond = sorted(k for k, v in mapped.items() if not torch.isfinite(v).all())
    if beyond:
        raise ImportError_(f"weights beyond float32's range (±3.4e38) in {', '.join(beyond[:4])}: they are not "
                           "finite once cast to float32")
    model.load_state_dict(mapped)
    return model.eval()
