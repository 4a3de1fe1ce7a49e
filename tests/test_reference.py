"""The reference model: step ≡ forward in float64, causality, μ-law and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_model import InputError, WaveNet, inverse_cdf, mulaw_decode, mulaw_encode, uniforms
from tests.conftest import CONFIGS, assert_exact_receptive_field, random_model


def _inputs(cfg, batch, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.quantization_channels, (batch, T), generator=g)
    cond = (torch.randn(batch, cfg.local_channels, -(-T // cfg.hop_size), generator=g, dtype=torch.float64)
            if cfg.local else None)
    speaker = torch.randint(0, cfg.speakers, (batch,), generator=g) if cfg.global_ else None
    return tokens, cond, speaker


@torch.no_grad()
def test_step_equals_forward_float64(config):
    model = random_model(config).double()
    B, T = 3, 3 * config.receptive_field + 5
    tokens, cond, speaker = _inputs(config, B, T)
    full = model(tokens, cond, speaker)  # (B, T, Q)
    per_sample = model.upsample(cond, T) if config.local else None
    state = model.initial_state(B)
    for t in range(T):
        logits, state = model.step(tokens[:, t], state, None if cond is None else per_sample[:, :, t], speaker)
        torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-10)
    assert full.abs().max() > 0.1  # the comparison is not between two near-zero tensors


@torch.no_grad()
def test_state_holds_last_inputs_of_each_layer():
    cfg = CONFIGS["k3-odd"]
    model = random_model(cfg).double()
    state = model.initial_state(2)
    assert [s.shape[-1] for s in state] == [(cfg.kernel_size - 1) * d for d in cfg.layer_dilations]
    tokens, _, _ = _inputs(cfg, 2, 40)
    for t in range(40):
        _, state = model.step(tokens[:, t], state)
    emb = model.embed(tokens).transpose(1, 2)  # first layer's inputs (B, R, T)
    torch.testing.assert_close(state[0], emb[:, :, 40 - state[0].shape[-1]:])


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_causality(name):
    cfg = CONFIGS[name]
    model = random_model(cfg).double()
    T, t0 = 2 * cfg.receptive_field, cfg.receptive_field
    tokens, cond, speaker = _inputs(cfg, 2, T)
    changed = tokens.clone()
    changed[:, t0:] = (changed[:, t0:] + 5) % cfg.quantization_channels
    a, b = model(tokens, cond, speaker), model(changed, cond, speaker)
    torch.testing.assert_close(a[:, :t0], b[:, :t0], rtol=0, atol=0)
    assert (a[:, t0:] - b[:, t0:]).abs().max() > 1e-3  # the change does reach later outputs


def test_receptive_field_is_exact():
    cfg = CONFIGS["k3-odd"]
    assert_exact_receptive_field(random_model(cfg).double(), _inputs(cfg, 1, 2 * cfg.receptive_field)[0])


def test_mulaw_round_trip():
    x = np.linspace(-1, 1, 10001)
    q = mulaw_encode(x, 256)
    assert q.min() == 0 and q.max() == 255 and q.dtype == np.int64
    assert np.abs(mulaw_decode(q, 256) - x).max() < 0.032  # one μ-law step at full scale
    assert np.array_equal(mulaw_encode(mulaw_decode(np.arange(256)), 256), np.arange(256))


def test_inverse_cdf_sampling_matches_distribution():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    u = uniforms(7, 20000, 1)[:, 0]
    draws = np.array([inverse_cdf(logits, u[i:i + 1])[0] for i in range(len(u))])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - [0.1, 0.2, 0.3, 0.4]).max() < 0.015
    # exact boundaries: u·total below the first cumulative mass picks class 0
    assert inverse_cdf(logits, np.array([0.0]))[0] == 0
    assert inverse_cdf(logits, np.array([0.0999]))[0] == 0
    assert inverse_cdf(logits, np.array([0.1001]))[0] == 1
    assert inverse_cdf(logits, np.array([0.999999]))[0] == 3


def test_uniforms_are_splitmix64_and_seeded():
    M = 2**64
    z = (123 + 0x9E3779B97F4A7C15) % M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M
    z ^= z >> 31
    u = uniforms(123, 4, 3)
    assert u[0, 0] == (z >> 11) * 2.0**-53
    assert np.array_equal(u, uniforms(123, 4, 3)) and not np.array_equal(u, uniforms(124, 4, 3))
    assert ((u >= 0) & (u < 1)).all()


def test_input_errors_are_clear():
    cfg = CONFIGS["conditioned"]
    model = random_model(cfg).double()
    tokens, cond, speaker = _inputs(cfg, 2, 20)
    with pytest.raises(InputError, match="local conditioning"):
        model(tokens, None, speaker)
    with pytest.raises(InputError, match="speaker"):
        model(tokens, cond, None)
    with pytest.raises(InputError, match=r"\[0, 23\]"):
        model(tokens + 100, cond, speaker)
    with pytest.raises(InputError, match="fewer than"):
        model(tokens, cond[:, :, :2], speaker)
    plain = WaveNet(CONFIGS["k2"])
    with pytest.raises(InputError, match="no global conditioning"):
        plain(torch.zeros(1, 4, dtype=torch.int64), speaker=torch.zeros(1, dtype=torch.int64))
