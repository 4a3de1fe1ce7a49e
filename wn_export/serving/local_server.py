"""Run the `tritonserver` binary shipped in the nvidia-pytriton wheel on loopback (no GPU, python backend only).

The wheel carries Triton 2.51's `tritonserver`, its python backend and one python-backend stub per
Python version. `LocalTriton` lays out a backend directory (the backend library and the stub of the
running Python), starts the server in its own process group on 127.0.0.1 with free ports, waits until
the requested models are ready (bounded), and stops the whole group (server and stubs) on exit. Used by
`wn-export triton-serve`, the tests and the benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from wn_export.errors import BackendError, InputError


def pytriton_server() -> tuple[Path, Path, Path]:
    """(tritonserver binary, python backend dir, stub for this Python) from the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise BackendError("running tritonserver locally needs nvidia-pytriton: pip install 'wn-export[serve]'") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    backend = root / "backends" / "python"
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    for path in (binary, backend / "libtriton_python.so", stub):
        if not path.is_file():
            raise BackendError(f"nvidia-pytriton is incomplete: {path} is missing")
    return binary, backend, stub


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTriton:
    """`with LocalTriton([repo], models=["generate"]) as server:` → server.http_url, server.grpc_url."""

    def __init__(self, repositories, *, models=None, http_port: int | None = None, grpc_port: int | None = None,
                 startup_timeout: float = 90.0, log: Path | None = None):
        self.repositories = [Path(r).resolve() for r in repositories]
        for r in self.repositories:
            if not r.is_dir():
                raise InputError(f"model repository {r} does not exist (write one with `wn-export triton`)")
        self.models = list(models or [])
        self.http_port, self.grpc_port = http_port, grpc_port
        self.startup_timeout = startup_timeout
        self.log_path = log
        self.process: subprocess.Popen | None = None
        self._dir: Path | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Start and wait until ready; with free ports chosen here, retried twice if the server cannot bind."""
        chosen = self.http_port is None and self.grpc_port is None
        for attempt in range(3 if chosen else 1):
            if chosen:
                self.http_port, self.grpc_port = free_port(), free_port()
            try:
                return self._start()
            except BackendError as e:
                if attempt == 2 or not chosen or "address" not in str(e).lower():
                    raise

    def _start(self) -> None:
        binary, backend, stub = pytriton_server()
        self._dir = Path(tempfile.mkdtemp(prefix="wn-triton-"))
        python = self._dir / "backends" / "python"
        shutil.copytree(backend, python, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, python / "triton_python_backend_stub")
        args = [str(binary), *(f"--model-repository={r}" for r in self.repositories),
                f"--backend-directory={self._dir / 'backends'}", "--strict-readiness=false",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--allow-metrics=false", "--exit-timeout-secs=5", "--log-verbose=0"]
        if self.models:
            args += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        libs = binary.parents[3] / "nvidia_pytriton.libs"
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(libs),
                                                                            os.environ.get("LD_LIBRARY_PATH")]))}
        self._log = open(self.log_path or self._dir / "server.log", "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)  # its own process group: the stubs die with it
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.models) or [None]
        while pending:
            if self.process.poll() is not None:
                raise BackendError(f"tritonserver exited with code {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BackendError(f"tritonserver was not ready within {self.startup_timeout:.0f} s "
                                   f"(waiting for {pending[0] or 'the server'}): {self.log_tail()}")
            path = "/v2/health/ready" if pending[0] is None else f"/v2/models/{pending[0]}/ready"
            if self._get(path) == 200:
                pending.pop(0)
                continue
            if pending[0] is not None and self._model_failed(pending[0]):
                raise BackendError(f"model {pending[0]} failed to load: {self.log_tail()}")
            time.sleep(0.1)

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def _model_failed(self, name: str) -> bool:
        return f"failed to load '{name}'".encode() in self._log_bytes()

    def _log_bytes(self) -> bytes:
        self._log.flush()
        return Path(self._log.name).read_bytes()

    def log_tail(self, lines: int = 12) -> str:
        text = self._log_bytes().decode("utf-8", "replace").splitlines()
        errors = [line for line in text if line.startswith("E") or "error" in line.lower()]
        return " | ".join((errors or text)[-lines:])

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (what a crash looks like to clients)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`; remove the backend directory."""
        proc = self.process
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
            try:  # the stubs share the group: make sure nothing of it survives
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)
            deadline = time.monotonic() + 10.0  # SIGKILL is delivered asynchronously to the stubs
            while group_processes(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def group_alive(self) -> bool:
        """Whether a process of the server's group still runs (zombies, which a container's init may never
        reap, do not count: they hold no memory, ports or files)."""
        return self.process is not None and bool(group_processes(self.process.pid))


def group_processes(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(stat.parent.name))
    return live


def python_models(repository) -> list[str]:
    """The python-backend models of a repository (the only ones this server can load)."""
    from wn_export.serving.triton_repo import parse_config

    names = []
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        cfg = parse_config(config.read_text(encoding="utf-8"))
        if cfg.backend == "python":
            names.append(cfg.name or config.parent.name)
    if not names:
        raise InputError(f"{repository} has no python-backend model: this server (nvidia-pytriton) runs only those")
    return names
