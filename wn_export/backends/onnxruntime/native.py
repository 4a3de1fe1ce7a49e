"""The native library of the ONNX Runtime host, `wn_ort_ops` (plugins/ort/): located, compiled once, cached.

It holds the custom ops `wn_export.WaveNetLayers` / `WaveNetHead` (wn_ort_ops.cc; see `fusion`), the kernels they
share with the native generation loop (kernels.cc, loop.cc; see `native_loop`), the host's categorical sampler
`wn_sample` (sampler.cc; see `generation.sampler.Sampler`) and the bench's weight-streaming floor (floor.cc).

The library is compiled on first use for the machine it runs on (`-O3 -march=native`: the kernels are
small GEMMs whose speed depends on the host's vector units), like a JIT extension. The build is keyed
by the source, the vendored ORT C API header, the compiler's version and the flags, and cached under
`$WN_EXPORT_CACHE` (default `$XDG_CACHE_HOME/wn-export`, else `~/.cache/wn-export`) as
`ort_ops/<key>/libwn_ort_ops.so`; it is written to a temporary name and renamed, so concurrent or
interrupted builds never leave a broken library. `$CXX` picks the compiler (default `c++`).

`library()` returns the path or raises `BackendError` with the reason (no compiler, no source, the
compiler's error); `available()` is the same as a (path | None, reason) pair for callers that fall
back to standard ONNX ops.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from reference_model.atomic import atomic_write_bytes
from wn_export.errors import BackendError

SOURCES = ("wn_ort_ops.cc", "kernels.cc", "sampler.cc", "loop.cc", "floor.cc")
HEADERS = ("kernels.h",)
LIB_NAME = "libwn_ort_ops.so"
DOMAIN = "wn_export"
FLAGS = ["-O3", "-std=gnu++17", "-ffp-contract=fast", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread"]
NATIVE = ["-march=native"]

_cache: dict[str, Path] = {}


def plugin_dir() -> Path:
    """Where the library's sources are: `$WN_EXPORT_PLUGINS/ort`, else plugins/ort of the source tree, else
    the copy an installed wheel carries as package data (`wn_export/_plugins/ort`, see setup.py)."""
    root = os.environ.get("WN_EXPORT_PLUGINS")
    if root:
        return Path(root) / "ort"
    package = Path(__file__).resolve().parents[2]  # wn_export/
    tree = package.parent / "plugins" / "ort"
    return tree if (tree / SOURCES[0]).is_file() else package / "_plugins" / "ort"


def cache_dir() -> Path:
    base = os.environ.get("WN_EXPORT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wn-export"
    return Path(base) / "ort_ops"


def _compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise BackendError(f"the native ONNX Runtime host library needs a C++17 compiler: '{cxx}' was not found "
                           "(install g++ or clang, or set CXX)")
    return cxx


def _key(cxx: str, srcs: list[Path], flags: list[str]) -> str:
    h = hashlib.sha256()
    for src in [*srcs, *(srcs[0].parent / name for name in HEADERS)]:
        h.update(src.read_bytes())
    h.update((srcs[0].parent / "third_party" / "onnxruntime" / "onnxruntime_c_api.h").read_bytes())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    h.update(f"{version}|{' '.join(flags)}|{platform.machine()}|{platform.node() if NATIVE[0] in flags else ''}"
             .encode())
    return h.hexdigest()[:16]


def _compile(cxx: str, srcs: list[Path], flags: list[str], out: Path) -> None:
    include = srcs[0].parent / "third_party" / "onnxruntime"
    cmd = [cxx, *flags, f"-I{include}", *map(str, srcs), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        detail = next((line for line in lines if "error" in line), lines[0] if lines else f"exit {r.returncode}")
        raise BackendError(f"compiling {LIB_NAME} failed ({' '.join(cmd)}): {detail}")


def library(progress=None) -> Path:
    """Path of the compiled library, building it on first use (a few seconds). Raises BackendError."""
    srcs = [plugin_dir() / name for name in SOURCES]
    if str(srcs[0]) in _cache:
        return _cache[str(srcs[0])]
    missing = [str(s) for s in [*srcs, *(plugin_dir() / name for name in HEADERS)] if not s.is_file()]
    if missing:
        raise BackendError(f"the native ONNX Runtime host sources {', '.join(missing)} are missing (they ship "
                           "in the source tree and the wheel; set WN_EXPORT_PLUGINS to a plugins/ directory)")
    cxx = _compiler()
    last_error = None
    for flags in (FLAGS + NATIVE, FLAGS):  # -march=native is not universal (e.g. some ARM compilers)
        key = _key(cxx, srcs, flags)
        target = cache_dir() / key / LIB_NAME
        if not target.is_file():
            if progress:
                progress(f"compiling {LIB_NAME} from plugins/ort (once per machine)")
            try:
                atomic_write_bytes(target, lambda tmp: _compile(cxx, srcs, flags, Path(tmp)))
            except BackendError as e:
                last_error = e
                continue
        _cache[str(srcs[0])] = target
        return target
    raise last_error


def available(progress=None) -> tuple[Path | None, str]:
    """(library path, "") or (None, why not)."""
    try:
        return library(progress), ""
    except BackendError as e:
        return None, str(e)


_sampler: list = []


def native_sampler():
    """`wn_sample` of the library as a ctypes function, or None when the library cannot be built."""
    if not _sampler:
        import ctypes

        path, _why = available()
        fn = None
        if path is not None:
            fn = ctypes.CDLL(str(path)).wn_sample
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_double,
                           ctypes.c_void_p]
        _sampler.append(fn)
    return _sampler[0]
