"""The PyTorch reference backend (float64 by default): the numbers every artifact is judged against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reference_model import WaveNet, load_checkpoint
from wn_export.backends.base import ScoringRunner, StepRunner
from wn_export.contract.manifest import Manifest, sha256
from wn_export.errors import ArtifactError


def _tensor(a, dtype=None):
    if a is None:
        return None
    a = np.asarray(a)
    return torch.as_tensor(np.ascontiguousarray(a) if a.flags.writeable else a.copy(), dtype=dtype)


class _Reference:
    """A runner over a reference `WaveNet` in `dtype`; from a manifest, the checkpoint it records."""

    name = "torch"

    @classmethod
    def from_manifest(cls, manifest: Manifest, graph: str, checkpoint: Path | None = None):
        return cls(reference_model_for(manifest, checkpoint))

    def __init__(self, model: WaveNet, dtype: torch.dtype = torch.float64):
        self.model = model.to(dtype).eval()
        self.dtype = dtype


class TorchScoringRunner(_Reference, ScoringRunner):

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


class TorchStepRunner(_Reference, StepRunner):
    """Reference step loop. Runs single-threaded while active: one sample's ops are tiny, and
    intra-op threads only add synchronisation (≈ 75× slower per conv on 2 busy cores)."""

    def __init__(self, model: WaveNet, dtype: torch.dtype = torch.float64):
        super().__init__(model, dtype)
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


def recorded_checkpoint(manifest: Manifest, checkpoint: Path | None = None) -> Path:
    """The checkpoint file the directory was exported from (recorded in the manifest, unchanged since), or
    `checkpoint` when given."""
    source = manifest.data.get("source")
    source = source if isinstance(source, dict) else {}
    path = Path(checkpoint or source.get("checkpoint") or "")
    if not path.is_file():
        raise ArtifactError(f"cannot find the checkpoint {path or '(none recorded)'} this directory was exported "
                            "from; pass it with --checkpoint")
    if checkpoint is None and source.get("sha256") and sha256(path) != source["sha256"]:
        raise ArtifactError(f"{path} changed since the export (sha256 differs); re-export or pass --checkpoint")
    return path


def reference_model_for(manifest: Manifest, checkpoint: Path | None = None) -> WaveNet:
    """The checkpoint the directory was exported from (recorded in the manifest), in float64."""
    path = recorded_checkpoint(manifest, checkpoint)
    model = load_checkpoint(path, torch.float64)
    if model.cfg != manifest.config:
        raise ArtifactError(f"checkpoint {path} has a different config from the manifest of {manifest.directory}")
    return model
