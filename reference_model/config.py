"""`WaveNetConfig`: the one description of a WaveNet's architecture, validated, with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

UPSAMPLE_METHODS = ("repeat", "linear")


@dataclass(frozen=True)
class WaveNetConfig:
    """Architecture of the reference WaveNet.

    Dilations are `2**(i % cycle)` for layer i, with `cycle = layers // stacks` (1, 2, 4 … per stack),
    unless `dilations` lists them explicitly. `gate_channels` is the dilated convolution's output:
    its first half goes through tanh, its second half through σ (one convolution split in two, which
    equals one convolution per non-linearity).
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

    def __post_init__(self) -> None:
        if self.dilations is not None:
            try:
                object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
            except (TypeError, ValueError):
                raise ConfigError(f"dilations must be a list of integers (got {self.dilations!r})") from None
        errors = list(self._problems())
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

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def layer_dilations(self) -> tuple[int, ...]:
        if self.dilations is not None:
            return self.dilations
        cycle = self.layers // self.stacks
        return tuple(2 ** (i % cycle) for i in range(self.layers))

    @property
    def receptive_field(self) -> int:
        """Samples that influence one output: (K−1)·Σd + 1."""
        return (self.kernel_size - 1) * sum(self.layer_dilations) + 1

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

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["dilations"] is not None:
            d["dilations"] = list(d["dilations"])
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
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> WaveNetConfig:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
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
            f"local conditioning   "
            + (f"{self.local_channels} channels, hop {self.hop_size}, {self.upsample} upsampling"
               if self.local else "off"),
            f"global conditioning  "
            + (f"{self.speakers} speakers, embedding {self.speaker_channels}" if self.global_ else "off"),
            f"scaling              residual √0.5 {'on' if self.scale_residual else 'off'}, "
            f"skip √(1/L) {'on' if self.scale_skip else 'off'}",
        ]
        return "\n".join(lines)


__all__ = ["WaveNetConfig", "UPSAMPLE_METHODS"]
