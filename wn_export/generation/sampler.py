"""The sampler of every host: next tokens from logits exactly as `reference_model.sampling.draw` draws
them (SplitMix64 uniforms, float64 inverse CDF), into preallocated buffers, natively when the ONNX
Runtime host's library is built."""

from __future__ import annotations

from typing import Callable

import numpy as np

from reference_model.sampling import METHODS, check_temperature
from wn_export.errors import InputError

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
        temperature = check_temperature(method, temperature)
        self.method, self.temperature, self.classes = method, temperature, classes
        self.tokens = np.zeros(batch, dtype=np.int64)
        if method == "sample":
            self.z = np.empty((batch, classes), dtype=np.float64)
            self.c = np.empty((batch, classes), dtype=np.float64)
            self.top = np.empty((batch, 1), dtype=np.float32 if temperature == 1.0 else np.float64)
            self.target = np.empty((batch, 1), dtype=np.float64)
            self.mask = np.empty((batch, classes), dtype=bool)
        self._native = None
        if method == "sample" and native is not False:
            from wn_export.backends.onnxruntime.native import native_sampler

            self._native = native_sampler()
            if native and self._native is None:
                from wn_export.backends.onnxruntime.native import library

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
