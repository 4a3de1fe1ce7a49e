"""The reference WaveNet: full-sequence `forward` and incremental `step` through one code path.

Every layer computes `layer(window, dilation)` where `window = [past inputs | current inputs]`:
`forward` passes zeros as the past and the whole sequence as current inputs, `step` passes the
layer's state (its last (K−1)·d inputs) and one sample. The math exists once, so the two paths
cannot drift; the exported step graph calls the same layer with the K−1 tap columns and dilation 1.

Shapes: B batch, T time, R residual, G gate, S skip, Q classes, C local-conditioning channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import WaveNetConfig
from .errors import InputError

State = list[torch.Tensor]  # per layer (B, R, (K−1)·d), oldest input first


class ResidualLayer(nn.Module):
    """Dilated causal conv → gated activation → residual 1×1 and skip 1×1."""

    def __init__(self, cfg: WaveNetConfig, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.past = (cfg.kernel_size - 1) * dilation
        self.residual_scale = math.sqrt(0.5) if cfg.scale_residual else 1.0
        self.half = cfg.gate_channels // 2
        self.context = cfg.kernel_size - 1
        self.conv = nn.Conv1d(cfg.residual_channels, cfg.gate_channels, cfg.kernel_size, bias=cfg.bias)
        self.cond = nn.Conv1d(cfg.local_channels, cfg.gate_channels, 1, bias=False) if cfg.local else None
        self.speaker = nn.Linear(cfg.speaker_channels, cfg.gate_channels, bias=False) if cfg.global_ else None
        half = cfg.gate_channels // 2
        self.skip = nn.Conv1d(half, cfg.skip_channels, 1, bias=cfg.bias)
        self.out = nn.Conv1d(half, cfg.residual_channels, 1, bias=cfg.bias)

    def forward(self, window: torch.Tensor, dilation: int, cond: torch.Tensor | None = None,
                speaker: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """window (B, R, (K−1)·dilation + T) → (layer output (B, R, T), skip (B, S, T)).

        `dilation` is the spacing of the window's columns: the layer's own dilation when the
        window is contiguous samples, 1 when it holds only the K taps.
        """
        z = F.conv1d(window, self.conv.weight, self.conv.bias, dilation=dilation)  # (B, G, T)
        if self.cond is not None:
            z = z + self.cond(cond)  # cond (B, C, T)
        if self.speaker is not None:
            z = z + self.speaker(speaker).unsqueeze(-1)  # speaker embedding (B, E) → (B, G, 1)
        a, b = z.split(self.half, dim=1)  # (B, G/2, T) each
        h = torch.tanh(a) * torch.sigmoid(b)
        x = window[:, :, self.context * dilation:]  # the current inputs (B, R, T)
        out = self.out(h) + x
        if self.residual_scale != 1.0:
            out = out * self.residual_scale
        return out, self.skip(h)


class WaveNet(nn.Module):
    """μ-law categorical WaveNet with optional local and global conditioning."""

    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.quantization_channels, cfg.residual_channels)  # = one-hot → 1×1
        self.speaker_embed = nn.Embedding(cfg.speakers, cfg.speaker_channels) if cfg.global_ else None
        self.layers = nn.ModuleList(ResidualLayer(cfg, d) for d in cfg.layer_dilations)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1, bias=cfg.bias),
            nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.quantization_channels, 1, bias=cfg.bias))

    # ---- public API ---------------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        return self.cfg.receptive_field

    def initial_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> State:
        p = self.embed.weight
        return [torch.zeros(batch, self.cfg.residual_channels, n, dtype=dtype or p.dtype,
                            device=device or p.device) for n in self.cfg.state_lengths]

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor | None = None,
                speaker: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) int64, cond (B, C, frames), speaker (B,) → logits (B, T, Q).

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
        """token (B,) int64, cond_t (B, C) for this sample, speaker (B,) → (logits (B, Q), new state)."""
        self._check_tokens(token, 1)
        if self.cfg.local:
            if cond_t is None or cond_t.dim() != 2 or cond_t.shape != (token.shape[0], self.cfg.local_channels):
                raise InputError(f"step needs cond_t of shape (batch, {self.cfg.local_channels}), "
                                 f"got {None if cond_t is None else tuple(cond_t.shape)}")
            cond_t = cond_t.unsqueeze(-1)  # (B, C, 1)
        else:
            self._no_cond(cond_t)
        self._check_speaker(speaker, token.shape[0])
        if len(state) != len(self.layers):
            raise InputError(f"state has {len(state)} tensors, the model has {len(self.layers)} layers")
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
        """
        x = self.embed(tokens).transpose(1, 2)  # (B, R, T)
        g = self.speaker_embed(speaker) if self.speaker_embed is not None else None  # (B, E)
        skips = 0
        new_pasts = []
        for layer, past in zip(self.layers, pasts):
            window = torch.cat([past, x], dim=-1)  # (B, R, (K−1)d + T), or (B, R, K) with taps
            new_pasts.append(x if taps else window[:, :, -layer.past:])
            x, s = layer(window, 1 if taps else layer.dilation, cond, g)  # (B, R, T), (B, S, T)
            skips = skips + (s if skip_dtype is None else s.to(skip_dtype))
        if self.cfg.scale_skip:
            skips = skips * self.cfg.skip_scale
        logits = self.head(skips.to(self.embed.weight.dtype))  # (B, Q, T)
        return logits.transpose(1, 2), new_pasts

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
        else:  # linear
            c = F.interpolate(cond, scale_factor=hop, mode="linear", align_corners=False)
        return c if length is None else c[:, :, :length]

    # ---- checks -------------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, dims: int) -> None:
        want = "(batch, time)" if dims == 2 else "(batch,)"
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
