"""Host API: open an export directory by its manifest and generate audio with any backend.

    from wn_export.generation import open_generator

    with open_generator("export/", backend="onnxruntime") as gen:       # or "torch", "tensorrt"
        for chunk in gen.stream(16000, batch=2, seed=7, temperature=0.9):  # (2, ≤ chunk) tokens
            play(gen.decode(chunk))                                        # float32 audio
        tokens = gen.generate(16000, seed=7)                               # the same, in one piece

- Backends: "onnxruntime" (the exported step graph, I/O binding, preallocated buffers), "torch" (the
  float64 PyTorch reference `WaveNet.step`, from the checkpoint the manifest records), "tensorrt"
  (engines built by `wn-export trt`; needs a GPU).
- Sampling: "sample" (inverse CDF at `temperature`, uniforms from SplitMix64 at `seed`, see
  `reference_model.sampling`) or "greedy". For one seed every backend sees the same uniforms, so FP32
  backends generate the same tokens; chunked output equals one-shot output.
- Conditioning: `features` (batch or 1, C, frames) frame-rate local features, upsampled once by the
  exported upsample graph (or the reference); `speaker` one id or one per stream.
- The hot loop: the runner's step plus `Sampler`, which reproduces `reference_model.sampling.draw` bit
  for bit with preallocated float64 buffers; uniforms are generated per chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from reference_model.limits import check, limit
from reference_model.mulaw import mulaw_decode
from wn_export.backends import get_backend, open_step
from wn_export.contract.manifest import Manifest, read_manifest
from wn_export.contract.specs import PRECISION_NAMES, graph_name
from wn_export.errors import InputError
from wn_export.generation.loop import StepLoop
from wn_export.generation.sampler import Sampler


@dataclass(frozen=True)
class Request:
    """A validated generation request (what `Generator.stream` runs)."""

    n: int
    batch: int
    seed: int
    method: str
    temperature: float
    cond: np.ndarray | None  # per-sample (batch, C, ≥ n) float32
    speaker: np.ndarray | None  # (batch,) int64
    chunk: int


class Generator:
    """Generation from an export directory with one backend; a context manager (opens the backend)."""

    def __init__(self, directory, backend: str = "onnxruntime", *, precision: str = "fp32",
                 threads: int | None = None, checkpoint: Path | None = None, fused: bool | None = None):
        """`threads`, `fused`: the ONNX Runtime step runner's options; `checkpoint`: the torch reference's and the
        triton kernel's weights (default: the checkpoint the manifest records)."""
        spec = get_backend(backend)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024):
            raise InputError(f"threads must be an integer in [1, 1024] (got {threads!r:.40})")
        if precision not in PRECISION_NAMES:
            raise InputError(f"unknown precision {precision!r} (choose from {', '.join(PRECISION_NAMES)})")
        self.manifest: Manifest = read_manifest(directory)
        self.cfg = self.manifest.config
        self.backend, self.precision, self.checkpoint = backend, precision, checkpoint
        self.graph = graph_name("step", precision)
        self.options = {"threads": threads, "fused": fused,
                        "checkpoint": checkpoint if "checkpoint" in spec.options else None}
        if spec.reference and precision != "fp32":
            raise InputError(f"the {backend} backend is the float64 reference: it has no fp16 variant")
        if spec.engines:
            self.manifest.engine(self.graph)  # a clear error if the directory lacks it
        else:
            self.manifest.graph(self.graph)
        self.runner = None
        self._upsampler = None
        self._model = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self) -> None:
        if self.runner is not None:
            return
        runner = open_step(self.manifest, self.backend, self.graph, **self.options)
        runner.activate()
        self.runner = runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None
        if self._upsampler is not None:
            self._upsampler.deactivate()
            self._upsampler = None

    def _reference(self):
        if self._model is None:
            from wn_export.backends.torch_ref import reference_model_for

            self._model = reference_model_for(self.manifest, self.checkpoint)
        return self._model

    # ---- requests -------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int | None:
        """The largest batch the backend accepts (TensorRT: the engine's profile), None if unbounded."""
        if not get_backend(self.backend).engines:
            return None
        return self.manifest.engine(self.graph).max_batch(self.manifest.graph(self.graph).feed.name)

    def request(self, n: int, batch: int = 1, *, seed: int = 0, method: str = "sample",
                temperature: float = 1.0, features: np.ndarray | None = None,
                speaker=None, chunk: int = 4000) -> Request:
        """Validate everything a generation needs; every problem is one `InputError` message."""
        for name, value in (("samples", n), ("batch", batch), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive integer (got {value!r})")
        n, batch, chunk = int(n), int(batch), int(chunk)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise InputError(f"seed must be an integer in [0, 2^64) (got {seed!r})")
        Sampler(1, 2, method, temperature)  # validates method and temperature
        check("batch", batch, "batch (streams generated together)")
        check("memory_bytes", batch * (n * self.bytes_per_sample + self.cfg.state_bytes),
              f"the memory of {n:,} samples × {batch} stream(s)")
        limit = self.max_batch
        if limit is not None and batch > limit:
            raise InputError(f"batch {batch} is larger than the TensorRT engine's profile allows ({limit}); "
                             f"rebuild the engine with `wn-export trt --batch MIN,OPT,MAX` or use a smaller batch")
        cond = self._conditioning(features, batch, n)
        spk = self._speaker(speaker, batch)
        return Request(n, batch, int(seed), method, float(temperature), cond, spk, chunk)

    @property
    def bytes_per_sample(self) -> int:
        """Host bytes one generated sample of one stream takes: the token (int64), its audio (float32 and
        the WAV's float64 and int16 copies), its per-sample conditioning (float32)."""
        return 8 + 4 + 8 + 2 + 4 * self.cfg.local_channels

    def _conditioning(self, features, batch: int, n: int) -> np.ndarray | None:
        cfg = self.cfg
        if not cfg.local:
            if features is not None:
                raise InputError("this model has no local conditioning, but conditioning features were given")
            return None
        C, hop = cfg.local_channels, cfg.hop_size
        if features is None:
            raise InputError(f"this model needs local conditioning: features of shape ({C}, frames) or "
                             f"(batch, {C}, frames), at least {-(-n // hop)} frames for {n} samples (hop {hop})")
        f = np.asarray(features, dtype=np.float32)
        if f.ndim == 2:
            f = f[None]
        if f.ndim != 3 or f.shape[1] != C or f.shape[0] not in (1, batch) or f.shape[2] < 1:
            raise InputError(f"conditioning features must be ({C}, frames) or ({batch}, {C}, frames), "
                             f"got {tuple(np.shape(features))}")
        if f.shape[2] * hop < n:
            raise InputError(f"conditioning covers {f.shape[2]} frames × hop {hop} = {f.shape[2] * hop} samples, "
                             f"fewer than the {n} samples requested: pass ≥ {-(-n // hop)} frames or fewer samples")
        if not np.isfinite(f).all():
            raise InputError("conditioning features contain NaN or infinity")
        frames = -(-n // hop)
        f = np.broadcast_to(f[:, :, :frames], (batch, C, frames)).copy()
        return np.ascontiguousarray(self._upsample(f)[:, :, :n], dtype=np.float32)

    def _upsample(self, frames: np.ndarray) -> np.ndarray:
        if get_backend(self.backend).reference or "upsample" not in self.manifest.graphs:
            import torch

            with torch.no_grad():
                model = self._reference()
                return model.upsample(torch.as_tensor(frames, dtype=model.head[-1].weight.dtype)).numpy()
        if self._upsampler is None:
            from wn_export.backends.onnxruntime.runner import OrtUpsampleRunner

            self._upsampler = OrtUpsampleRunner(self.manifest)
            self._upsampler.activate()
        return self._upsampler.upsample(frames)

    def _speaker(self, speaker, batch: int) -> np.ndarray | None:
        cfg = self.cfg
        if not cfg.global_:
            if speaker is not None:
                raise InputError("this model has no global conditioning, but a speaker was given")
            return None
        if speaker is None:
            raise InputError(f"this model needs a speaker id in [0, {cfg.speakers - 1}] (one, or one per stream)")
        ids = np.atleast_1d(np.asarray(speaker))
        if ids.ndim != 1 or ids.size not in (1, batch) or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"speaker must be one integer id or {batch} of them (got {speaker!r})")
        if ids.min() < 0 or ids.max() >= cfg.speakers:
            raise InputError(f"speaker ids must lie in [0, {cfg.speakers - 1}] (got {ids.tolist()})")
        return np.broadcast_to(ids, (batch,)).astype(np.int64)  # a writable copy

    # ---- generation -----------------------------------------------------------------------------
    def stream(self, n: int, batch: int = 1, *, progress: Callable[[int, int], None] | None = None,
               **options) -> Iterator[np.ndarray]:
        """Yield chunks (batch, ≤ chunk) until n samples per stream: int64 μ-law tokens, or float32
        samples for mixture-of-logistics models. `progress(done, n)` after each chunk. Options:
        seed, method, temperature, features, speaker, chunk (see `request`)."""
        req = options.pop("request", None) or self.request(n, batch, **options)
        self.open()
        loop = StepLoop(self.runner, req.batch, self.cfg, seed=req.seed, method=req.method,
                        temperature=req.temperature, cond=req.cond, speaker=req.speaker, window=req.chunk)
        yield from loop.chunks(req.n, req.chunk, progress and (lambda done: progress(done, req.n)))

    def generate(self, n: int, batch: int = 1, **options) -> np.ndarray:
        """All n samples per stream in one array (batch, n)."""
        return np.concatenate(list(self.stream(n, batch, **options)), axis=1)

    def decode(self, chunk: np.ndarray) -> np.ndarray:
        """Generated chunk → float32 audio in [−1, 1] (μ-law decoded tokens; mixture samples as they are)."""
        if getattr(self.cfg, "mol", False):
            return np.asarray(chunk, dtype=np.float32)
        return mulaw_decode(chunk, self.cfg.quantization_channels)

    @property
    def setup(self) -> str:
        """What runs the steps, in words: the backend, and for ONNX Runtime whether the fused path is on
        and, if not, why (a user must not lose it silently)."""
        runner = self.runner
        setup = getattr(runner, "setup", None)
        if setup is None:
            return self.backend
        why = getattr(runner, "unfused", "")
        return f"{self.backend}: {setup}" + (f" (the fused path is off: {why})" if why else "")

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate


def open_generator(directory, backend: str = "onnxruntime", **kwargs) -> Generator:
    """A `Generator` for DIR (use it as a context manager)."""
    return Generator(directory, backend, **kwargs)


def generate_to_wav(directory, output: Path, n: int, *, backend: str = "onnxruntime", batch: int = 1,
                    precision: str = "fp32", threads: int | None = None, plot: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    notice: Callable[[str], None] | None = None, **options) -> list[Path]:
    """`wn-export generate`: generate and write one WAV per stream (OUT for one stream, OUT-stem.i.wav
    for more), plus OUT.png (waveform and spectrogram) with `plot`. Returns the written paths."""
    from reference_model.files import check_output
    from wn_export.contract.manifest import export_files
    from wn_export.generation.audio import write_wav

    output = Path(output)
    if output.suffix.lower() != ".wav":
        raise InputError(f"output must be a .wav file (got {output})")
    paths = wav_paths(output, batch) if isinstance(batch, int) and 1 <= batch <= limit("batch") else [output]
    png = output.with_suffix(".png")
    inputs = export_files(directory)
    for path in [*paths, png] if plot else paths:  # every check before any work: the outputs, the options
        check_output(path, inputs)
    gen = Generator(directory, backend, precision=precision, threads=threads)
    req = gen.request(n, batch, **options)
    with gen:
        if notice:
            notice(gen.setup)
        tokens = np.concatenate(list(gen.stream(n, batch, request=req, progress=progress)), axis=1)
        audio = gen.decode(tokens)
        rate = gen.sample_rate
    for path, wave in zip(paths, audio):
        write_wav(path, wave, rate)
    written = list(paths)
    if plot:
        from wn_export.generation.plot import plot_audio

        plot_audio(png, audio, rate, title=f"{Path(directory).name}: {n} samples, {backend}, seed "
                                           f"{req.seed}, {req.method}" + (f" T={req.temperature:g}"
                                                                          if req.method == "sample" else ""))
        written.append(png)
    return written




def wav_paths(output: Path, batch: int) -> list[Path]:
    """OUT for one stream, OUT-stem.i.wav for stream i of several."""
    return [output] if batch == 1 else [output.with_name(f"{output.stem}.{i}.wav") for i in range(batch)]


def load_features(path) -> np.ndarray | None:
    """A .npy file of frame-rate conditioning features → float32 array (None → None).

    The header is read first and its size checked against the file and `WN_EXPORT_MAX_MEMORY_BYTES`
    before any data is read; the data are then read in one bounded read (no pickles, no .npz)."""
    if path is None:
        return None
    from numpy.lib import format as npf

    from reference_model.files import regular_file

    path = regular_file(path, "conditioning features")
    try:
        with open(path, "rb") as f:
            if f.read(6) != npf.MAGIC_PREFIX:
                raise InputError(f"conditioning features {path} are not a .npy file (save them with numpy.save; "
                                 ".npz archives are not read)")
            f.seek(0)
            version = npf.read_magic(f)
            shape, fortran, dtype = (npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0)(f)
            data = _read_npy_data(f, path, shape, fortran, dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read conditioning features {path}: {str(e)[:200]}") from None
    with np.errstate(over="ignore", invalid="ignore"):
        out = data.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{path}: conditioning features contain NaN or infinity (in the file, or once cast "
                         "to float32)")
    return out


def _read_npy_data(f, path, shape: tuple, fortran: bool, dtype: np.dtype) -> np.ndarray:
    """The array data after a .npy header: numeric only, size checked before it is read."""
    if dtype.hasobject or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: conditioning features must be integers or floats (got {dtype}; object "
                         "arrays are not read)")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    check("memory_bytes", count * (dtype.itemsize + 4), f"conditioning features {path} ({nbytes:,} bytes)")
    raw = f.read(nbytes)
    data = np.frombuffer(raw[:len(raw) - len(raw) % dtype.itemsize], dtype=dtype)
    if data.size != count:
        raise InputError(f"{path} is truncated: its header promises {nbytes:,} bytes of data, the file holds "
                         f"{data.size * dtype.itemsize:,}")
    return data.reshape(shape, order="F" if fortran else "C")


def parse_speakers(text: str | None):
    """"3" → 3, "1,4" → [1, 4], None → None (an `InputError` for anything else)."""
    if text is None:
        return None
    try:
        ids = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise InputError(f"speaker must be an integer id or comma-separated ids (got {text!r})") from None
    return ids[0] if len(ids) == 1 else ids


__all__ = ["Generator", "Request", "open_generator", "generate_to_wav", "load_features", "parse_speakers",
           "wav_paths"]
