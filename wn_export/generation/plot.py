"""PNG of generated audio: waveform and spectrogram per stream (matplotlib, Agg; imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reference_model.atomic import atomic_write_bytes
from wn_export.errors import BackendError

MAX_STREAMS = 4  # rows in one figure


def plot_audio(path, audio: np.ndarray, sample_rate: int, title: str = "") -> Path:
    """audio (T,) or (streams, T) float in [−1, 1] → PNG at `path` (written atomically): for each of the
    first `MAX_STREAMS` streams, the waveform over time and a log-magnitude spectrogram (dB)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendError("--plot needs matplotlib: pip install 'wn-export[plot]'") from None
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))[:MAX_STREAMS]
    rows, T = audio.shape
    t = np.arange(T) / sample_rate
    nfft = 512 if T >= 512 else max(16, 1 << int(np.log2(max(T, 2))))
    fig, axes = plt.subplots(rows, 2, figsize=(12, 2.6 * rows + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.2]})
    for i, (wave, (ax_w, ax_s)) in enumerate(zip(audio, axes)):
        ax_w.plot(t, wave, linewidth=0.4, color="tab:blue")
        ax_w.set_xlim(0, max(t[-1], 1e-9))
        ax_w.set_ylim(-1.05, 1.05)
        ax_w.set_ylabel(f"stream {i}" if rows > 1 else "amplitude")
        ax_w.set_xlabel("time (s)")
        ax_w.set_title("waveform" if i == 0 else "")
        ax_w.grid(alpha=0.3)
        if T >= nfft:
            with np.errstate(divide="ignore"):  # digital silence: log10(0) = −inf, drawn at vmin
                _, _, _, im = ax_s.specgram(wave.astype(np.float64), NFFT=nfft, Fs=sample_rate,
                                            noverlap=nfft * 3 // 4, cmap="magma", scale="dB", vmin=-120)
            fig.colorbar(im, ax=ax_s, label="dB")
        ax_s.set_xlim(0, max(t[-1], 1e-9))
        ax_s.set_ylabel("frequency (Hz)")
        ax_s.set_xlabel("time (s)")
        ax_s.set_title("spectrogram" if i == 0 else "")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path
