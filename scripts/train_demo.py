#!/usr/bin/env python
"""Train the bundled demo WaveNet on speech synthesised with espeak-ng.

    .venv/bin/python scripts/train_demo.py --out wn_export/assets

Data: a fixed English text (below) read by espeak-ng in a few voice/speed variants, resampled to
16 kHz mono 16-bit with sox (no dither, so the data is bit-reproducible), peak-normalised to 0.9
and μ-law encoded (256 classes). One extra sentence, never part of the training text, is
synthesised on its own, trimmed to 0.1 s of silence either side and written to
`<out>/demo_speech.wav`; it is the held-out clip (loss logged during training, parity checks later).

Training: cross-entropy of logits[:, :-1] against tokens[:, 1:] on random crops of the training
audio, Adam with linear warm-up and cosine decay, gradient clipping, fixed seeds (--seed), 1 torch
thread by default (--threads).
By default every position of a crop counts, including the first receptive-field−1 positions that
see zero-padded past: that is how the model is used (forward / step start from a zero state), and
how the held-out clip is scored (the whole clip from a zero state). `--full-context` instead counts
only positions whose whole receptive field lies inside the crop.

Outputs: `<out>/demo.safetensors`, `<out>/demo_speech.wav`, `docs/demo_training.json`
(list of {step, train_loss, heldout_loss, seconds}, losses in nats/sample) and `docs/demo_loss.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from reference_model import WaveNet, WaveNetConfig, mulaw_encode, save_checkpoint  # noqa: E402

SAMPLE_RATE = 16000
PEAK = 0.9

TRAIN_TEXT = (
    "The morning was cool and bright, and the market by the river had just opened. "
    "Farmers carried baskets of apples, pears and green beans to their tables, while a baker "
    "stacked warm loaves of bread beside a jar of honey. A small girl asked her father why the "
    "boats moved so slowly, and he told her that the river was in no hurry at all. "
    "Later that day, the clouds gathered over the hills and a light rain began to fall. "
    "People opened their umbrellas, shop keepers pulled their awnings down, and the smell of wet "
    "stone filled the narrow streets. By evening the sky had cleared again. The lamps along the "
    "bridge were lit one by one, and the water reflected every single light like a long string "
    "of pearls. Somewhere a radio played an old song, and two friends sat on a bench, talking "
    "quietly about their plans for the summer, the books they wanted to read, and the places "
    "they hoped to visit before the year was over."
)
# (voice, words per minute) variants of the training text
TRAIN_VOICES = (("en-us", 150), ("en-us", 170), ("en", 150), ("en", 170))

# The held-out demo clip: NOT part of TRAIN_TEXT (checked below).
DEMO_TEXT = "Please call Stella and bring these things."
DEMO_VOICE = ("en-us", 160)

CONFIG = dict(quantization_channels=256, residual_channels=32, gate_channels=64, skip_channels=64,
              kernel_size=2, layers=20, stacks=2, bias=True, sample_rate=SAMPLE_RATE)


# ---- audio ------------------------------------------------------------------------------------
def need_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        sys.exit(f"error: {' and '.join(missing)} not found on PATH; this script synthesises its "
                 f"training data with espeak-ng and resamples with sox "
                 f"(Debian/Ubuntu: apt-get install espeak-ng sox)")


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {r.returncode}): {r.stderr.strip()}")


def synthesise(text: str, voice: str, speed: int, workdir: Path, name: str) -> np.ndarray:
    """text → float32 audio at 16 kHz mono, peak-normalised to PEAK."""
    raw, wav16 = workdir / f"{name}.raw.wav", workdir / f"{name}.wav"
    run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text])
    run(["sox", str(raw), "-D", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav16)])
    audio = read_wav(wav16)
    peak = float(np.abs(audio).max())
    if peak <= 0:
        sys.exit(f"error: espeak-ng produced silence for voice {voice}")
    return (audio * (PEAK / peak)).astype(np.float32)


def trim_silence(audio: np.ndarray, pad_s: float = 0.1, threshold: float = 1e-3) -> np.ndarray:
    """Cut leading/trailing silence down to `pad_s` seconds (espeak-ng appends ~0.35 s)."""
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    pad = int(pad_s * SAMPLE_RATE)
    return audio[max(0, loud[0] - pad):loud[-1] + 1 + pad]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
            sys.exit(f"error: {path} is not 16 kHz mono 16-bit PCM "
                     f"({w.getframerate()} Hz, {w.getnchannels()} ch, {8 * w.getsampwidth()} bit)")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def unigram_entropy(tokens: np.ndarray, classes: int) -> float:
    p = np.bincount(tokens, minlength=classes).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


# ---- training -----------------------------------------------------------------------------------
def sequence_loss(model: WaveNet, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits[:, :-1] vs tokens[:, 1:], over targets from `start` on."""
    logits = model(tokens)[:, :-1]
    target = tokens[:, 1:]
    if start:
        logits, target = logits[:, start:], target[:, start:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@torch.no_grad()
def heldout_loss(model: WaveNet, tokens: torch.Tensor) -> float:
    model.eval()
    loss = float(sequence_loss(model, tokens.unsqueeze(0)))
    model.train()
    return loss


def lr_at(step: int, steps: int, lr: float, final_lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return final_lr + 0.5 * (lr - final_lr) * (1 + math.cos(math.pi * t))


def plot(records: list[dict], entropy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(steps, [r["train_loss"] for r in records], label="train (mean over interval)")
    ax.plot(steps, [r["heldout_loss"] for r in records], marker="o", ms=3,
            label="held-out (demo_speech.wav)")
    ax.axhline(entropy, color="gray", ls="--", lw=1, label=f"unigram entropy {entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / sample)")
    ax.set_title("Demo WaveNet on espeak-ng speech (16 kHz, μ-law 256)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "wn_export" / "assets",
                    help="folder for demo.safetensors and demo_speech.wav")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs",
                    help="folder for demo_training.json and demo_loss.png")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=4096, help="samples per training crop")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--final-lr", type=float, default=1e-4, help="cosine decay target")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    ap.add_argument("--eval-every", type=int, default=100, help="held-out loss every N steps")
    ap.add_argument("--log-every", type=int, default=25, help="progress line every N steps")
    ap.add_argument("--full-context", action="store_true",
                    help="count only positions whose receptive field lies inside the crop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is robust on a shared 2-core machine (2 OpenMP threads "
                         "stall when another process competes for a core); results are reproducible "
                         "for a given thread count")
    args = ap.parse_args(argv)

    need_tools()
    if DEMO_TEXT.lower().rstrip(".") in TRAIN_TEXT.lower():
        sys.exit("error: the held-out sentence appears in the training text")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    cfg = WaveNetConfig(**CONFIG)
    Q = cfg.quantization_channels

    # -- data
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="wn-demo-") as tmp:
        tmp = Path(tmp)
        parts = [synthesise(TRAIN_TEXT, v, s, tmp, f"train_{i}") for i, (v, s) in enumerate(TRAIN_VOICES)]
        demo = trim_silence(synthesise(DEMO_TEXT, *DEMO_VOICE, tmp, "demo"))
    demo_path = args.out / "demo_speech.wav"
    write_wav(demo_path, demo)
    demo = read_wav(demo_path)  # score exactly what is stored (16-bit rounding included)
    train_tokens = np.concatenate([mulaw_encode(p, Q) for p in parts])
    demo_tokens = torch.from_numpy(mulaw_encode(demo, Q))
    entropy = unigram_entropy(train_tokens, Q)
    print(f"data: {len(parts)} training readings ({', '.join(f'{v}@{s}' for v, s in TRAIN_VOICES)}), "
          f"{len(train_tokens) / SAMPLE_RATE:.1f} s; held-out {demo_path} {len(demo) / SAMPLE_RATE:.2f} s "
          f"({DEMO_VOICE[0]}@{DEMO_VOICE[1]}); unigram entropy {entropy:.3f} nats "
          f"[{time.time() - t0:.1f} s]", flush=True)

    if args.crop + 1 > len(train_tokens):
        sys.exit(f"error: --crop {args.crop} is longer than the training audio")
    start = cfg.receptive_field - 1 if args.full_context else 0
    if start >= args.crop - 1:
        sys.exit(f"error: --full-context needs --crop > receptive field ({cfg.receptive_field})")

    # -- model
    model = WaveNet(cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(cfg.summary())
    print(f"parameters {model.parameter_count():,}; steps {args.steps}, batch {args.batch} × crop "
          f"{args.crop}, lr {args.lr:g} → {args.final_lr:g} (cosine), threads {args.threads}, "
          f"seed {args.seed}, loss from position {start}", flush=True)

    data = torch.from_numpy(train_tokens)
    records: list[dict] = []
    h0 = heldout_loss(model, demo_tokens)
    records.append({"step": 0, "train_loss": None, "heldout_loss": round(h0, 5), "seconds": 0.0})
    print(f"step     0  held-out {h0:.4f}", flush=True)
    t_start = time.time()
    interval: list[float] = []
    recent: list[float] = []
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1, args.steps, args.lr, args.final_lr, args.warmup)
        offsets = rng.integers(0, len(train_tokens) - args.crop, size=args.batch)
        batch = torch.stack([data[o:o + args.crop] for o in offsets])
        loss = sequence_loss(model, batch, start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            sys.exit(f"error: loss became {value} at step {step}")
        interval.append(value)
        recent.append(value)
        elapsed = time.time() - t_start
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:5d}  loss {np.mean(recent):.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{elapsed:7.1f} s ({elapsed / step:.2f} s/step)", flush=True)
            recent = []
        if step % args.eval_every == 0 or step == args.steps:
            h = heldout_loss(model, demo_tokens)
            records.append({"step": step, "train_loss": round(float(np.mean(interval)), 5),
                            "heldout_loss": round(h, 5), "seconds": round(time.time() - t_start, 1)})
            interval = []
            print(f"step {step:5d}  held-out {h:.4f}", flush=True)
            args.docs.mkdir(parents=True, exist_ok=True)
            (args.docs / "demo_training.json").write_text(json.dumps(records, indent=1) + "\n")

    # -- outputs
    ckpt = args.out / "demo.safetensors"
    save_checkpoint(model, ckpt)
    ckpt.chmod(0o644)  # the atomic writer's temp file is 0600; the asset ships with the package
    plot(records, entropy, args.docs / "demo_loss.png")
    train_final, held_final = records[-1]["train_loss"], records[-1]["heldout_loss"]
    ln2 = math.log(2)
    print(f"done in {time.time() - t0:.0f} s: {ckpt} ({ckpt.stat().st_size:,} bytes), "
          f"{args.docs / 'demo_training.json'}, {args.docs / 'demo_loss.png'}")
    print(f"final train loss    {train_final:.4f} nats/sample = {train_final / ln2:.4f} bits/sample "
          f"(mean over the last {args.eval_every} steps)")
    print(f"final held-out loss {held_final:.4f} nats/sample = {held_final / ln2:.4f} bits/sample")
    print(f"unigram entropy     {entropy:.4f} nats/sample = {entropy / ln2:.4f} bits/sample")


if __name__ == "__main__":
    main()
