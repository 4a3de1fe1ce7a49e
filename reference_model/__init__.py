"""Reference PyTorch WaveNet: config, model (forward ≡ step), μ-law, sampling, checkpoints.

The torch-free parts (config, μ-law, sampling, errors, atomic writes) import without torch; the model and
checkpoint functions load torch on first use, so manifest readers and ONNX Runtime hosts never need it.
"""

from importlib import import_module

from .config import WaveNetConfig
from .errors import CheckpointError, ConfigError, InputError, WNExportError
from .mulaw import mulaw_decode, mulaw_encode
from .sampling import draw, greedy, inverse_cdf, mol_draw, mol_uniforms, uniforms

_LAZY = {"WaveNet": ".model", "ResidualLayer": ".model", "load_checkpoint": ".checkpoint",
         "save_checkpoint": ".checkpoint"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "WaveNetConfig", "WaveNet", "ResidualLayer", "load_checkpoint", "save_checkpoint",
    "mulaw_encode", "mulaw_decode", "uniforms", "inverse_cdf", "greedy", "draw", "mol_uniforms", "mol_draw",
    "WNExportError", "ConfigError", "CheckpointError", "InputError",
]
