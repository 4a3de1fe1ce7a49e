"""Reference PyTorch WaveNet: config, model (forward ≡ step), μ-law, sampling, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import WaveNetConfig
from .errors import CheckpointError, ConfigError, InputError, WNExportError
from .model import ResidualLayer, WaveNet
from .mulaw import mulaw_decode, mulaw_encode
from .sampling import draw, greedy, inverse_cdf, mol_draw, mol_uniforms, uniforms

__all__ = [
    "WaveNetConfig", "WaveNet", "ResidualLayer", "load_checkpoint", "save_checkpoint",
    "mulaw_encode", "mulaw_decode", "uniforms", "inverse_cdf", "greedy", "draw", "mol_uniforms", "mol_draw",
    "WNExportError", "ConfigError", "CheckpointError", "InputError",
]
