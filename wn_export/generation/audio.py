"""WAV reading/writing (16-bit PCM mono) with the standard library, and μ-law token conversion."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from reference_model.atomic import atomic_write_bytes
from reference_model.mulaw import mulaw_decode, mulaw_encode
from wn_export.errors import InputError


def read_wav(path) -> tuple[np.ndarray, int]:
    """→ (float32 audio in [−1, 1], mono, sample_rate)."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            raw = w.readframes(n)
    except (OSError, wave.Error, EOFError) as e:
        raise InputError(f"cannot read WAV {path}: {e}") from None
    if width != 2:
        raise InputError(f"{path}: only 16-bit PCM WAV is supported (sample width {width} bytes)")
    audio = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return audio.reshape(-1, channels).mean(axis=1), rate


def write_wav(path, audio: np.ndarray, sample_rate: int) -> None:
    """float audio (T,) in [−1, 1] → 16-bit PCM mono WAV, written atomically."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0) * 32767.0).round().astype("<i2")

    def write(tmp):
        with wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())

    atomic_write_bytes(Path(path), write)


def wav_tokens(path, channels: int, sample_rate: int | None = None) -> np.ndarray:
    """A WAV file → μ-law tokens (T,) int64; checks the sample rate when one is given."""
    audio, rate = read_wav(path)
    if sample_rate is not None and rate != sample_rate:
        raise InputError(f"{path} is {rate} Hz but the model expects {sample_rate} Hz")
    return mulaw_encode(audio, channels)


def write_tokens_wav(path, tokens: np.ndarray, channels: int, sample_rate: int) -> None:
    write_wav(path, mulaw_decode(tokens, channels), sample_rate)
