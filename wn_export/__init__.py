"""wn-export: export a WaveNet to ONNX / TensorRT, prove parity, and run it.

Heavy backends (onnxruntime, tensorrt, tensorrt_rtx) are imported lazily by the modules that use them.
"""

from importlib import resources
from pathlib import Path

__version__ = "0.1.0"


def demo_checkpoint() -> Path:
    """Path of the bundled demo model (trained on espeak-ng speech, 16 kHz, μ-law 256)."""
    return Path(str(resources.files("wn_export") / "assets" / "demo.safetensors"))


def demo_audio() -> Path:
    """Path of the bundled demo speech clip (16 kHz mono 16-bit WAV), held out from the demo model's training data."""
    return Path(str(resources.files("wn_export") / "assets" / "demo_speech.wav"))
