"""`WaveNetConfig`: the one description of a WaveNet's architecture, validated, with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

UPSAMPLE_METHODS = ("repeat", "linear", "conv_transpose")
INPUT_KINDS = ("onehot", "scalar")
OUTPUT_KINDS = ("categorical", "mol")
MAX_SAMPLE_RATE = (1 << 31) - 1  # a WAV header stores rate × 2 bytes in 32 bits
MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes


@dataclass(frozen=True)
class WaveNetConfig:
    """Architecture of the reference WaveNet.

    Dilations are `2**(i % cycle)` for layer i, with `cycle = layers // stacks` (1, 2, 4 … per stack),
    unless `dilations` lists them explicitly. `gate_channels` is the dilated convolution's output:
    its first half goes through tanh, its second half through σ (one convolution split in two, which
    equals one convolution per non-linearity).

    Variants of the common implementations (every default is the original architecture above):

    - `input_kind`: "onehot" (μ-law tokens) or "scalar" (one float sample per step, in [−1, 1]).
    - `initial_filter_width` W: the front end is a causal convolution of width W over the input
      (one-hot or scalar) with R outputs (ibab's initial causal layer). W = 1 with one-hot input is
      the embedding `embed` (≡ one-hot → 1×1); otherwise it is `input_conv` (bias: `input_bias`) and,
      for W > 1, it keeps its last W−1 inputs as state like a dilated layer with dilation 1.
    - `dilated_bias`, `residual_bias`, `skip_bias`: per-convolution biases (None: follow `bias`, which
      also sets the head's biases).
    - `last_residual`: False drops the last layer's residual 1×1 (only its skip output is used).
    - `separate_gate`: store the filter (tanh) and gate (σ) convolutions, and the conditioning
      projections, as separate `filter`/`gate` tensors; they run as one split convolution.
    - `legacy_skip_scale`: r9y9's skip sum s = s₀, s = (s + s_l)·√0.5 for l ≥ 1.
    - `output_kind`: "categorical" (Q logits) or "mol": 3·`mixtures` raw parameters of a discretised
      mixture of logistics (logit weights, means, log scales), log scales clamped below at
      `log_scale_min`, with Q = `quantization_channels` bins for the likelihood.
    - `scalar_mulaw`: scalar samples are μ-law companded (μ = Q − 1) rather than linear (r9y9 "mulaw").
    - `upsample` "conv_transpose": r9y9's network, per scale s of `upsample_scales` (product = hop_size)
      a ConvTranspose2d(1→1, kernel (`upsample_freq_kernel`, s), stride (1, s), padding
      ((freq_kernel−1)/2, 0)) over (channels × frames) followed by ReLU.
    """

    quantization_channels: int = 256  # μ-law classes Q (input tokens and output logits)
    residual_channels: int = 64  # R
    gate_channels: int = 128  # G, split into two halves of G/2
    skip_channels: int = 256  # S
    kernel_size: int = 2  # K of the dilated causal convolution
    layers: int = 10
    stacks: int = 1  # dilation cycles
    dilations: tuple[int, ...] | None = None  # explicit per-layer dilations (overrides the cycles)
    bias: bool = True  # biases of the dilated, residual, skip and head convolutions
    local_channels: int = 0  # local conditioning features per frame (0: off)
    hop_size: int = 1  # samples per conditioning frame
    upsample: str = "repeat"  # frame → sample upsampling: repeat | linear
    speakers: int = 0  # global conditioning: number of speakers (0: off)
    speaker_channels: int = 0  # speaker embedding size
    scale_residual: bool = False  # layer output = (residual 1×1 + input) · √0.5
    scale_skip: bool = False  # sum of skips · √(1 / layers)
    sample_rate: int = 16000
    # ---- variants (see the class doc; the defaults are the architecture above) -------------------
    input_kind: str = "onehot"  # onehot | scalar
    initial_filter_width: int = 1  # front-end causal convolution width W (1 with onehot: embedding)
    input_bias: bool = False  # bias of the front-end convolution (not with the one-hot embedding)
    dilated_bias: bool | None = None  # None: follow `bias`
    residual_bias: bool | None = None
    skip_bias: bool | None = None
    last_residual: bool = True  # False: the last layer has no residual 1×1
    separate_gate: bool = False  # filter/gate as separate tensors (run as one split convolution)
    legacy_skip_scale: bool = False  # r9y9 legacy: s = (s + s_l)·√0.5 for layers 1…L−1
    output_kind: str = "categorical"  # categorical | mol
    mixtures: int = 0  # logistic components of a mol output
    log_scale_min: float = -7.0  # mol: lower clamp of the log scales
    scalar_mulaw: bool = False  # scalar samples are μ-law companded (μ = Q − 1)
    upsample_scales: tuple[int, ...] | None = None  # conv_transpose: per-stage scales, product = hop_size
    upsample_freq_kernel: int = 3  # conv_transpose: kernel size along the channel axis (odd)

    def __post_init__(self) -> None:
        for name in ("dilations", "upsample_scales"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{name} must be a list of integers (got {value!r:.80})")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.log_scale_min, int) and not isinstance(self.log_scale_min, bool):
            object.__setattr__(self, "log_scale_min", float(self.log_scale_min))
        errors = list(self._problems())
        if not errors:  # sizes only once every field is valid (they are computed from the fields)
            errors = list(self._resource_problems())
        if errors:
            raise ConfigError("invalid WaveNet config: " + "; ".join(errors))

    def _problems(self):
        def positive(name: str, minimum: int = 1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                yield f"{name} must be an integer >= {minimum} (got {value!r})"

        for name in ("quantization_channels", "residual_channels", "gate_channels", "skip_channels",
                     "layers", "stacks", "hop_size", "sample_rate"):
            yield from positive(name)
        yield from positive("kernel_size", 2)
        yield from positive("local_channels", 0)
        yield from positive("speakers", 0)
        yield from positive("speaker_channels", 0)
        if isinstance(self.quantization_channels, int) and self.quantization_channels < 2:
            yield "quantization_channels must be >= 2"
        if isinstance(self.gate_channels, int) and self.gate_channels % 2:
            yield f"gate_channels must be even (two halves for tanh and σ), got {self.gate_channels}"
        if self.dilations is not None:
            if len(self.dilations) != self.layers:
                yield (f"dilations lists {len(self.dilations)} layers but layers={self.layers}; "
                       "make them agree")
            if any(d < 1 for d in self.dilations):
                yield f"dilations must all be >= 1 (got {list(self.dilations)})"
        elif isinstance(self.layers, int) and isinstance(self.stacks, int) and self.stacks >= 1 \
                and self.layers % self.stacks:
            yield f"layers ({self.layers}) must be a multiple of stacks ({self.stacks})"
        if self.upsample not in UPSAMPLE_METHODS:
            yield f"upsample must be one of {', '.join(UPSAMPLE_METHODS)} (got {self.upsample!r})"
        if isinstance(self.speakers, int) and isinstance(self.speaker_channels, int) \
                and (self.speakers > 0) != (self.speaker_channels > 0):
            yield "speakers and speaker_channels must both be > 0 (global conditioning) or both 0"
        for name in ("bias", "scale_residual", "scale_skip"):
            if not isinstance(getattr(self, name), bool):
                yield f"{name} must be true or false (got {getattr(self, name)!r})"
        yield from self._variant_problems(positive)

    def _variant_problems(self, positive):
        for name in ("input_bias", "last_residual", "separate_gate", "legacy_skip_scale", "scalar_mulaw"):
            if not isinstance(getattr(self, name), bool):
                yield f"{name} must be true or false (got {getattr(self, name)!r})"
        for name in ("dilated_bias", "residual_bias", "skip_bias"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                yield f"{name} must be true, false or null (null: follow bias) (got {getattr(self, name)!r})"
        if self.input_kind not in INPUT_KINDS:
            yield f"input_kind must be one of {', '.join(INPUT_KINDS)} (got {self.input_kind!r})"
        if self.output_kind not in OUTPUT_KINDS:
            yield f"output_kind must be one of {', '.join(OUTPUT_KINDS)} (got {self.output_kind!r})"
        yield from positive("initial_filter_width")
        yield from positive("mixtures", 0)
        yield from positive("upsample_freq_kernel")
        if self.input_kind == "onehot" and self.initial_filter_width == 1 and self.input_bias is True:
            yield ("input_bias needs input_kind 'scalar' or initial_filter_width > 1 (the one-hot embedding "
                   "has no bias: fold it into the embedding rows)")
        if self.scalar_mulaw is True and self.input_kind != "scalar":
            yield "scalar_mulaw needs input_kind 'scalar'"
        if self.output_kind == "mol":
            if self.input_kind != "scalar":
                yield ("output_kind 'mol' needs input_kind 'scalar' (a mixture of logistics models a "
                       "continuous sample, which is fed back as the next input)")
            if isinstance(self.mixtures, int) and not isinstance(self.mixtures, bool) and self.mixtures < 1:
                yield "output_kind 'mol' needs mixtures >= 1"
        elif isinstance(self.mixtures, int) and self.mixtures:
            yield f"mixtures is only for output_kind 'mol' (got mixtures={self.mixtures} with {self.output_kind!r})"
        if isinstance(self.log_scale_min, bool) or not isinstance(self.log_scale_min, float) \
                or not math.isfinite(self.log_scale_min):
            yield f"log_scale_min must be a finite number (got {self.log_scale_min!r})"
        if self.scale_skip is True and self.legacy_skip_scale is True:
            yield "scale_skip and legacy_skip_scale are two different skip scalings: choose one"
        if isinstance(self.upsample_freq_kernel, int) and self.upsample_freq_kernel % 2 == 0:
            yield (f"upsample_freq_kernel must be odd (got {self.upsample_freq_kernel}): an even kernel "
                   "changes the number of conditioning channels")
        if self.upsample == "conv_transpose":
            if not self.local:
                yield "upsample 'conv_transpose' needs local conditioning (local_channels > 0)"
            if not self.upsample_scales:
                yield "upsample 'conv_transpose' needs upsample_scales (their product is hop_size)"
            elif any(s < 1 for s in self.upsample_scales):
                yield f"upsample_scales must all be >= 1 (got {list(self.upsample_scales)})"
            elif math.prod(self.upsample_scales) != self.hop_size:
                yield (f"the product of upsample_scales {list(self.upsample_scales)} is "
                       f"{math.prod(self.upsample_scales)}, but hop_size is {self.hop_size}")
        elif self.upsample_scales is not None:
            yield f"upsample_scales is only for upsample 'conv_transpose' (got upsample {self.upsample!r})"

    def _resource_problems(self):
        """Sizes against `reference_model.limits` (each names the variable that raises it), cheapest first:
        the layer count bounds the work of computing the others."""
        from .limits import exceeded

        if problem := exceeded("layers", self.layers, "layers"):
            yield problem
            return
        if problem := exceeded("receptive_field", self.receptive_field, "the receptive field"):
            yield problem
            return
        if self.sample_rate > MAX_SAMPLE_RATE:
            yield f"sample_rate must be at most {MAX_SAMPLE_RATE:,} (a WAV header's byte rate is 32-bit)"
        for name, value, what in (("hop_size", self.hop_size, "hop_size"),
                                  ("parameters", self.parameter_count, "the parameter count"),
                                  ("state_bytes", self.state_bytes, "one stream's step state")):
            if problem := exceeded(name, value, what):
                yield problem

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def parameter_count(self) -> int:
        """Parameters of the `WaveNet` this config builds, computed without building it."""
        R, G, S, K = self.residual_channels, self.gate_channels, self.skip_channels, self.kernel_size
        half, O, E = G // 2, self.output_channels, self.speaker_channels
        if self.scalar_input or self.initial_filter_width > 1:
            count = self.input_channels * R * self.initial_filter_width + R * self.input_bias
        else:
            count = self.quantization_channels * R  # the embedding
        count += self.speakers * E if self.global_ else 0
        per_layer = G * R * K + G * self.has_dilated_bias + S * half + S * self.has_skip_bias
        per_layer += G * self.local_channels + (G * E if self.global_ else 0)
        residual = R * half + R * self.has_residual_bias
        count += self.layers * per_layer + residual * (self.layers - (not self.last_residual))
        count += S * S + O * S + (S + O) * self.bias  # the head
        if self.upsample == "conv_transpose":
            count += sum(self.upsample_freq_kernel * s + 1 for s in self.upsample_scales)
        return count

    @property
    def state_bytes(self) -> int:
        """One stream's step state in float32: every layer's (K−1)·d past inputs, and the front end's."""
        rows = sum(self.state_lengths)
        return 4 * (rows * self.residual_channels + self.input_state_length * self.input_channels)

    @property
    def layer_dilations(self) -> tuple[int, ...]:
        if self.dilations is not None:
            return self.dilations
        cycle = self.layers // self.stacks
        return tuple(2 ** (i % cycle) for i in range(self.layers))

    @property
    def receptive_field(self) -> int:
        """Samples that influence one output: (K−1)·Σd + 1 (+ W−1 for a wider front end)."""
        return (self.kernel_size - 1) * sum(self.layer_dilations) + 1 + self.input_state_length

    @property
    def state_lengths(self) -> tuple[int, ...]:
        """Per layer, how many past inputs the step needs: (K−1)·d."""
        return tuple((self.kernel_size - 1) * d for d in self.layer_dilations)

    @property
    def local(self) -> bool:
        return self.local_channels > 0

    @property
    def global_(self) -> bool:
        return self.speakers > 0

    @property
    def skip_scale(self) -> float:
        return math.sqrt(1.0 / self.layers) if self.scale_skip else 1.0

    @property
    def scalar_input(self) -> bool:
        return self.input_kind == "scalar"

    @property
    def mol(self) -> bool:
        return self.output_kind == "mol"

    @property
    def input_channels(self) -> int:
        """Channels the front end reads: Q one-hot classes, or 1 scalar."""
        return 1 if self.scalar_input else self.quantization_channels

    @property
    def output_channels(self) -> int:
        """Q logits, or 3·mixtures raw mixture-of-logistics parameters."""
        return 3 * self.mixtures if self.mol else self.quantization_channels

    @property
    def input_state_length(self) -> int:
        """Past inputs the front end keeps (W − 1; 0 for the embedding / a 1×1 front end)."""
        return self.initial_filter_width - 1

    @property
    def has_dilated_bias(self) -> bool:
        return self.bias if self.dilated_bias is None else self.dilated_bias

    @property
    def has_residual_bias(self) -> bool:
        return self.bias if self.residual_bias is None else self.residual_bias

    @property
    def has_skip_bias(self) -> bool:
        return self.bias if self.skip_bias is None else self.skip_bias

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["dilations"] is not None:
            d["dilations"] = list(d["dilations"])
        if d["upsample_scales"] is not None:
            d["upsample_scales"] = list(d["upsample_scales"])
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> WaveNetConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a WaveNet config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        data = dict(data)
        if data.get("dilations") is not None and "layers" not in data:
            data["layers"] = len(data["dilations"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> WaveNetConfig:
        try:
            data = json.loads(text)
        except ValueError as e:  # JSONDecodeError, and integers of more than 4,300 digits
            raise ConfigError(f"config is not valid JSON: {str(e)[:200]}") from None
        except RecursionError:
            raise ConfigError("config is not valid JSON: it is nested too deeply") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> WaveNetConfig:
        """A config JSON file (a regular file of at most `MAX_CONFIG_BYTES`)."""
        from .files import read_regular

        data = read_regular(path, MAX_CONFIG_BYTES, "config", ConfigError)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not UTF-8 text") from None
        return cls.from_json(text)

    def summary(self) -> str:
        d = self.layer_dilations
        lines = [
            f"μ-law classes        {self.quantization_channels}",
            f"channels             residual {self.residual_channels}, gate {self.gate_channels} "
            f"({self.gate_channels // 2} tanh + {self.gate_channels // 2} σ), skip {self.skip_channels}",
            f"layers               {self.layers} (kernel {self.kernel_size}, dilations "
            f"{', '.join(map(str, d[:12]))}{' …' if len(d) > 12 else ''})",
            f"receptive field      {self.receptive_field} samples "
            f"({1000 * self.receptive_field / self.sample_rate:.1f} ms at {self.sample_rate} Hz)",
            "local conditioning   "
            + (f"{self.local_channels} channels, hop {self.hop_size}, {self.upsample} upsampling"
               if self.local else "off"),
            "global conditioning  "
            + (f"{self.speakers} speakers, embedding {self.speaker_channels}" if self.global_ else "off"),
            f"scaling              residual √0.5 {'on' if self.scale_residual else 'off'}, "
            f"skip √(1/L) {'on' if self.scale_skip else 'off'}",
        ]
        lines += self._variant_summary()
        return "\n".join(lines)

    def _variant_summary(self) -> list[str]:
        lines = []
        if self.scalar_input or self.initial_filter_width > 1 or self.input_bias:
            lines.append(f"input                {self.input_kind}"
                         + (" (μ-law companded)" if self.scalar_mulaw else "")
                         + f", front-end causal conv width {self.initial_filter_width}"
                         + (" with bias" if self.input_bias else ""))
        if self.mol:
            lines.append(f"output               mixture of {self.mixtures} logistics "
                         f"({self.output_channels} parameters, log scale ≥ {self.log_scale_min:g}, "
                         f"{self.quantization_channels} bins)")
        if self.upsample == "conv_transpose":
            lines.append(f"upsampling network   conv_transpose scales {list(self.upsample_scales)}, "
                         f"freq kernel {self.upsample_freq_kernel}")
        flags = []
        for name in ("dilated_bias", "residual_bias", "skip_bias"):
            if getattr(self, name) is not None:
                flags.append(f"{name} {'on' if getattr(self, name) else 'off'}")
        if not self.last_residual:
            flags.append("no residual 1×1 in the last layer")
        if self.separate_gate:
            flags.append("separate filter/gate tensors")
        if self.legacy_skip_scale:
            flags.append("legacy skip scaling (s + s_l)·√0.5")
        if flags:
            lines.append(f"variants             {', '.join(flags)}")
        return lines


__all__ = ["WaveNetConfig", "UPSAMPLE_METHODS", "INPUT_KINDS", "OUTPUT_KINDS"]
