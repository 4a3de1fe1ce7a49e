"""The PyTorch reference backend (float64 by default): the numbers every artifact is judged against."""

from __future__ import annotations

import numpy as np
import torch

from reference_model import WaveNet

from .base import ScoringRunner, StepRunner


def _tensor(a, dtype=None):
    return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


class TorchScoringRunner(ScoringRunner):
    name = "torch"

    def __init__(self, model: WaveNet, dtype: torch.dtype = torch.float64):
        self.model = model.to(dtype).eval()
        self.dtype = dtype

    @torch.no_grad()
    def infer(self, tokens, cond=None, speaker=None):
        """tokens (B, T) (scalar-input models: float samples) → {"logits" | "mol_params", "log_prob"}."""
        tok = _tensor(tokens, self.dtype if self.model.cfg.scalar_input else torch.int64)
        pasts = self.model.initial_state(tok.shape[0])
        logits, _ = self.model.run(tok, pasts, _tensor(cond, self.dtype), _tensor(speaker, torch.int64))
        lp = self.model.log_prob(logits, tok)
        return {"mol_params" if self.model.cfg.mol else "logits": logits.numpy(), "log_prob": lp.numpy()}

    @torch.no_grad()
    def upsample(self, cond: np.ndarray) -> np.ndarray:
        """Frame-rate features (B, C, frames) → per-sample (B, C, frames·hop)."""
        return self.model.upsample(_tensor(cond, self.dtype)).numpy()


class TorchStepRunner(StepRunner):
    """Reference step loop. Runs single-threaded while active: one sample's ops are tiny, and
    intra-op threads only add synchronisation (≈ 75× slower per conv on 2 busy cores)."""

    name = "torch"

    def __init__(self, model: WaveNet, dtype: torch.dtype = torch.float64):
        self.model = model.to(dtype).eval()
        self.dtype = dtype
        self.state = None
        self.speaker = None
        self._threads = None

    def activate(self):
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def deactivate(self):
        if self._threads:
            torch.set_num_threads(self._threads)

    def reset(self, batch, speaker=None):
        self.state = self.model.initial_state(batch)
        self.speaker = _tensor(speaker, torch.int64)

    @torch.no_grad()
    def step(self, token, cond_t=None):
        kind = self.dtype if self.model.cfg.scalar_input else torch.int64  # scalar input: float samples
        logits, self.state = self.model.step(_tensor(token, kind), self.state,
                                             _tensor(cond_t, self.dtype), self.speaker)
        return logits.numpy()
