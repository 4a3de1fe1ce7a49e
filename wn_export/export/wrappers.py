"""The exported graphs as nn.Modules whose forward IS the contract of `wn_export.contract.specs`.

`ScoringGraph`, `StepGraph` (ring or full state layout) and `UpsampleGraph` take their inputs in the
spec's order and return its outputs in order; `export.pipeline` traces them to ONNX.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_model import WaveNet, WaveNetConfig
from wn_export.contract.specs import GraphSpec, ring_offsets, scoring_spec, step_spec, upsample_spec
from wn_export.export.precision import Precision


# ---- wrappers: forward(*inputs in spec order) → outputs in spec order ------------------------------
class _Graph(nn.Module):
    def __init__(self, model: WaveNet, precision: Precision, spec: GraphSpec):
        super().__init__()
        self.net = precision.apply(model)
        self.precision = precision
        self.spec = spec
        self.cfg = model.cfg

    def _conditioning(self, extra) -> tuple[torch.Tensor | None, torch.Tensor | None, list]:
        extra = list(extra)
        cond = extra.pop(0).to(self.precision.compute) if self.cfg.local else None
        speaker = extra.pop(0) if self.cfg.global_ else None
        return cond, speaker, extra


class ScoringGraph(_Graph):
    def __init__(self, model: WaveNet, precision: Precision):
        super().__init__(model, precision, scoring_spec(model.cfg, precision))

    def forward(self, tokens, *extra):  # tokens (B, T), cond (B, C, T)
        cond, speaker, _ = self._conditioning(extra)
        B = tokens.shape[0]
        pasts = [torch.zeros(B, self.cfg.residual_channels, n, dtype=self.precision.compute)
                 for n in self.cfg.state_lengths]
        if self.cfg.input_state_length:  # a wide front end's past comes first
            pasts.insert(0, torch.zeros(B, self.cfg.input_channels, self.cfg.input_state_length,
                                        dtype=self.precision.compute))
        logits, _ = self.net.run(tokens, pasts, cond, speaker, skip_dtype=self.precision.skip_accumulate)
        logits = logits.to(self.precision.output)  # (B, T, Q) (mol: (B, T, 3·mixtures))
        if self.cfg.scalar_input or self.cfg.mol:  # μ-law class of a scalar / mixture log-likelihood
            return logits, self.net.log_prob(logits, tokens)
        log_prob = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:].unsqueeze(-1))
        return logits, log_prob.squeeze(-1)  # (B, T, Q), (B, T−1)


class StepGraph(_Graph):
    def __init__(self, model: WaveNet, precision: Precision, layout: str = "ring"):
        super().__init__(model, precision, step_spec(model.cfg, precision, layout))
        self.layout = layout
        if layout == "ring":  # constant tap tables: for layer l and tap j < K−1
            K = self.cfg.kernel_size
            base, shift, mod = [], [], []
            for (offset, n), d in zip(ring_offsets(self.cfg), self.cfg.layer_dilations):
                for j in range(K - 1):
                    base.append(offset)
                    shift.append(j * d)
                    mod.append(n)
            self.register_buffer("tap_base", torch.tensor(base, dtype=torch.int64))
            self.register_buffer("tap_shift", torch.tensor(shift, dtype=torch.int64))
            self.register_buffer("tap_mod", torch.tensor(mod, dtype=torch.int64))
            if self.cfg.input_state_length:  # a wide front end's ring: all its W−1 columns, dilation 1
                self.register_buffer("input_tap_shift", torch.arange(self.cfg.input_state_length))

    def forward(self, token, *extra):  # token (B,)
        cond, speaker, state = self._conditioning(extra)
        if cond is not None:
            cond = cond.unsqueeze(-1)  # (B, C, 1)
        tokens = token.unsqueeze(1)  # (B, 1)
        if self.layout == "ring":
            packed, position, *front = state  # (B, ΣN, R), (1,) [, input_state (B, W−1, Q or 1)]
            # the sample of time t − (K−1)d + j·d sits at offset + (t + j·d) mod (K−1)d
            index = self.tap_base + torch.remainder(position + self.tap_shift, self.tap_mod)  # (L·(K−1),)
            taps = packed.index_select(1, index).transpose(1, 2)  # (B, R, L·(K−1))
            pasts = list(taps.split(self.cfg.kernel_size - 1, dim=-1))  # L × (B, R, K−1)
            if front:  # the front end's W−1 past inputs, oldest first
                W1 = self.cfg.input_state_length
                order = torch.remainder(position + self.input_tap_shift, W1)
                pasts.insert(0, front[0].index_select(1, order).transpose(1, 2))  # (B, Q or 1, W−1)
            logits, inputs = self.net.run(tokens, pasts, cond, speaker, taps=True,
                                          skip_dtype=self.precision.skip_accumulate)
            if front:
                front_update = inputs.pop(0).transpose(1, 2)  # (B, 1, Q or 1)
                update = torch.cat(inputs, dim=-1).transpose(1, 2)  # (B, L, R)
                return logits[:, 0].to(self.precision.output), update, front_update
            update = torch.cat(inputs, dim=-1).transpose(1, 2)  # (B, L, R)
            return logits[:, 0].to(self.precision.output), update
        logits, nxt = self.net.run(tokens, list(state), cond, speaker,
                                   skip_dtype=self.precision.skip_accumulate)
        return (logits[:, 0].to(self.precision.output), *nxt)


class UpsampleGraph(nn.Module):
    def __init__(self, model: WaveNet):
        super().__init__()
        self.net = Precision("fp32", torch.float32).apply(model)
        self.spec = upsample_spec(model.cfg)

    def forward(self, cond):  # (B, C, frames) → (B, C, frames·hop)
        return self.net.upsample(cond)


def build_graph(model: WaveNet, kind: str, precision: Precision, layout: str = "ring") -> nn.Module:
    if kind == "scoring":
        return ScoringGraph(model, precision).eval()
    if kind == "step":
        return StepGraph(model, precision, layout).eval()
    return UpsampleGraph(model).eval()


def example_inputs(spec: GraphSpec, cfg: WaveNetConfig, batch: int = 2, time: int = 8,
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Random inputs matching a spec (for tracing and tests). Symbolic dims: batch, time, frames."""
    frames = max(1, -(-time // cfg.hop_size))
    dims = {"batch": batch, "time": time, "frames": frames}
    out = []
    for t in spec.inputs:
        shape = [dims[d] if isinstance(d, str) else d for d in t.shape]
        if t.role in ("tokens", "token"):
            out.append(torch.randint(0, cfg.quantization_channels, shape, generator=generator))
        elif t.role in ("samples", "sample"):
            out.append(torch.rand(shape, generator=generator) * 2 - 1)
        elif t.role == "speaker":
            out.append(torch.randint(0, cfg.speakers, shape, generator=generator))
        elif t.role == "position":
            out.append(torch.tensor([time], dtype=torch.int64))
        else:
            dtype = getattr(torch, t.dtype)
            out.append(torch.randn(shape, generator=generator).to(dtype))
    return out
