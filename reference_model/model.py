"""The reference WaveNet: full-sequence `forward` and incremental `step` through one code path.

Every layer computes `layer(window, dilation)` where `window = [past inputs | current inputs]`:
`forward` passes zeros as the past and the whole sequence as current inputs, `step` passes the
layer's state (its last (K−1)·d inputs) and one sample. The math exists once, so the two paths
cannot drift; the exported step graph calls the same layer with the K−1 tap columns and dilation 1.

Shapes: B batch, T time, R residual, G gate, S skip, Q classes, C local-conditioning channels,
O outputs (Q logits, or 3·mixtures mixture-of-logistics parameters).

The variants of `WaveNetConfig` live in the same code path: a front end that is a causal convolution
of width W > 1 is one more "layer" whose window is [its last W−1 inputs | current inputs] (its state
comes first in the state list), a scalar input is a (B, T) float sample instead of a token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import WaveNetConfig
from .errors import InputError
from .mixture import mol_log_prob, mulaw_classes

# per layer (B, R, (K−1)·d), oldest input first; with a front end of width W > 1, preceded by the
# front end's last W−1 inputs (B, Q one-hot or 1 scalar, W−1)
State = list[torch.Tensor]


class ResidualLayer(nn.Module):
    """Dilated causal conv → gated activation → residual 1×1 and skip 1×1."""

    def __init__(self, cfg: WaveNetConfig, dilation: int, last: bool = False):
        super().__init__()
        self.dilation = dilation
        self.past = (cfg.kernel_size - 1) * dilation
        self.residual_scale = math.sqrt(0.5) if cfg.scale_residual else 1.0
        self.half = cfg.gate_channels // 2
        self.context = cfg.kernel_size - 1
        self.separate = cfg.separate_gate
        if cfg.separate_gate:  # filter (tanh) and gate (σ) halves as separate tensors
            conv = lambda: nn.Conv1d(cfg.residual_channels, self.half, cfg.kernel_size,  # noqa: E731
                                     bias=cfg.has_dilated_bias)
            self.filter, self.gate = conv(), conv()
            if cfg.local:
                self.cond_filter = nn.Conv1d(cfg.local_channels, self.half, 1, bias=False)
                self.cond_gate = nn.Conv1d(cfg.local_channels, self.half, 1, bias=False)
            if cfg.global_:
                self.speaker_filter = nn.Linear(cfg.speaker_channels, self.half, bias=False)
                self.speaker_gate = nn.Linear(cfg.speaker_channels, self.half, bias=False)
            self.conv = self.cond = self.speaker = None
            self.has_cond, self.has_speaker = cfg.local, cfg.global_
        else:
            self.conv = nn.Conv1d(cfg.residual_channels, cfg.gate_channels, cfg.kernel_size,
                                  bias=cfg.has_dilated_bias)
            self.cond = nn.Conv1d(cfg.local_channels, cfg.gate_channels, 1, bias=False) if cfg.local else None
            self.speaker = nn.Linear(cfg.speaker_channels, cfg.gate_channels, bias=False) if cfg.global_ else None
            self.has_cond, self.has_speaker = self.cond is not None, self.speaker is not None
        half = cfg.gate_channels // 2
        self.skip = nn.Conv1d(half, cfg.skip_channels, 1, bias=cfg.has_skip_bias)
        self.out = (nn.Conv1d(half, cfg.residual_channels, 1, bias=cfg.has_residual_bias)
                    if cfg.last_residual or not last else None)

    def weights(self):
        """(dilated weight (G, R, K), its bias or None, cond weight (G, C, 1) or None, speaker weight
        (G, E) or None): with `separate_gate`, the filter and gate tensors concatenated (filter first)."""
        if not self.separate:
            return (self.conv.weight, self.conv.bias, None if self.cond is None else self.cond.weight,
                    None if self.speaker is None else self.speaker.weight)
        cat = lambda a, b: torch.cat([a, b], dim=0)  # noqa: E731
        bias = None if self.filter.bias is None else cat(self.filter.bias, self.gate.bias)
        return (cat(self.filter.weight, self.gate.weight), bias,
                cat(self.cond_filter.weight, self.cond_gate.weight) if self.has_cond else None,
                cat(self.speaker_filter.weight, self.speaker_gate.weight) if self.has_speaker else None)

    def forward(self, window: torch.Tensor, dilation: int, cond: torch.Tensor | None = None,
                speaker: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """window (B, R, (K−1)·dilation + T) → (layer output (B, R, T), skip (B, S, T)).

        `dilation` is the spacing of the window's columns: the layer's own dilation when the
        window is contiguous samples, 1 when it holds only the K taps.
        """
        weight, bias, cond_weight, speaker_weight = self.weights()
        z = F.conv1d(window, weight, bias, dilation=dilation)  # (B, G, T)
        if cond_weight is not None:
            z = z + F.conv1d(cond, cond_weight)  # cond (B, C, T)
        if speaker_weight is not None:
            z = z + F.linear(speaker, speaker_weight).unsqueeze(-1)  # speaker embedding (B, E) → (B, G, 1)
        a, b = z.split(self.half, dim=1)  # (B, G/2, T) each
        h = torch.tanh(a) * torch.sigmoid(b)
        x = window[:, :, self.context * dilation:]  # the current inputs (B, R, T)
        if self.out is None:  # last layer without a residual 1×1: its output is its input (unused)
            return x, self.skip(h)
        out = self.out(h) + x
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return out, self.skip(h)


def _conv_transpose_time(c: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """`conv` (1→1 channel, kernel (k, s), stride (1, s), padding ((k−1)/2, 0)) over c as an image
    (B, 1, C, F), written as what it is: the stride equals the kernel width, so output column f·s + j
    is a k-tap correlation over the channel axis of input column f with the flipped kernel column j.
    One Conv with s output channels and a reshape: shape inference and every backend handle it.
    (B, C, F) → (B, C, F·s)."""
    k, s = conv.weight.shape[2], conv.weight.shape[3]
    flipped = conv.weight[0, 0][torch.arange(k - 1, -1, -1, device=c.device)]  # a Gather: constant-folded
    weight = flipped.transpose(0, 1).reshape(s, 1, k, 1)  # (s, 1, k, 1)
    y = F.conv2d(c.unsqueeze(1), weight, padding=((k - 1) // 2, 0)) + conv.bias  # (B, s, C, F)
    B, _, C, frames = y.shape
    return y.permute(0, 2, 3, 1).reshape(B, C, frames * s)


class WaveNet(nn.Module):
    """WaveNet with optional local and global conditioning: μ-law categorical by default, and the
    variants of `WaveNetConfig` (scalar input, wider front end, mixture-of-logistics output …)."""

    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.scalar_input or cfg.initial_filter_width > 1:  # causal conv over one-hot / scalar input
            self.embed = None
            self.input_conv = nn.Conv1d(cfg.input_channels, cfg.residual_channels, cfg.initial_filter_width,
                                        bias=cfg.input_bias)
        else:
            self.embed = nn.Embedding(cfg.quantization_channels, cfg.residual_channels)  # = one-hot → 1×1
            self.input_conv = None
        self.speaker_embed = nn.Embedding(cfg.speakers, cfg.speaker_channels) if cfg.global_ else None
        dilations = cfg.layer_dilations
        self.layers = nn.ModuleList(ResidualLayer(cfg, d, last=i == len(dilations) - 1)
                                    for i, d in enumerate(dilations))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1, bias=cfg.bias),
            nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.output_channels, 1, bias=cfg.bias))
        if cfg.upsample == "conv_transpose":  # r9y9's upsampling network over (channels × frames)
            k = cfg.upsample_freq_kernel
            self.upsample_convs = nn.ModuleList(
                nn.ConvTranspose2d(1, 1, (k, s), stride=(1, s), padding=((k - 1) // 2, 0))
                for s in cfg.upsample_scales)
        else:
            self.upsample_convs = None

    # ---- public API ---------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        return self.cfg.receptive_field

    def initial_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> State:
        p = self.head[-1].weight
        state = [torch.zeros(batch, self.cfg.residual_channels, n, dtype=dtype or p.dtype,
                             device=device or p.device) for n in self.cfg.state_lengths]
        if self.cfg.input_state_length:
            state.insert(0, torch.zeros(batch, self.cfg.input_channels, self.cfg.input_state_length,
                                        dtype=dtype or p.dtype, device=device or p.device))
        return state

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                speaker: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) int64 (scalar input: float samples), cond (B, C, frames), speaker (B,)
        → outputs (B, T, O): logits, or mixture-of-logistics parameters.

        logits[:, t] is the distribution of sample t+1 given samples ≤ t (and the conditioning).
        """
        self._check_tokens(tokens, 2)
        B, T = tokens.shape
        c = self.upsample(cond, T) if self.cfg.local else self._no_cond(cond)
        self._check_speaker(speaker, B)
        logits, _ = self.run(tokens, self.initial_state(B), c, speaker)
        return logits

    def step(self, token: torch.Tensor, state: State, cond_t: torch.Tensor | None = None,
             speaker: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """token (B,) int64 (scalar input: float sample), cond_t (B, C) for this sample, speaker (B,)
        → (outputs (B, O), new state)."""
        self._check_tokens(token, 1)
        if self.cfg.local:
            if cond_t is None or cond_t.dim() != 2 or cond_t.shape != (token.shape[0], self.cfg.local_channels):
                raise InputError(f"step needs cond_t of shape (batch, {self.cfg.local_channels}), "
                                 f"got {None if cond_t is None else tuple(cond_t.shape)}")
            cond_t = cond_t.unsqueeze(-1)  # (B, C, 1)
        else:
            self._no_cond(cond_t)
        self._check_speaker(speaker, token.shape[0])
        if len(state) != len(self.cfg.state_lengths) + (self.cfg.input_state_length > 0):
            raise InputError(f"state has {len(state)} tensors, the model has {len(self.layers)} layers"
                             + (" and a stateful front end" if self.cfg.input_state_length else ""))
        logits, state = self.run(token.unsqueeze(1), state, cond_t, speaker)
        return logits[:, 0], state

    def run(self, tokens: torch.Tensor, pasts: State, cond: torch.Tensor | None = None,
            speaker: torch.Tensor | None = None, *, taps: bool = False,
            skip_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, State]:
        """The one code path: T new samples after `pasts` → (logits (B, T, Q), new pasts).

        pasts[l] is layer l's last (K−1)·d inputs (B, R, (K−1)·d), oldest first; with `taps=True`
        it is only the K−1 columns the dilated kernel reads (B, R, K−1) (T must be 1), and the new
        pasts are the layers' inputs (B, R, T) for the caller to store. cond is per sample
        (B, C, T); speaker (B,) ids. `skip_dtype` accumulates the skips in another precision.
        No input checks here (the graph wrappers trace this method); `forward` and `step` check.
        With a front end of width W > 1, pasts[0] is its last W−1 inputs (B, Q or 1, W−1) (all of
        them with `taps`: its dilation is 1) and the layers' pasts follow.
        """
        new_pasts = []
        if self.input_conv is None:
            x = self.embed(tokens).transpose(1, 2)  # (B, R, T)
        else:
            pasts = list(pasts)
            inputs = self.input_features(tokens)  # (B, Q one-hot or 1 scalar, T)
            if self.cfg.input_state_length:
                window = torch.cat([pasts.pop(0), inputs], dim=-1)  # (B, ·, W−1 + T)
                new_pasts.append(inputs if taps else window[:, :, -self.cfg.input_state_length:])
            else:
                window = inputs
            x = self.input_conv(window)  # (B, R, T)
        g = self.speaker_embed(speaker) if self.speaker_embed is not None else None  # (B, E)
        skips = 0
        legacy = math.sqrt(0.5) if self.cfg.legacy_skip_scale else None
        for i, (layer, past) in enumerate(zip(self.layers, pasts)):
            window = torch.cat([past, x], dim=-1)  # (B, R, (K−1)d + T), or (B, R, K) with taps
            new_pasts.append(x if taps else window[:, :, -layer.past:])
            x, s = layer(window, 1 if taps else layer.dilation, cond, g)  # (B, R, T), (B, S, T)
            skips = skips + (s if skip_dtype is None else s.to(skip_dtype))
            if legacy is not None and i > 0:  # r9y9 legacy: s = (s + s_l)·√0.5
                skips = skips * legacy
        if self.cfg.scale_skip:
            skips = skips * self.cfg.skip_scale
        logits = self.head(skips.to(self.head[-1].weight.dtype))  # (B, O, T)
        return logits.transpose(1, 2), new_pasts

    def input_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the front-end convolution reads: (B, T) tokens → one-hot (B, Q, T), or (B, T) float
        samples → (B, 1, T), in the weights' dtype."""
        dtype = self.input_conv.weight.dtype
        if self.cfg.scalar_input:
            return tokens.to(dtype).unsqueeze(1)
        classes = torch.arange(self.cfg.quantization_channels, device=tokens.device).view(1, -1, 1)
        return (tokens.unsqueeze(1) == classes).to(dtype)

    def log_prob(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """outputs (B, T, O) of `run`, inputs (B, T) → log p(input t+1 | inputs ≤ t) (B, T−1), in the
        outputs' dtype: log-softmax of the next token's class (a scalar input's class is its μ-law
        class), or the discretised mixture-of-logistics log-likelihood of the next sample."""
        cfg = self.cfg
        if cfg.mol:
            return mol_log_prob(outputs[:, :-1], tokens[:, 1:].to(outputs.dtype), cfg.quantization_channels,
                                cfg.log_scale_min)
        target = tokens[:, 1:]
        if cfg.scalar_input:
            target = mulaw_classes(target, cfg.quantization_channels, companded=cfg.scalar_mulaw)
        return torch.log_softmax(outputs[:, :-1], dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def upsample(self, cond: torch.Tensor | None, length: int | None = None) -> torch.Tensor:
        """Frame-rate features (B, C, frames) → per-sample features (B, C, frames·hop)[..., :length]."""
        C, hop = self.cfg.local_channels, self.cfg.hop_size
        if cond is None or cond.dim() != 3 or cond.shape[1] != C:
            raise InputError(f"this model needs local conditioning of shape (batch, {C}, frames), "
                             f"got {None if cond is None else tuple(cond.shape)}")
        if length is not None and cond.shape[-1] * hop < length:
            raise InputError(f"conditioning covers {cond.shape[-1]} frames × hop {hop} = "
                             f"{cond.shape[-1] * hop} samples, fewer than the {length} tokens")
        if self.cfg.upsample == "repeat":
            c = cond.repeat_interleave(hop, dim=-1)
        elif self.upsample_convs is not None:  # conv_transpose: (B, C, frames) → (B, C, frames·hop)
            c = cond
            for conv in self.upsample_convs:
                c = torch.relu(_conv_transpose_time(c, conv))
        else:  # linear
            c = F.interpolate(cond, scale_factor=hop, mode="linear", align_corners=False)
        return c if length is None else c[:, :, :length]

    # ---- checks -------------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, dims: int) -> None:
        want = "(batch, time)" if dims == 2 else "(batch,)"
        if self.cfg.scalar_input:
            if not isinstance(tokens, torch.Tensor) or tokens.dim() != dims or not tokens.is_floating_point():
                raise InputError(f"this model takes scalar samples: a float tensor of shape {want}, got "
                                 + (f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor)
                                    else type(tokens).__name__))
            if tokens.numel() and not torch.isfinite(tokens).all():
                raise InputError("samples must be finite")
            return
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != dims:
            raise InputError(f"tokens must be an integer tensor of shape {want}, got "
                             f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise InputError(f"tokens must be int64, got {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.quantization_channels):
            raise InputError(f"tokens must lie in [0, {self.cfg.quantization_channels - 1}]")

    def _no_cond(self, cond):
        if cond is not None:
            raise InputError("this model has no local conditioning, but conditioning was given")
        return None

    def _check_speaker(self, speaker: torch.Tensor | None, batch: int) -> None:
        if self.speaker_embed is None:
            if speaker is not None:
                raise InputError("this model has no global conditioning, but a speaker was given")
            return
        if speaker is None or speaker.shape != (batch,):
            raise InputError(f"this model needs speaker ids of shape ({batch},), got "
                             f"{None if speaker is None else tuple(speaker.shape)}")
        if int(speaker.min()) < 0 or int(speaker.max()) >= self.cfg.speakers:
            raise InputError(f"speaker ids must lie in [0, {self.cfg.speakers - 1}]")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
