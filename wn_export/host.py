"""Host API: open an export directory by its manifest and generate audio with any backend.

    from wn_export.host import open_generator

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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from reference_model.mulaw import mulaw_decode
from reference_model.sampling import METHODS, uniforms

from .errors import ArtifactError, BackendError, InputError
from .manifest import Manifest, read_manifest

BACKENDS = ("onnxruntime", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16")

_max, _accumulate = np.maximum.reduce, np.add.accumulate
class Sampler:
    """Next tokens from logits (batch, Q), exactly as `reference_model.sampling.draw` computes them
    (the same float64 operations in the same order), into preallocated buffers. The returned token
    array is reused by the next call."""

    def __init__(self, batch: int, classes: int, method: str = "sample", temperature: float = 1.0,
                 native: bool | None = None):
        """`native`: draw with the compiled `wn_sample` (plugins/ort/sampler.cc, the same float64
        operations); None = when the native library is available, False = NumPy only."""
        if method not in METHODS:
            raise InputError(f"unknown sampling method {method!r} (choose from {', '.join(METHODS)})")
        if method == "sample" and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise InputError(f"temperature must be > 0 (got {temperature}); use greedy sampling instead")
        self.method, self.temperature, self.classes = method, float(temperature), classes
        self.tokens = np.zeros(batch, dtype=np.int64)
        if method == "sample":
            self.z = np.empty((batch, classes), dtype=np.float64)
            self.c = np.empty((batch, classes), dtype=np.float64)
            self.top = np.empty((batch, 1), dtype=np.float32 if temperature == 1.0 else np.float64)
            self.target = np.empty((batch, 1), dtype=np.float64)
            self.mask = np.empty((batch, classes), dtype=bool)
        self._native = None
        if method == "sample" and native is not False:
            from .ort_ops import native_sampler

            self._native = native_sampler()
            if native and self._native is None:
                from .ort_ops import library

                library()  # raises the reason
        self._tokens_ptr = self.tokens.ctypes.data

    def bind(self, logits: np.ndarray | None, u: np.ndarray | None) -> Callable[[np.ndarray, int], np.ndarray]:
        """A `draw(step_logits, i)` for a step loop: the same tokens as `self(step_logits, u[i])`, where u
        holds a chunk's uniforms (steps, batch, 1) (None for greedy). When the step returns `logits`
        itself (the ONNX Runtime runner's bound output buffer; None if the runner has none), the native
        sampler is called with pointers computed once here: taking an array's address costs more than
        drawing from 256 classes."""
        if u is None or not len(u) or not isinstance(logits, np.ndarray) or not self._native_fits(logits, u[0]):
            return lambda step_logits, i: self(step_logits, None if u is None else u[i])
        native, B, Q = self._native, self.tokens.shape[0], self.classes
        lp, base, stride, T, tp = logits.ctypes.data, u.ctypes.data, u.strides[0], self.temperature, self._tokens_ptr
        out, n = self.tokens, u.shape[0]

        def draw(step_logits: np.ndarray, i: int) -> np.ndarray:
            if step_logits is not logits or not 0 <= i < n:
                return self(step_logits, u[i])
            native(lp, B, Q, base + i * stride, T, tp)
            return out
        return draw

    def _native_fits(self, logits: np.ndarray, u: np.ndarray) -> bool:
        """Whether `wn_sample` can draw from these arrays as they are (native sampling, float32 logits
        (batch, Q) and float64 uniforms (batch, 1), both C-contiguous)."""
        B = self.tokens.shape[0]
        return self._native is not None and self.method == "sample" and logits.dtype == np.float32 \
            and logits.flags.c_contiguous and logits.shape == (B, self.classes) and u.dtype == np.float64 \
            and u.flags.c_contiguous and u.size == B

    def __call__(self, logits: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        """logits (batch, Q), u (batch, 1) float64 uniforms (ignored by greedy) → tokens (batch,)."""
        out = self.tokens
        if self.method == "greedy":
            np.argmax(logits, axis=-1, out=out)
            return out
        if self._native_fits(logits, u):
            self._native(logits.ctypes.data, out.shape[0], self.classes, u.ctypes.data, self.temperature,
                         self._tokens_ptr)
            return out
        z, c = self.z, self.c
        if out.shape[0] == 1:  # one stream: the same operations on 1-D views (cheaper calls)
            z0, c0 = z[0], c[0]
            if self.temperature == 1.0:  # z − max z in float64, from the float32 logits (x / 1.0 is x)
                np.subtract(logits[0], np.float64(_max(logits[0])), out=z0)  # max float64(l) = float64(max l)
            else:
                np.copyto(z0, logits[0])  # float32 → float64, exact
                np.divide(z0, self.temperature, out=z0)
                np.subtract(z0, _max(z0), out=z0)
            np.exp(z0, out=z0)
            _accumulate(z0, out=c0)  # = np.cumsum
            k = int(c0.searchsorted(u[0, 0] * c0[-1], side="right"))  # #{c_i ≤ u·total}: c is non-decreasing
            out[0] = k if k < self.classes else self.classes - 1
            return out
        if self.temperature == 1.0:
            np.max(logits, axis=-1, keepdims=True, out=self.top)
            np.subtract(logits, self.top, out=z, dtype=np.float64)
        else:
            np.copyto(z, logits)
            np.divide(z, self.temperature, out=z)
            np.max(z, axis=-1, keepdims=True, out=self.top)
            np.subtract(z, self.top, out=z)
        np.exp(z, out=z)
        np.cumsum(z, axis=-1, out=c)
        np.multiply(u, c[:, -1:], out=self.target)
        np.less_equal(c, self.target, out=self.mask)
        np.sum(self.mask, axis=-1, out=out)  # first index with c_i > u·total
        np.minimum(out, self.classes - 1, out=out)
        return out


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
        """`threads`, `fused`: the ONNX Runtime step runner's options (`runners.ort.OrtStepRunner`)."""
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        self.manifest: Manifest = read_manifest(directory)
        self.cfg = self.manifest.config
        self.backend, self.precision, self.threads, self.checkpoint = backend, precision, threads, checkpoint
        self.fused = fused
        self.graph = "step" if precision == "fp32" else f"step.{precision}"
        if backend == "torch":
            if precision != "fp32":
                raise InputError("the torch backend is the float64 reference: it has no fp16 variant")
        else:
            self.manifest.graph(self.graph)  # a clear error if the directory lacks it
            if backend == "tensorrt" and self.graph not in self.manifest.data.get("engines", {}):
                raise ArtifactError(f"{self.manifest.directory} has no TensorRT engine for {self.graph!r}; "
                                    f"build it with `wn-export trt {self.manifest.directory}`")
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
        if self.backend == "torch":
            from .runners.torch_ref import TorchStepRunner

            runner = TorchStepRunner(self._reference())
        elif self.backend == "onnxruntime":
            from .runners.ort import OrtStepRunner

            runner = OrtStepRunner(self.manifest, self.graph, threads=self.threads, fused=self.fused)
        else:
            from .runners import open_step

            runner = open_step(self.manifest, "tensorrt", self.graph)
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
            from .parity import reference_model_for

            self._model = reference_model_for(self.manifest, self.checkpoint)
        return self._model

    # ---- requests -------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int | None:
        """The largest batch the backend accepts (TensorRT: the engine's profile), None if unbounded."""
        if self.backend != "tensorrt":
            return None
        graph = self.manifest.graph(self.graph)
        name = (graph.input("token") or graph.input("sample") or graph.inputs[0])["name"]
        limits = [int((p.get(name) or next(iter(p.values())))["max"][0])
                  for p in self.manifest.data["engines"][self.graph].get("profiles") or () if p]
        return max(limits) if limits else None

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
        limit = self.max_batch
        if limit is not None and batch > limit:
            raise InputError(f"batch {batch} is larger than the TensorRT engine's profile allows ({limit}); "
                             f"rebuild the engine with `wn-export trt --batch MIN,OPT,MAX` or use a smaller batch")
        cond = self._conditioning(features, batch, n)
        spk = self._speaker(speaker, batch)
        return Request(n, batch, int(seed), method, float(temperature), cond, spk, chunk)

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
        if self.backend == "torch" or "upsample" not in self.manifest.graphs:
            import torch

            with torch.no_grad():
                model = self._reference()
                return model.upsample(torch.as_tensor(frames, dtype=model.head[-1].weight.dtype)).numpy()
        if self._upsampler is None:
            from .runners.ort import OrtUpsampleRunner

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
        cfg = self.cfg
        if getattr(cfg, "scalar_input", False) or getattr(cfg, "mol", False):
            from .generate import generate_chunks  # the variants' loop (float inputs / mixture sampling)

            done = 0
            for block in generate_chunks(self.runner, req.n, req.batch, seed=req.seed, method=req.method,
                                         temperature=req.temperature, cond=req.cond, speaker=req.speaker,
                                         chunk=req.chunk, cfg=cfg):
                done += block.shape[1]
                if progress:
                    progress(done, req.n)
                yield block
            return
        yield from self._token_loop(req, progress)

    def _token_loop(self, req: Request, progress) -> Iterator[np.ndarray]:
        runner, B, n = self.runner, req.batch, req.n
        sampler = Sampler(B, self.cfg.quantization_channels, req.method, req.temperature)
        runner.reset(B, req.speaker)
        token = np.full(B, self.cfg.quantization_channels // 2, dtype=np.int64)  # μ-law silence
        cond = req.cond
        step = runner.step
        done = 0
        while done < n:
            size = min(req.chunk, n - done)
            u = uniforms(req.seed, size, B, start=done)[:, :, None] if req.method == "sample" else None
            draw = sampler.bind(getattr(runner, "logits", None), u)
            rows = np.empty((size, B), dtype=np.int64)
            for i in range(size):
                logits = step(token, None if cond is None else cond[:, :, done + i])
                token = draw(logits, i)
                rows[i] = token
            done += size
            if progress:
                progress(done, n)
            yield rows.T.copy()

    def generate(self, n: int, batch: int = 1, **options) -> np.ndarray:
        """All n samples per stream in one array (batch, n)."""
        return np.concatenate(list(self.stream(n, batch, **options)), axis=1)

    def decode(self, chunk: np.ndarray) -> np.ndarray:
        """Generated chunk → float32 audio in [−1, 1] (μ-law decoded tokens; mixture samples as they are)."""
        if getattr(self.cfg, "mol", False):
            return np.asarray(chunk, dtype=np.float32)
        return mulaw_decode(chunk, self.cfg.quantization_channels)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate


def open_generator(directory, backend: str = "onnxruntime", **kwargs) -> Generator:
    """A `Generator` for DIR (use it as a context manager)."""
    return Generator(directory, backend, **kwargs)


def generate_to_wav(directory, output: Path, n: int, *, backend: str = "onnxruntime", batch: int = 1,
                    precision: str = "fp32", threads: int | None = None, plot: bool = False,
                    progress: Callable[[int, int], None] | None = None, **options) -> list[Path]:
    """`wn-export generate`: generate and write one WAV per stream (OUT for one stream, OUT-stem.i.wav
    for more), plus OUT.png (waveform and spectrogram) with `plot`. Returns the written paths."""
    from .audio import write_wav

    output = Path(output)
    if output.suffix.lower() != ".wav":
        raise InputError(f"output must be a .wav file (got {output})")
    if output.exists() and output.is_dir():
        raise InputError(f"{output} is a directory")
    with Generator(directory, backend, precision=precision, threads=threads) as gen:
        req = gen.request(n, batch, **options)
        tokens = np.concatenate(list(gen.stream(n, batch, request=req, progress=progress)), axis=1)
        audio = gen.decode(tokens)
        rate = gen.sample_rate
    paths = [output] if batch == 1 else [output.with_name(f"{output.stem}.{i}.wav") for i in range(batch)]
    for path, wave in zip(paths, audio):
        write_wav(path, wave, rate)
    written = list(paths)
    if plot:
        from .plot import plot_audio

        png = output.with_suffix(".png")
        plot_audio(png, audio, rate, title=f"{Path(directory).name}: {n} samples, {backend}, seed "
                                           f"{req.seed}, {req.method}" + (f" T={req.temperature:g}"
                                                                          if req.method == "sample" else ""))
        written.append(png)
    return written




def load_features(path) -> np.ndarray | None:
    """A .npy file of frame-rate conditioning features → float32 array (None → None)."""
    if path is None:
        return None
    try:
        data = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read conditioning features {path}: {e}") from None
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(f"{path}: conditioning features must be numeric (got {data.dtype})")
    return data.astype(np.float32)


def parse_speakers(text: str | None):
    """"3" → 3, "1,4" → [1, 4], None → None (an `InputError` for anything else)."""
    if text is None:
        return None
    try:
        ids = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise InputError(f"speaker must be an integer id or comma-separated ids (got {text!r})") from None
    return ids[0] if len(ids) == 1 else ids


__all__ = ["BACKENDS", "Generator", "Request", "Sampler", "open_generator", "generate_to_wav",
           "load_features", "parse_speakers"]
