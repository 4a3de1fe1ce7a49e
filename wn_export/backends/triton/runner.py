"""The fused Triton step kernel behind the `StepRunner` interface: one launch per sample (`step`), or
K samples per launch with the draw in the kernel (`generate_block`, the generation loop's block path).

The kernel runs on a CUDA GPU (JIT-compiled by Triton), or on the CPU under Triton's interpreter when
`TRITON_INTERPRET=1` was set before this module was imported (slow: for tests of its numerics).

    runner = TritonStepRunner(read_manifest(DIR))            # the checkpoint the manifest records
    runner = TritonStepRunner.from_model(model, "fp16")      # or any reference WaveNet
    runner.reset(batch, speaker); logits = runner.step(token, cond_t)     # (B, Q) float32
    tokens = generate(runner, n, batch, seed=0)              # wn_export.generation.loop: draws in the kernel
    runner.regroup(rows, speaker)                            # streams join and leave (serving.streams)
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from reference_model import WaveNet
from reference_model.sampling import check_row_temperatures, check_temperature
from wn_export.backends.base import Regroup, StepRunner
from wn_export.backends.triton.layout import PRECISIONS, KernelLayout, check_supported
from wn_export.errors import BackendError, InputError

DEFAULT_STEPS_PER_LAUNCH = 256


def load_kernel():
    """The `wavenet_steps` kernel and whether it runs under the interpreter; one clear error without
    triton, or without a CUDA GPU outside the interpreter."""
    try:
        from wn_export.backends.triton.kernel import wavenet_steps
    except ImportError as e:
        raise BackendError(f"the triton backend needs the triton package (pip install triton==3.9.0): {e}") from None
    interpreted = type(wavenet_steps).__name__ == "InterpretedFunction"
    if not interpreted and os.environ.get("TRITON_INTERPRET") == "1":
        raise BackendError("TRITON_INTERPRET=1 was set after triton was imported, so its kernels were built "
                           "for a GPU: set it before the process starts")
    if not interpreted and not torch.cuda.is_available():
        raise BackendError("the triton backend needs a CUDA GPU (none found); set TRITON_INTERPRET=1 to run "
                           "its kernel on the CPU interpreter (slow)")
    return wavenet_steps, interpreted


class TritonStepRunner(StepRunner):
    name = "triton"
    batch_invariant = True  # one program per stream, the same code at any grid: a row never sees the batch

    def __init__(self, manifest, graph: str = "step", *, device: str | None = None, num_warps: int = 4,
                 block_h: int | None = None, block_o: int | None = None, checkpoint=None,
                 steps_per_launch: int = DEFAULT_STEPS_PER_LAUNCH):
        """The checkpoint `manifest` (a `Manifest` or an export directory) was exported from (or
        `checkpoint`, of the same config), at the precision of its `graph`."""
        from wn_export.backends.torch_ref import reference_model_for
        from wn_export.contract.manifest import Manifest, read_manifest

        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest)
        spec = manifest.graph(graph)
        if spec.kind != "step":
            raise BackendError(f"graph {graph!r} is a {spec.kind} graph; the triton backend runs step graphs")
        check_supported(manifest.config)
        self._setup(reference_model_for(manifest, checkpoint), spec.precision, device, num_warps, block_h, block_o,
                    steps_per_launch)

    @classmethod
    def from_model(cls, model: WaveNet, precision: str = "fp32", device: str | None = None, *,
                   num_warps: int = 4, block_h: int | None = None, block_o: int | None = None,
                   steps_per_launch: int = DEFAULT_STEPS_PER_LAUNCH) -> TritonStepRunner:
        runner = cls.__new__(cls)
        runner._setup(model, precision, device, num_warps, block_h, block_o, steps_per_launch)
        return runner

    def _setup(self, model, precision, device, num_warps, block_h, block_o, steps_per_launch):
        check_supported(model.cfg)
        if isinstance(steps_per_launch, bool) or not isinstance(steps_per_launch, int) or steps_per_launch < 1:
            raise InputError(f"steps_per_launch must be a positive integer (got {steps_per_launch!r})")
        self.steps_per_launch = steps_per_launch  # samples per launch of generate_block (the last one shorter)
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r} (the triton backend runs {', '.join(PRECISIONS)})")
        self.kernel, interpreted = load_kernel()
        self.device = torch.device(device or ("cpu" if interpreted else "cuda"))
        if interpreted != (self.device.type == "cpu"):
            raise BackendError(f"the triton kernel was loaded {'with' if interpreted else 'without'} "
                               f"TRITON_INTERPRET=1 and cannot run on {self.device}")
        self.model = copy.deepcopy(model).to(torch.float64).eval()  # speaker projections; the loop reads .cfg
        self.cfg = model.cfg
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.num_warps = num_warps
        self.layout = KernelLayout.of(model.cfg, block_h, block_o)
        self.constexprs = self.layout.constexprs()
        self.scalars = self.layout.scalars()
        self.weights = self.layout.pack(model, self.dtype).to(self.device)
        self.table = self.layout.table().to(self.device)
        self.state = None
        self.batch = 0
        self.position = 0

    # ---- StepRunner --------------------------------------------------------------------------
    def reset(self, batch: int, speaker=None) -> None:
        self.layout.check_batch(batch)
        cfg, dev = self.cfg, self.device
        self.batch = batch
        self.state = torch.zeros(batch, self.layout.state_rows, cfg.residual_channels, dtype=self.dtype, device=dev)
        self.speaker = self._speaker(batch, speaker)
        self.logits = torch.empty(batch, cfg.quantization_channels, dtype=torch.float32, device=dev)
        self.token = torch.empty(batch, dtype=torch.int64, device=dev)
        self.temperature = torch.ones(batch, dtype=torch.float64, device=dev)  # (B,) per stream, 0: greedy
        self.position = 0

    def step(self, token, cond_t=None) -> np.ndarray:
        """token (B,) int64, cond_t (B, C) → logits (B, Q) float32 (a reused buffer)."""
        self._ready()
        self.token.copy_(torch.as_tensor(self._tokens(token)))
        cond = self._cond(None if cond_t is None else np.asarray(cond_t)[:, :, None], 1)
        self._launch(self.token, cond, 1, draw=False)
        self.position += 1
        return self.logits.cpu().numpy()

    def regroup(self, rows, speaker=None) -> None:
        """Continue with len(rows) streams: new row j carries on current row rows[j], or starts from the zero
        ring state when rows[j] < 0 (`base.Regroup`); the position carries over. `speaker`: (len(rows),) ids."""
        plan = Regroup(rows, self.batch)
        old, position = self.state, self.position
        self.reset(plan.batch, speaker)
        plan.carry(old, self.state, 0.0, lambda a: torch.as_tensor(a, device=self.device))  # (B, N, R)
        self.position = position

    # ---- K samples per launch ----------------------------------------------------------------
    def generate_block(self, first, out, u=None, temperature=1.0, cond=None, step_ns=None) -> bool:
        """len(out) steps with the draw in the kernel, `steps_per_launch` per launch (`StepRunner.generate_block`):
        first (B,) int64, out (steps, B) int64, u (steps, B) float64 uniforms (None: greedy), temperature
        one value or (B,) float64 per stream (0: greedy for that stream), cond (B, C, ≥ steps). step_ns
        receives each launch's wall time spread evenly over its steps."""
        self._ready()
        if np.ndim(out) != 2 or np.shape(out)[1] != self.batch:
            raise InputError(f"out must be (steps, batch={self.batch}), got {np.shape(out)}")
        steps = out.shape[0]
        greedy = u is None
        if not greedy:
            if np.shape(u) != (steps, self.batch):
                raise InputError(f"u must be (steps={steps}, batch={self.batch}) uniforms, got {np.shape(u)}")
            self.temperature.copy_(torch.as_tensor(self._temperatures(temperature)))
        if cond is not None and (np.ndim(cond) != 3 or np.shape(cond)[2] < steps):
            raise InputError(f"cond must be (batch, channels, ≥ {steps} samples), got {np.shape(cond)}")
        self.token.copy_(torch.as_tensor(self._tokens(first)))
        for t0 in range(0, steps, self.steps_per_launch):
            k = min(self.steps_per_launch, steps - t0)
            start = time.perf_counter_ns()
            uk = None if greedy else torch.as_tensor(np.ascontiguousarray(u[t0:t0 + k], np.float64)).to(self.device)
            drawn = torch.empty(self.batch, k, dtype=torch.int64, device=self.device)  # (B, k)
            self._launch(self.token, self._cond(None if cond is None else cond[:, :, t0:t0 + k], k), k,
                         draw=True, greedy=greedy, u=uk, drawn=drawn)
            self.position += k
            self.token.copy_(drawn[:, -1])
            out[t0:t0 + k] = drawn.T.cpu().numpy()  # copies to the host: the launch has finished
            if step_ns is not None:
                step_ns[t0:t0 + k] = (time.perf_counter_ns() - start) // k
        return True

    def _temperatures(self, temperature) -> np.ndarray:
        """One temperature (the sampling rule of every host) or (B,) per stream, each 0 (greedy) or a valid one
        → (B,) float64."""
        if np.ndim(temperature) == 0:
            return np.full(self.batch, check_temperature("sample", temperature))
        return check_row_temperatures(temperature, self.batch)

    # ---- internals ---------------------------------------------------------------------------
    def _launch(self, token, cond, steps, *, draw, greedy=False, u=None, drawn=None):
        spare = self.logits  # stands in for the pointers a launch does not read
        self.kernel[(self.batch,)](
            self.weights, self.table, self.state, token,
            spare if cond is None else cond, spare if self.speaker is None else self.speaker,
            spare if u is None else u, self.temperature, token if drawn is None else drawn, self.logits,
            self.position, steps, self.cfg.layers, self.layout.state_rows,
            self.scalars["residual_scale"], self.scalars["skip_scale"],
            **self.constexprs, DRAW=draw, GREEDY=greedy, num_warps=self.num_warps, enable_fp_fusion=True)

    def _ready(self):
        if self.state is None:
            raise InputError("call reset(batch) before step()")

    def _tokens(self, token) -> np.ndarray:
        t = np.asarray(token)
        Q = self.cfg.quantization_channels
        if t.shape != (self.batch,) or not np.issubdtype(t.dtype, np.integer):
            raise InputError(f"token must be ({self.batch},) integers, got {t.dtype} {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= Q):
            raise InputError(f"tokens must be in [0, {Q}) (got {t.min()}…{t.max()})")
        return t.astype(np.int64)

    def _cond(self, cond, steps):
        """cond (B, C, steps) or None → (steps, B, C) float32 on the device, or None."""
        C = self.cfg.local_channels
        if not self.cfg.local:
            if cond is not None:
                raise InputError("this model has no local conditioning; do not pass cond")
            return None
        if cond is None or np.ndim(cond) != 3 or np.shape(cond)[:2] != (self.batch, C) or np.shape(cond)[2] < steps:
            raise InputError(f"this model needs cond of shape (batch={self.batch}, {C}) per sample, "
                             f"got {None if cond is None else np.shape(cond)}")
        c = torch.as_tensor(np.ascontiguousarray(np.asarray(cond)[:, :, :steps].transpose(2, 0, 1)), dtype=torch.float32)
        return c.contiguous().to(self.device)

    def _speaker(self, batch, speaker):
        cfg = self.cfg
        if not cfg.global_:
            if speaker is not None:
                raise InputError("this model has no global conditioning; do not pass speaker")
            return None
        s = None if speaker is None else np.asarray(speaker)
        if s is None or s.shape != (batch,) or not np.issubdtype(s.dtype, np.integer):
            raise InputError(f"this model needs speaker ids of shape ({batch},), got "
                             f"{None if s is None else f'{s.dtype} {s.shape}'}")
        if s.min() < 0 or s.max() >= cfg.speakers:
            raise InputError(f"speaker ids must be in [0, {cfg.speakers}) (got {s.min()}…{s.max()})")
        return self.layout.speaker_projections(self.model, torch.as_tensor(s, dtype=torch.int64)).to(self.device)


__all__ = ["TritonStepRunner", "load_kernel"]
