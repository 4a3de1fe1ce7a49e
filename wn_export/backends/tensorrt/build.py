"""Build TensorRT engines from ONNX graphs, with datacenter TensorRT (10.x/11.x) or TensorRT-RTX.

One build path serves both flavours. Networks are always created strongly typed, so precision comes
only from the ONNX graph's tensor dtypes and Casts (there is no FP16 builder flag to set).

CPU-only facts (TensorRT-RTX 1.7, established by experiment):
- RTX builds ahead of time without a GPU or any environment variable, for the compute capabilities
  set on the config (default: a portable engine). Datacenter TensorRT needs a GPU to build.
- Deserializing an engine needs a CUDA GPU and driver for both flavours, so `inspect_engine` raises
  `BackendError` on a CPU-only machine. It first checks the engine header (RTX
  `Runtime.get_engine_validity`, which works CPU-only) and reports a malformed file as `ArtifactError`.
  The facts `build_engine` returns are taken from the network and profiles at build time and use the
  same schema as `inspect_engine`, so a GPU host can compare the two.
- Timing-cache APIs are deprecated no-ops in TensorRT-RTX; `timing_cache` is ignored there.
- Plugins (fused step graphs, `plugin=`): TensorRT-RTX 1.7 has no plugin layers (no `add_plugin_v3`, no
  ahead-of-time Python plugins) and its ONNX parser aborts the process on a plugin node, so such a
  graph is refused before parsing; datacenter TensorRT ≥ 10.9 registers `plugin.py` first and builds
  with `PREFER_AOT_PYTHON_PLUGINS`.

TensorRT is imported lazily: importing this module never needs it.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reference_model.atomic import atomic_write_bytes
from wn_export.errors import ArtifactError, BackendError, ExportError, WNExportError

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
ProgressFn = Callable[[str, int, int], None]
"""progress(phase, done, total): called when a build phase starts (done=0), steps and finishes."""

_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
_PIP = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"}
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
           "INT8": "int8", "UINT8": "uint8", "BOOL": "bool", "FP8": "float8", "INT4": "int4", "FP4": "fp4"}


def load_trt(backend: str = "auto") -> tuple[Any, str]:
    """Import a TensorRT flavour: returns (module, flavour) with flavour "tensorrt" or "tensorrt-rtx".

    "auto" prefers datacenter `tensorrt` and falls back to TensorRT-RTX.
    """
    if backend not in ("auto", *_MODULES):
        raise BackendError(f"unknown TensorRT backend {backend!r}: use auto, tensorrt or tensorrt-rtx")
    for flavour in (_MODULES if backend == "auto" else (backend,)):
        try:
            return __import__(_MODULES[flavour]), flavour
        except (ImportError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if backend == "auto":
        raise BackendError(f"no TensorRT found ({reason}): pip install {_PIP['tensorrt']} "
                           f"(GPU) or pip install {_PIP['tensorrt-rtx']} (CPU-only AOT builds)")
    raise BackendError(f"{backend} is not usable ({reason}): pip install {_PIP[backend]}")


@dataclass(frozen=True)
class Profile:
    """One optimization profile: input name -> (min, opt, max) shapes."""

    shapes: Mapping[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        norm = {}
        for name, triple in self.shapes.items():
            if len(triple) != 3:
                raise ExportError(f"profile for {name!r} needs (min, opt, max) shapes, got {triple!r}")
            lo, opt, hi = (tuple(int(d) for d in s) for s in triple)
            if not len(lo) == len(opt) == len(hi) or not all(0 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise ExportError(f"profile for {name!r} needs equal ranks and min <= opt <= max: {triple!r}")
            norm[name] = (lo, opt, hi)
        object.__setattr__(self, "shapes", norm)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        """JSON form: {name: {"min": [...], "opt": [...], "max": [...]}}."""
        return {n: dict(zip(("min", "opt", "max"), (list(s) for s in t))) for n, t in self.shapes.items()}


def _full_profile(prof: Profile, inputs: list[Any]) -> dict[str, dict[str, list[int]]]:
    """Profile facts for every input: static inputs get min = opt = max = their shape."""
    fixed = {t.name: (tuple(t.shape),) * 3 for t in inputs}
    return Profile({**fixed, **prof.shapes}).to_dict()


def _io(name: str, dtype: Any, shape: Any, mode: str) -> dict[str, Any]:
    """One I/O tensor fact; dtypes use numpy-style names ("float32", "float16", "int64", ...)."""
    return {"name": name, "dtype": _DTYPES.get(dtype.name, dtype.name.lower()),
            "shape": [int(d) for d in shape], "mode": mode}


def check_build_options(backend: str = "auto", compute_capability: str | None = None) -> str:
    """The flavour a build with these options would use; raises what the build would, before any work."""
    trt, flavour = load_trt(backend)
    if compute_capability:
        if flavour != "tensorrt-rtx":
            raise BackendError("compute_capability is a TensorRT-RTX option (use backend='tensorrt-rtx'); "
                               "datacenter TensorRT builds for the GPU it runs on")
        _compute_capabilities(trt, compute_capability)
    return flavour


def _compute_capabilities(trt: Any, spec: str) -> list[Any]:
    """Parse "8.6", "86", "sm86" or "sm_86" (comma-separated for several) to ComputeCapability members."""
    out = []
    for part in spec.split(","):
        key = part.strip().lower().removeprefix("sm").lstrip("_").replace(".", "")
        member = getattr(trt.ComputeCapability, f"SM{key}", None)
        if member is None:
            known = [m[2:] for m in trt.ComputeCapability.__members__ if m.startswith("SM")]
            raise BackendError(f"compute capability {part.strip()!r} is not a TensorRT-RTX target "
                               f"(known: {', '.join(known)})")
        out.append(member)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write data to path via a temp file in the same folder and os.replace (never a partial file)."""
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(data))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_LOGGERS: dict[str, Any] = {}
_LEVELS = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.WARNING, "INFO": logging.DEBUG}


def _logger(trt: Any) -> Any:
    """The flavour's one logger (forwards to `logging`, keeps errors for messages), errors cleared.

    TensorRT uses the first logger it was given while any builder or runtime lives, so one per process.
    """
    if trt.__name__ not in _LOGGERS:
        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.quiet = False  # keep errors, log nothing (expected failures)

            def log(self, severity: Any, msg: str) -> None:
                if severity.name in ("INTERNAL_ERROR", "ERROR"):
                    self.errors.append(_one_line(msg))
                if not self.quiet:
                    log.log(_LEVELS.get(severity.name, 5), "[TRT] %s", msg)

        _LOGGERS[trt.__name__] = _Logger()
    logger = _LOGGERS[trt.__name__]
    logger.errors.clear()
    logger.quiet = False
    return logger


def _monitor(trt: Any, progress: ProgressFn) -> Any:
    """An IProgressMonitor forwarding to progress(phase, done, total); a raising callback stops the build."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.state: dict[str, list[int]] = {}  # phase -> [done, total]
            self.error: BaseException | None = None

        def _call(self, phase: str, done: int) -> bool:
            st = self.state.setdefault(phase, [0, 1])
            if self.error is None and (done == 0 or done != st[0]):
                st[0] = done
                try:
                    progress(phase, done, st[1])
                except BaseException as e:  # noqa: BLE001 - exceptions must not cross into C++
                    self.error = e
            return self.error is None

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.state[phase_name] = [0, max(int(num_steps), 1)]
            self._call(phase_name, 0)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return self._call(phase_name, int(step) + 1)

        def phase_finish(self, phase_name: str) -> None:
            self._call(phase_name, self.state.get(phase_name, [0, 1])[1])

    return _Monitor()


def _add_profiles(builder: Any, config: Any, profs: list[Profile], inputs: list[Any], logger: Any) -> None:
    """Check the profiles against the network inputs and add them to the builder config."""
    names = {t.name for t in inputs}
    if not profs and any(-1 in tuple(t.shape) for t in inputs):
        raise ExportError("the network has dynamic inputs: give (min, opt, max) profiles for them")
    for i, prof in enumerate(profs):
        if unknown := set(prof.shapes) - names:
            raise ExportError(f"profile {i} names unknown inputs {sorted(unknown)} (inputs: {sorted(names)})")
        if missing := [t.name for t in inputs if -1 in tuple(t.shape) and t.name not in prof.shapes]:
            raise ExportError(f"profile {i} lacks shapes for dynamic inputs {missing}")
        op = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.shapes.items():
            try:
                op.set_shape(name, lo, opt, hi)
            except ValueError as e:
                raise ExportError(f"profile {i} input {name!r}: {_one_line(e)}") from e
        if config.add_optimization_profile(op) < 0:
            raise ExportError(f"TensorRT rejected optimization profile {i}: {'; '.join(logger.errors)}")


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    errs = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errs:
        raise ExportError(f"TensorRT could not parse {onnx_path}: {'; '.join(logger.errors) or 'no detail'}")
    e = errs[0]
    more = f" (+{len(errs) - 1} more errors)" if len(errs) > 1 else ""
    raise ExportError(f"TensorRT could not parse {onnx_path.name}: node {e.node()} {e.node_name()!r} "
                      f"(op {e.node_operator() or '?'}): {_one_line(e.desc())}{more}")


def _isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) with the cyclic GC paused; re-raise its exception without fn's frames.

    If the garbage collector frees a TensorRT object (e.g. a Builder kept in a reference cycle) inside
    a TensorRT callback (logger, progress monitor), TensorRT deadlocks on its own mutex. So the GC is
    paused during TensorRT calls, and no TensorRT object is left in a traceback (a cycle) afterwards:
    frames are dropped, and unexpected errors keep their traceback as a note.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised below, only its frames are dropped
        err, seen = exc, set()
        while err is not None and id(err) not in seen:
            seen.add(id(err))
            if err.__traceback__ is not None and not isinstance(err, WNExportError):
                err.add_note("".join(traceback.format_tb(err.__traceback__)).rstrip())
            err.__traceback__ = None
            err = err.__cause__ or err.__context__
        failure = exc
    finally:
        if gc_was_enabled:
            gc.enable()
    raise failure


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 profiles: Mapping[str, tuple[Shape, Shape, Shape]] | Profile | Sequence[Any] = (),
                 backend: str = "auto", workspace_bytes: int = 1 << 30,
                 timing_cache: str | os.PathLike | None = None, compute_capability: str | None = None,
                 tf32: bool = False, progress: ProgressFn | None = None, plugin: str | None = None) -> dict[str, Any]:
    """Build a strongly typed engine from an ONNX file and write it atomically to engine_path.

    `profiles` gives (min, opt, max) shapes per dynamic input (one mapping/Profile, or several).
    `compute_capability` ("8.6", "sm86", "8.6,8.9") selects TensorRT-RTX AOT targets; it is an error
    with datacenter TensorRT. `progress(phase, done, total)` follows the build. `plugin`: the graph is
    one node of this plugin (a fused step graph, see `plugin.py`). Returns the engine
    facts (file, sha256, backend, version, onnx, io, profiles, compute_capability, ...), with io and
    profiles in the same form as `inspect_engine`.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX file not found: {onnx_path}")
    trt, flavour = load_trt(backend)
    if plugin is not None:
        from wn_export.backends.tensorrt import plugin as step_plugin

        if plugin != step_plugin.PLUGIN.id:
            raise BackendError(f"{onnx_path.name} needs the unknown plugin {plugin!r}")
        if reason := step_plugin.unsupported(trt, flavour):
            raise BackendError(f"cannot build {onnx_path.name}: {reason}")
        step_plugin.register()  # before the parser meets the node
    if compute_capability and flavour != "tensorrt-rtx":
        raise BackendError("compute_capability is a TensorRT-RTX option (use backend='tensorrt-rtx'); "
                           "datacenter TensorRT builds for the GPU it runs on")
    if isinstance(profiles, (Profile, Mapping)):
        profiles = [profiles]
    profs = [p if isinstance(p, Profile) else Profile(dict(p)) for p in profiles or ()]
    ccs = _compute_capabilities(trt, compute_capability) if compute_capability else []
    cache_path = Path(timing_cache) if timing_cache and flavour == "tensorrt" else None
    if timing_cache and cache_path is None:
        log.info("timing cache ignored: it is a deprecated no-op in TensorRT-RTX")
    t0 = time.perf_counter()
    data, io, prof_facts = _isolated(_build, trt, flavour, onnx_path, engine_path, profs, ccs,
                                     int(workspace_bytes), cache_path, tf32, progress)
    return {
        "file": str(engine_path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
        "backend": flavour, "version": trt.__version__, "onnx": str(onnx_path), "io": io,
        "profiles": prof_facts, "compute_capability": [c.name.removeprefix("SM") for c in ccs] or None,
        "tf32": bool(tf32), "workspace_bytes": int(workspace_bytes),
        "timing_cache": str(cache_path) if cache_path else None,
        "build_seconds": round(time.perf_counter() - t0, 3),
    }


def _build(trt: Any, flavour: str, onnx_path: Path, engine_path: Path, profs: list[Profile], ccs: list[Any],
           workspace_bytes: int, cache_path: Path | None, tf32: bool, progress: ProgressFn | None) -> tuple:
    """The TensorRT part of build_engine (run through `_isolated`): returns (engine bytes, io, profiles)."""
    logger = _logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # noqa: BLE001 - datacenter TensorRT without a usable GPU
        raise BackendError(f"{flavour} could not create a builder ({_one_line(e)}) "
                           f"{'; '.join(logger.errors)}".strip()) from None
    flags = 0
    for flag in ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"):  # AOT: the plugin's PTX goes into the engine
        if hasattr(trt.NetworkDefinitionCreationFlag, flag):
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
    network = builder.create_network(flags)
    _parse(trt, network, logger, onnx_path)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if hasattr(trt.BuilderFlag, "TF32"):
        (config.set_flag if tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    _add_profiles(builder, config, profs, inputs, logger)
    if ccs:
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            if not config.set_compute_capability(cc, i):
                raise BackendError(f"TensorRT-RTX refused compute capability {cc.name}")
    if cache_path is not None:
        cached = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cached), False)
    monitor = None
    if progress is not None and hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):
        monitor = _monitor(trt, progress)
        config.progress_monitor = monitor
    elif progress is not None:
        progress("build", 0, 1)

    blob = builder.build_serialized_network(network, config)
    if monitor is not None and monitor.error is not None:
        raise monitor.error
    if blob is None or blob.nbytes == 0:
        raise BackendError(f"{flavour} failed to build {onnx_path.name}: "
                           f"{'; '.join(logger.errors) or 'no error logged'}")
    if monitor is None and progress is not None:
        progress("build", 1, 1)
    data = bytes(blob)
    _atomic_write(engine_path, data)
    if cache_path is not None:
        _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    io = [_io(t.name, t.dtype, t.shape, "input") for t in inputs]
    io += [_io(t.name, t.dtype, t.shape, "output") for t in outputs]
    return data, io, [_full_profile(p, inputs) for p in profs or [Profile()]]  # static: 1 implicit profile


def inspect_engine(engine_path: str | os.PathLike, backend: str = "auto") -> dict[str, Any]:
    """Read I/O tensors (name, dtype, shape with -1 for dynamic, mode) and per-profile min/opt/max.

    Needs a CUDA GPU: engines cannot be deserialized without one (either flavour). On a CPU-only
    machine this raises `BackendError` after a header check; a malformed file is an `ArtifactError`.
    """
    path = Path(engine_path)
    data = path.read_bytes() if path.is_file() else b""
    if not data:
        raise ArtifactError(f"engine file missing or empty: {path}")
    trt, flavour = load_trt(backend)
    io, profiles = _isolated(_inspect, trt, flavour, path, data)
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "backend": flavour, "version": trt.__version__, "io": io, "profiles": profiles}


def _inspect(trt: Any, flavour: str, path: Path, data: bytes) -> tuple[list, list]:
    """The TensorRT part of inspect_engine (run through `_isolated`): returns (io, profiles)."""
    logger = _logger(trt)
    runtime = trt.Runtime(logger)
    if hasattr(trt, "EngineInvalidityDiagnostics"):  # TensorRT-RTX: header check, works CPU-only
        logger.quiet = True  # without a GPU it logs a fatal-looking "cannot read GPU properties"
        try:
            _, diagnostics = runtime.get_engine_validity(data)
        finally:
            logger.quiet = False
        if int(diagnostics) & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE):
            raise ArtifactError(f"{path} is not a {flavour} {trt.__version__} engine (malformed header)")
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError(f"{flavour} could not deserialize {path.name} (inspection needs a CUDA GPU and "
                           f"driver, and the TensorRT version that built it): "
                           f"{logger.errors[-1] if logger.errors else 'no error logged'}")
    io, profiles = [], [{} for _ in range(engine.num_optimization_profiles)]
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        mode = engine.get_tensor_mode(name).name.lower()
        io.append(_io(name, engine.get_tensor_dtype(name), shape, mode))
        for p, prof in enumerate(profiles if mode == "input" else ()):
            triple = engine.get_tensor_profile_shape(name, p) if -1 in shape else (shape,) * 3
            prof[name] = dict(zip(("min", "opt", "max"), ([int(d) for d in s] for s in triple)))
    return io, profiles
