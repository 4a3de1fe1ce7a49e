"""Torch functions of the output kinds that the graphs and the reference compute in the same code:
the discretised mixture-of-logistics log-likelihood, and the μ-law class of a scalar sample.

Mixture parameters (…, 3M) are laid out as r9y9's wavenet_vocoder writes them: M logit weights,
M means, M log scales (clamped below at `log_scale_min`). Samples live in [−1, 1], cut into Q bins of
width 2/(Q−1); the likelihood of y is, per component with mean μ and scale s = e^{log_scale},

    y < −0.999:  log σ((y − μ + 1/(Q−1))/s)                       (the lower edge bin)
    y >  0.999:  log (1 − σ((y − μ − 1/(Q−1))/s))                 (the upper edge bin)
    otherwise:   log [σ((y − μ + 1/(Q−1))/s) − σ((y − μ − 1/(Q−1))/s)]  if that mass > 1e−5,
                 else log pdf((y − μ)/s) − log((Q−1)/2)          (the bin's midpoint density)

combined with log-softmax of the weights and log-sum-exp over components: r9y9's
`discretized_mix_logistic_loss` term for term. The difference of sigmoids is computed without
cancellation, σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^{−(a−b)}), so FP32 graphs agree with the float64
reference; softplus is written with Relu/Abs/Exp/Log (ops every backend supports).
"""

from __future__ import annotations

import math

import torch

MOL_EDGE = 0.999  # |y| beyond which the edge bins' one-sided CDFs are used
MOL_MIN_MASS = 1e-5  # below this bin mass, the midpoint density is used


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) + torch.log(1.0 + torch.exp(-torch.abs(x)))


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 − e^{−d}) for d > 0, accurate for small d (series of −expm1(−d)/d below 0.1)."""
    series = 1.0 - d / 2.0 + d * d / 6.0 - d * d * d / 24.0 + d * d * d * d / 120.0
    small = torch.log(d) + torch.log(series)
    large = torch.log(1.0 - torch.exp(-d))
    return torch.where(d < 0.1, small, large)


def split_mol(params: torch.Tensor, log_scale_min: float):
    """(…, 3M) → logit weights, means, clamped log scales (…, M) each."""
    m = params.shape[-1] // 3
    return params[..., :m], params[..., m:2 * m], torch.clamp(params[..., 2 * m:3 * m], min=log_scale_min)


def mol_log_prob(params: torch.Tensor, y: torch.Tensor, classes: int, log_scale_min: float) -> torch.Tensor:
    """params (…, 3M), samples y (…) in [−1, 1] → log-likelihood (…) in the params' dtype."""
    logit_probs, means, log_scales = split_mol(params, log_scale_min)
    y = y.unsqueeze(-1)
    centered = y - means
    inv_s = torch.exp(-log_scales)
    half_bin = 1.0 / (classes - 1)
    plus_in = inv_s * (centered + half_bin)
    min_in = inv_s * (centered - half_bin)
    log_cdf_plus = -_softplus(-plus_in)  # log σ(plus_in): the lower edge bin
    log_one_minus_cdf_min = -_softplus(min_in)  # log(1 − σ(min_in)): the upper edge bin
    log_mass = log_cdf_plus + log_one_minus_cdf_min + _log1mexp(inv_s * (2.0 * half_bin))
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * _softplus(mid_in)
    inner = torch.where(log_mass > math.log(MOL_MIN_MASS), log_mass, log_pdf_mid - math.log((classes - 1) / 2))
    log_probs = torch.where(y > MOL_EDGE, log_one_minus_cdf_min, inner)
    log_probs = torch.where(y < -MOL_EDGE, log_cdf_plus, log_probs)
    log_probs = log_probs + torch.log_softmax(logit_probs, dim=-1)
    top = log_probs.max(dim=-1, keepdim=True).values
    return (top + torch.log(torch.exp(log_probs - top).sum(dim=-1, keepdim=True))).squeeze(-1)


def mulaw_classes(samples: torch.Tensor, channels: int, companded: bool = False) -> torch.Tensor:
    """Scalar samples → int64 μ-law classes, as `mulaw_encode` (companded samples: only quantised)."""
    mu = channels - 1
    x = torch.clamp(samples, -1.0, 1.0)
    f = x if companded else torch.sign(x) * torch.log(1.0 + mu * torch.abs(x)) / math.log1p(mu)
    q = torch.floor((f + 1.0) / 2.0 * mu + 0.5)
    return torch.clamp(q, 0, mu).to(torch.int64)
