"""ONNX Runtime backend: a generic host that drives the graphs from the manifest alone.

The step runner preallocates every buffer once per `reset` and binds them with I/O binding; a step
writes the token into its bound buffer, runs, and applies the manifest's state update rule:
`ring` (write the update rows into the ring buffers at `offset + position mod length`) or
`replace` (alternate two bindings over two buffer sets). No per-step Python allocations.
"""

from __future__ import annotations

import os

import numpy as np

from wn_export.backends.base import Regroup, ScoringRunner, StepRunner
from wn_export.contract.manifest import GraphRecord, Manifest
from wn_export.errors import ArtifactError, BackendError, InputError

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(double)": "float64"}


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("the onnxruntime backend needs the onnxruntime package: "
                           "pip install 'wn-export[cpu]' (or onnxruntime)") from None
    return onnxruntime


def make_session(graph: GraphRecord, threads: int | None = None, spinning: bool | None = None,
                 model: bytes | None = None, custom_ops: str | None = None, mem_pattern: bool = True):
    """A CPU session: `threads` intra-op threads (default min(2, cores)); `spinning` sets whether idle
    pool threads spin (ORT's default: yes) — only meaningful with more than one thread. `model` (bytes)
    replaces the graph file (a session-time rewrite of it), `custom_ops` is an op library to register.
    `mem_pattern` False: no preplanned block of every intermediate (the scoring graph's intermediates
    grow with the sequence; planning them in one block doubled a run's peak memory, at no measured speed)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = mem_pattern
    if custom_ops:
        opts.register_custom_ops_library(str(custom_ops))
    opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(model if model is not None else str(graph.path), opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for invalid graphs
        raise ArtifactError(f"onnxruntime cannot load {graph.path.name}: {str(e).splitlines()[0]}") from None
    check_io(graph, [(i.name, _ORT_DTYPES.get(i.type, i.type), len(i.shape)) for i in session.get_inputs()],
             [(o.name, _ORT_DTYPES.get(o.type, o.type), len(o.shape)) for o in session.get_outputs()])
    return session


def check_io(graph: GraphRecord, inputs, outputs) -> None:
    """The graph file's (name, dtype, rank) I/O must be the manifest's, or the directory is inconsistent."""
    for kind, got, declared in (("inputs", inputs, graph.inputs), ("outputs", outputs, graph.outputs)):
        want = [(t.name, t.dtype, len(t.shape)) for t in declared]
        if sorted(got) != sorted(want):
            raise ArtifactError(f"manifest/graph mismatch in {graph.path.name}: its {kind} are {sorted(got)}, "
                                f"the manifest declares {sorted(want)}")


def resolve(shape, dims: dict[str, int]) -> tuple[int, ...]:
    try:
        return tuple(d if isinstance(d, int) else dims[d] for d in shape)
    except KeyError as e:
        raise ArtifactError(f"cannot resolve symbolic dim {e} of shape {shape}") from None


class OrtScoringRunner(ScoringRunner):
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, graph: str = "scoring", threads: int | None = None):
        self.graph = manifest.graph(graph)
        self.threads = threads
        self.session = None

    def activate(self):
        self.session = make_session(self.graph, self.threads, mem_pattern=False)

    def deactivate(self):
        self.session = None

    def infer(self, tokens, cond=None, speaker=None):
        values = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64), "cond": cond, "speaker": speaker,
                  "samples": tokens}  # scalar-input models take float samples
        feeds = {}
        for t in self.graph.inputs:
            if values.get(t.role) is None:
                raise InputError(f"the scoring graph needs its {t.role!r} input ({t.name})")
            feeds[t.name] = np.ascontiguousarray(values[t.role], dtype=t.dtype)
        names = [t.name for t in self.graph.outputs]
        return {self.graph.outputs[i].role: v for i, v in enumerate(self.session.run(names, feeds))}


class OrtUpsampleRunner(OrtScoringRunner):
    """upsample.onnx: frame-rate features (B, C, frames) → per-sample (B, C, frames·hop)."""

    def __init__(self, manifest: Manifest, threads: int | None = None):
        super().__init__(manifest, "upsample", threads)

    def upsample(self, cond: np.ndarray) -> np.ndarray:
        name = self.graph.inputs[0].name
        return self.session.run(None, {name: np.ascontiguousarray(cond, dtype=np.float32)})[0]


class OrtStepRunner(StepRunner):
    """The step loop's hot path: every buffer is allocated and bound once per `reset`.

    - I/O binding over preallocated NumPy buffers: a step writes the token (and conditioning) in place,
      runs, and reads the logits from the bound output buffer (the returned array is that buffer).
    - `ring` state: the update rows are written into the packed state at `offset + position mod length`
      through a 1-D view whose elements are whole rows (one memcpy per row, no index arithmetic
      allocations: the row indices of every position come from a precomputed table).
    - `replace` state: two bindings (even/odd steps) over two buffer sets; the step alternates them,
      so nothing is rebound.
    - Fused layer chain: a lowered FP32 or w16 step graph's residual layers and head run as two nodes of the
      `wn_ort_ops` custom-op library (`fusion`, `native`; the file on disk is unchanged), sharing their work
      with a helper thread (plugins/ort/README.md; `WN_ORT_OPS_THREADS=1` turns it off).
      `fused=None` (default) uses it when the graph matches and the library builds, else the standard
      graph (`self.setup` says which, `self.unfused` why); `True` requires it; `False` never uses it.
    - Native loop (`generate_block`): with the fused graph, whole blocks of steps run in one call of the
      library's loop (`native_loop`), with the thread split measured per machine (`policy`);
      `native_loop=False` keeps the per-step path (`self.no_loop` says why there is none).
    - Threads: one intra-op thread by default, at every batch size (`threads` overrides). On the 2-core
      reference machine a second, spinning thread gained ~12% at batch 1 and ~25% at batch ≥ 8 only
      while the other core was idle, and lost 2–2.5× at every batch size as soon as another process
      used it (non-spinning: −20 to −50%); see README "Generation and speed".
    """

    name = "onnxruntime"
    TABLE_LIMIT = 1 << 20  # ring index table entries (positions × layers) precomputed at most

    def __init__(self, manifest: Manifest, graph: str = "step", threads: int | None = None,
                 spinning: bool | None = None, fused: bool | None = None, native_loop: bool | None = None):
        self.graph = manifest.graph(graph)
        self.threads = threads
        self.spinning = spinning
        self.fused = fused
        self.native_loop = native_loop  # None: when the fused graph has one; False: never (per-step ONNX Runtime)
        self.loop = None  # the native loop's plan (`native_loop.LoopPlan`), when fused and matched
        self.no_loop = ""
        self.calibration = None  # with the loop: its per-machine thread split (`policy.Calibration`)
        self.session = None
        self.sessions: dict[int, object] = {}
        self.batch = 0
        self.setup = "standard ONNX ops"
        self.unfused = ""  # why the layer chain is not fused (fused=None, the standard graph ran)
        self._fusion = None  # (model bytes, op library) of the fused session

    def activate(self):
        self.ort = import_ort()
        self._fusion = self._fuse() if self.fused is not False else None
        self.session = self._session(self.threads or 1)

    @property
    def is_fused(self) -> bool:
        """Whether the active session runs the fused layer chain."""
        return self._fusion is not None

    def _fuse(self):
        """(model bytes, op library) of the fused layer chain, or None (standard graph; `unfused` says why).
        Also plans the native loop (`self.loop`, or None and `self.no_loop` says why)."""
        import onnx

        from wn_export.backends.onnxruntime import policy
        from wn_export.backends.onnxruntime.fusion import fuse
        from wn_export.backends.onnxruntime.native import available
        from wn_export.export.graph_match import NoMatch

        lib, why, fused = None, "", None
        try:
            fused, chain = fuse(onnx.load(str(self.graph.path)))
        except NoMatch as e:
            why = (f"{self.graph.path.name} has no fusable layer chain (lowered FP32 or w16 step graphs with the ring "
                   f"state layout have one; here: {e})")
        if fused is not None:
            lib, why = available()
        if lib is None:
            if self.fused:
                raise BackendError(f"fused ONNX Runtime layers unavailable: {why}")
            self.unfused = why
            return None
        if self.native_loop is not False:
            from wn_export.backends.onnxruntime.native_loop import plan_loop

            try:
                self.loop = plan_loop(fused, chain, self.graph, str(lib))
            except NoMatch as e:
                self.no_loop = f"no native loop for this graph ({e})"
        weights = "16-bit weights" if chain.half else "fp32 weights"
        self.setup = (f"fused layer chain and head ({weights}), "
                      + ("native loop" if self.loop is not None else "ONNX Runtime per step"))
        policy.apply(str(lib))
        self.calibration = None if self.loop is None else policy.Calibration(self.loop, str(lib))
        return fused.SerializeToString(), str(lib)

    def deactivate(self):
        self.session = self.binding = None
        self.sessions = {}
        self.bindings = []

    def _session(self, threads: int):
        if threads not in self.sessions:
            model, lib = self._fusion or (None, None)
            self.sessions[threads] = make_session(self.graph, threads, spinning=self.spinning, model=model,
                                                  custom_ops=lib)
        return self.sessions[threads]

    def threads_for(self, batch: int) -> int:  # noqa: ARG002 - the policy may depend on the batch
        return self.threads or 1

    def _value(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(array)

    def reset(self, batch, speaker=None):
        if self.session is None:
            raise BackendError("runner is not active: use it as a context manager")
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise InputError(f"batch must be a positive integer (got {batch!r})")
        g, dims = self.graph, {"batch": int(batch)}
        self.session = self._session(self.threads_for(batch))
        self.batch, self.position = int(batch), 0
        self.buffers: dict[str, np.ndarray] = {}
        for t in (*g.inputs, *g.outputs):
            self.buffers[t.name] = np.zeros(resolve(t.shape, dims), dtype=t.dtype)
        self.rings, swaps = [], []
        for s in g.state:
            self.buffers[s.input][...] = s.init
            if s.update == "ring":
                self.rings.append(_Ring(self.buffers[s.input], self.buffers[s.output], s.rings,
                                        self.TABLE_LIMIT))
                self.position_buf = self.buffers[s.position]
            else:  # the output buffer of even steps is the input of odd steps and vice versa
                other = np.zeros_like(self.buffers[s.input])
                other[...] = s.init
                swaps.append((s.input, s.output, other))
        spk = g.input("speaker")
        if spk is not None:
            if speaker is None or np.shape(speaker) != (batch,):
                raise InputError(f"this model needs speaker ids of shape ({batch},)")
            self.buffers[spk.name][...] = speaker
        self.token_buf = self.buffers[g.feed.name]  # sample: scalar input
        cond = g.input("cond")
        self.cond_buf = None if cond is None else self.buffers[cond.name]
        self.logits = self.buffers[g.distribution.name]
        swapped = {name for name_in, name_out, _ in swaps for name in (name_in, name_out)}
        self.bindings = []
        for parity in range(2 if swaps else 1):
            binding = self.session.io_binding()
            for t in g.inputs:
                if t.name not in swapped:
                    binding.bind_ortvalue_input(t.name, self._value(self.buffers[t.name]))
            for t in g.outputs:
                if t.name not in swapped:
                    binding.bind_ortvalue_output(t.name, self._value(self.buffers[t.name]))
            for name_in, name_out, other in swaps:
                a, b = self.buffers[name_in], self.buffers[name_out]
                src, dst = (a, b) if parity == 0 else (b, a)
                binding.bind_ortvalue_input(name_in, self._value(src))
                binding.bind_ortvalue_output(name_out, self._value(dst))
            self.bindings.append(binding)
        self.binding = self.bindings[0]
        self._gate_base = None if self.loop is None else self.loop.gate_base(self.batch, speaker)
        # the C++ entry point, without the Python wrapper's frame (private API: fall back if it moves)
        fast = hasattr(self.session, "_sess") and all(hasattr(b, "_iobinding") for b in self.bindings)
        self._run = self.session._sess.run_with_iobinding if fast else None

    def step(self, token, cond_t=None):
        self.token_buf[...] = token
        if self.cond_buf is not None:
            if cond_t is None:
                raise InputError("this model needs per-sample conditioning (cond_t)")
            self.cond_buf[...] = cond_t
        position = self.position
        if self.rings:
            self.position_buf[0] = position
        binding = self.bindings[position & 1] if len(self.bindings) == 2 else self.binding
        if self._run is not None:
            self._run(binding._iobinding, None)
        else:
            self.session.run_with_iobinding(binding)
        for ring in self.rings:
            ring.write(position)
        self.position = position + 1
        return self.logits

    def regroup(self, rows, speaker=None) -> None:
        """Continue with len(rows) streams: new row j carries on current row rows[j], or starts from the
        initial state when rows[j] < 0 (continuous batching: streams join and leave between steps).

        The position (ring layout) and the buffer parity (replace layout) carry over, so a continuing
        row computes exactly what it would have; a new row's initial state reads the same at every
        position, so it computes what a fresh stream would. `speaker`: (len(rows),) ids."""
        plan = Regroup(rows, self.batch)
        names = [n for s in self.graph.state for n in (s.input, s.output)]
        old = {n: self.buffers[n] for n in names} if self.batch else {}
        position = self.position if self.batch else 0
        self.reset(plan.batch, speaker)
        for s in self.graph.state:
            for name in (s.input, s.output):
                plan.carry(old.get(name), self.buffers[name], s.init)  # (batch, …)
        self.position = position

    @property
    def batch_invariant(self) -> bool:
        """The native loop's kernels compute each row in one fixed order (plugins/ort/kernels.h), at any batch
        size and thread split."""
        return self.loop is not None

    def generate_block(self, first, out, u=None, temperature=1.0, cond=None, step_ns=None) -> bool:
        """len(out) steps in one native call (the fused graph's native loop: no Python per sample) → True, or
        False when this runner has none (see `StepRunner.generate_block`)."""
        if self.loop is None or len(self.rings) != 1 or out.ndim != 2 or out.shape[1] != self.batch:
            return False
        self.loop.run(state=self.rings[0].array, position=self.position, first=np.ascontiguousarray(first, np.int64),
                      out=out, gate_base=self._gate_base, u=u, temperature=temperature, cond=cond, logits=self.logits,
                      split=self.calibration.split(self.batch), step_ns=step_ns)
        self.position += out.shape[0]
        return True


class _Ring:
    """Writes a step's update rows (batch, L, R) into a packed ring state (batch, ΣN, R).

    Row l goes to `offset_l + position mod length_l`. Both arrays are viewed as 1-D arrays of whole
    rows (void elements of R·itemsize bytes), so the write is one fancy assignment of batch·L rows;
    the row indices for each position come from a table over one period (lcm of the lengths) when that
    is small (with every stream's rows when that is small too), else from two in-place ufuncs.
    """

    def __init__(self, state: np.ndarray, update: np.ndarray, rings: tuple[tuple[int, int], ...], table_limit: int):
        B, N, R = state.shape
        self.array = state  # (B, ΣN, R)
        row = np.dtype((np.void, R * state.itemsize))
        self.state = state.reshape(B * N, R).view(row).reshape(B * N)
        self.update = update.reshape(-1, R).view(row).reshape(-1)
        self.offsets = np.array([o for o, _ in rings], dtype=np.intp)
        self.lengths = np.array([n for _, n in rings], dtype=np.intp)
        self.base = (np.arange(B, dtype=np.intp) * N)[:, None]  # each stream's first row
        self.rows = np.empty((B, len(rings)), dtype=np.intp)
        self.flat = self.rows.reshape(-1)
        self.scratch = np.empty(len(rings), dtype=np.intp)
        period = int(np.lcm.reduce(self.lengths)) if len(rings) else 1
        self.period = period if period * len(rings) <= table_limit else 0
        self.full = None  # every stream's rows per position, when that table is small too
        if self.period:
            self.table = self.offsets + np.arange(self.period, dtype=np.intp)[:, None] % self.lengths
            if self.period * B * len(rings) <= table_limit:
                self.full = (self.base[None] + self.table[:, None, :]).reshape(self.period, -1)

    def write(self, position: int) -> None:
        if self.full is not None:
            self.state[self.full[position % self.period]] = self.update
            return
        if self.period:
            local = self.table[position % self.period]
        else:
            local = self.scratch
            np.remainder(position, self.lengths, out=local)
            np.add(local, self.offsets, out=local)
        np.add(self.base, local, out=self.rows)
        self.state[self.flat] = self.update
