"""The eager-incremental baseline of `wn-export bench`: r9y9 wavenet_vocoder's generation loop.

A faithful re-implementation of `wavenet_vocoder.WaveNet.incremental_forward` (PyPI 0.1.1, the code
people start from), over the weights of our `WaveNet`. Faithful in what it computes (tested against our
reference step and, in tests/test_r9y9.py, against the package itself) and in what it costs per sample:
the same `torch.nn` modules and calls in the same order, namely
- `Conv1d.incremental_forward` runs the forward pre-hooks, linearises the weight once, shifts an input
  buffer of (K−1)·d + 1 samples by slicing + `clone`, slices every d-th row and calls `F.linear`;
- `ResidualConv1dGLU._forward(is_incremental=True)` calls `F.dropout` (eval: identity), splits, adds the
  conditioning projections, computes tanh·σ, runs the skip and residual 1×1s through `_conv1x1_forward`,
  and computes (x + residual)·√0.5;
- the loop sums the skips (legacy ·√0.5) and runs `last_conv_layers`, trying `incremental_forward` on
  each module and falling back to `f(x)` on AttributeError (the ReLUs); then softmax and sampling:
  `np.random.choice(p=…)` + a one-hot write at batch 1, as r9y9 does. Its sampler cannot draw a batch,
  so batch > 1 uses `OneHotCategorical`.
- `make_generation_fast_()` has removed weight norm, as r9y9's `synthesis.py` does before generating.

Where our configuration differs from r9y9's fixed choices, the baseline follows ours: residual scale
(`scale_residual`), skip scale (`scale_skip`, `legacy_skip_scale`), no residual 1×1 after the last layer
(`last_residual=False`), and a token embedding as the first 1×1 (no bias).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wn_export.errors import InputError


class Conv1d(nn.Conv1d):
    """wavenet_vocoder conv.py `Conv1d`: a Conv1d with `incremental_forward` (input (B, T, C))."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clear_buffer()
        self._linearized_weight = None

    def incremental_forward(self, input):
        if self.training:
            raise RuntimeError("incremental_forward only supports eval mode")
        for hook in self._forward_pre_hooks.values():  # e.g. weight norm (removed for generation)
            hook(self, input)
        weight = self._get_linearized_weight()
        kw = self.kernel_size[0]
        dilation = self.dilation[0]
        bsz = input.size(0)
        if kw > 1:
            input = input.data
            if self.input_buffer is None:
                self.input_buffer = input.new(bsz, kw + (kw - 1) * (dilation - 1), input.size(2))
                self.input_buffer.zero_()
            else:  # shift buffer
                self.input_buffer[:, :-1, :] = self.input_buffer[:, 1:, :].clone()
            self.input_buffer[:, -1, :] = input[:, -1, :]  # append next input
            input = self.input_buffer
            if dilation > 1:
                input = input[:, 0::dilation, :].contiguous()
        output = F.linear(input.view(bsz, -1), weight, self.bias)
        return output.view(bsz, 1, -1)

    def clear_buffer(self):
        self.input_buffer = None

    def _get_linearized_weight(self):
        if self._linearized_weight is None:
            kw = self.kernel_size[0]
            weight = self.weight.transpose(1, 2).contiguous()  # (out, kw, in)
            assert weight.size() == (self.out_channels, kw, self.in_channels)
            self._linearized_weight = weight.view(self.out_channels, -1)
        return self._linearized_weight


def _conv1x1(weight, bias=None) -> Conv1d:
    """A 1×1 `Conv1d` holding (out, in[, 1]) weights."""
    w = weight.detach().float()
    w = w.unsqueeze(-1) if w.dim() == 2 else w
    conv = Conv1d(w.shape[1], w.shape[0], 1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias is not None:
            conv.bias.copy_(bias.detach().float())
    return conv


def _conv1x1_forward(conv, x, is_incremental):
    return conv.incremental_forward(x) if is_incremental else conv(x)


class ResidualConv1dGLU(nn.Module):
    """wavenet_vocoder modules.py `ResidualConv1dGLU` (incremental path) over one of our layers."""

    def __init__(self, layer, dilation: int, dropout: float = 1 - 0.95):
        super().__init__()
        w, b, cw, sw = layer.weights() if hasattr(layer, "weights") else (
            layer.conv.weight, layer.conv.bias, None if layer.cond is None else layer.cond.weight,
            None if layer.speaker is None else layer.speaker.weight)
        w = w.detach().float()
        self.dropout = dropout
        self.conv = Conv1d(w.shape[1], w.shape[0], w.shape[2], dilation=dilation, bias=b is not None)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            if b is not None:
                self.conv.bias.copy_(b.detach().float())
        self.conv1x1c = None if cw is None else _conv1x1(cw)
        self.conv1x1g = None if sw is None else _conv1x1(sw)
        out = getattr(layer, "out", None)
        self.conv1x1_out = None if out is None else _conv1x1(out.weight, out.bias)
        self.conv1x1_skip = _conv1x1(layer.skip.weight, layer.skip.bias)
        self.residual_scale = layer.residual_scale

    def incremental_forward(self, x, c=None, g=None):
        return self._forward(x, c, g, True)

    def _forward(self, x, c, g, is_incremental):
        residual = x
        x = F.dropout(x, p=self.dropout, training=self.training)
        splitdim = -1
        x = self.conv.incremental_forward(x)
        a, b = x.split(x.size(splitdim) // 2, dim=splitdim)
        if c is not None:  # local conditioning
            c = _conv1x1_forward(self.conv1x1c, c, is_incremental)
            ca, cb = c.split(c.size(splitdim) // 2, dim=splitdim)
            a, b = a + ca, b + cb
        if g is not None:  # global conditioning
            g = _conv1x1_forward(self.conv1x1g, g, is_incremental)
            ga, gb = g.split(g.size(splitdim) // 2, dim=splitdim)
            a, b = a + ga, b + gb
        x = torch.tanh(a) * torch.sigmoid(b)
        s = _conv1x1_forward(self.conv1x1_skip, x, is_incremental)  # skip connection
        if self.conv1x1_out is None:  # our last_residual=False: the layer returns its input
            return residual, s
        x = _conv1x1_forward(self.conv1x1_out, x, is_incremental)  # residual connection
        x = x + residual
        if self.residual_scale != 1.0:
            x = x * self.residual_scale
        return x, s

    def clear_buffer(self):
        for c in [self.conv, self.conv1x1_out, self.conv1x1_skip, self.conv1x1c, self.conv1x1g]:
            if c is not None:
                c.clear_buffer()


class R9y9Incremental(nn.Module):
    """The baseline: `step` is one iteration of r9y9's `incremental_forward` loop, `sample` its sampling."""

    def __init__(self, model):
        super().__init__()
        cfg = self.cfg = model.cfg
        if getattr(cfg, "scalar_input", False) or getattr(cfg, "mol", False) or model.embed is None:
            raise InputError("the eager-incremental baseline covers μ-law categorical models with a token "
                             "embedding (no scalar input, mixture output or wide front end)")
        self.first_conv = _conv1x1(model.embed.weight.t())  # one-hot (Q) → R, as r9y9's first 1×1
        self.conv_layers = nn.ModuleList(ResidualConv1dGLU(layer, d) for layer, d in
                                         zip(model.layers, cfg.layer_dilations))
        self.last_conv_layers = nn.ModuleList([
            nn.ReLU(inplace=True), _conv1x1(model.head[1].weight, model.head[1].bias),
            nn.ReLU(inplace=True), _conv1x1(model.head[3].weight, model.head[3].bias)])
        self.speaker_embed = None if model.speaker_embed is None else model.speaker_embed.weight.detach().float()
        self.legacy = getattr(cfg, "legacy_skip_scale", False)
        self.eval()

    @property
    def layers(self):
        return list(self.conv_layers)

    def clear_buffer(self):
        self.first_conv.clear_buffer()
        for f in self.conv_layers:
            f.clear_buffer()
        for f in self.last_conv_layers:
            try:
                f.clear_buffer()
            except AttributeError:
                pass

    def initial_input(self, batch: int):
        x = torch.zeros(batch, 1, self.cfg.quantization_channels)
        x[:, :, self.cfg.quantization_channels // 2] = 1  # μ-law silence, as our hosts start
        return x

    def step(self, current_input, ct=None, gt=None):
        """current_input (B, 1, Q) or (B, Q) one-hot, ct (B, 1, C), gt (B, 1, E) → logits (B, Q)."""
        x = self.first_conv.incremental_forward(current_input)
        skips = None
        for f in self.conv_layers:
            x, h = f.incremental_forward(x, ct, gt)
            if self.legacy:
                skips = h if skips is None else (skips + h) * math.sqrt(0.5)
            else:
                skips = h if skips is None else (skips + h)
        if self.cfg.scale_skip:
            skips = skips * math.sqrt(1.0 / len(self.conv_layers))
        x = skips
        for f in self.last_conv_layers:
            try:
                x = f.incremental_forward(x)
            except AttributeError:
                x = f(x)
        return x.view(x.size(0), -1)

    def sample(self, logits):
        """softmax, then one draw per stream → the next one-hot input (B, 1, Q)."""
        B = logits.size(0)
        x = F.softmax(logits.view(B, -1), dim=1)
        if B == 1:  # r9y9's sampler
            sample = np.random.choice(np.arange(x.size(1)), p=x.view(-1).data.cpu().numpy())
            x.zero_()
            x[:, sample] = 1.0
            return x.unsqueeze(1)
        return torch.distributions.OneHotCategorical(x).sample().unsqueeze(1)

    def speaker_input(self, speaker):
        return None if self.speaker_embed is None else self.speaker_embed[torch.as_tensor(speaker)].unsqueeze(1)
