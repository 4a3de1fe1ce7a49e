"""One writer per export directory, and no debris from writers that died.

`wn-export onnx` and `wn-export trt` change DIR only while holding an exclusive `fcntl.flock` on
DIR/.wn-export.lock (the file holds the owner's pid). A second writer waits for the first, saying so once,
for at most `WN_EXPORT_LOCK_TIMEOUT` seconds (default 3600), then fails with one message. The lock file is
removed by its owner on the way out (a waiter that then holds a lock on the removed file notices and
takes the new one), so a finished directory holds no lock file; the kernel drops the lock of a killed
process, and the next writer removes what it left.

While holding the lock a writer removes debris of dead writers: staging directories beside DIR named
`.DIR.staging-PID-…` whose process is gone, temporary files inside DIR (`.NAME.XXXXXXXX.tmp`) of the
names a writer writes, and partial engines (`.STEM.engine.PID.partial`) whose process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from reference_model.atomic import temp_prefix
from reference_model.errors import OutputError

LOCK_NAME = ".wn-export.lock"
TIMEOUT_ENV = "WN_EXPORT_LOCK_TIMEOUT"
STAGING_INFIX = ".staging-"
PARTIAL_SUFFIX = ".partial"
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # atomic_write_bytes's temporary files
_PARTIAL = re.compile(r"^\..+\.engine\.(?P<pid>\d+)\.partial$")  # an engine being built by process PID


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "3600")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise OutputError(f"{TIMEOUT_ENV}={text!r:.40} is not a number of seconds")
    return value


@contextlib.contextmanager
def export_lock(directory, notice: Callable[[str], None] | None = None, create: bool = False) -> Iterator[Path]:
    """Hold DIR's writer lock for the `with` block. `create`: make DIR first (and remove it again on the
    way out if the block left it empty, so a failed first export leaves no directory)."""
    directory = Path(directory)
    created = False
    deadline, told = time.monotonic() + _timeout(), []

    def waiting() -> None:  # said once, however long the wait
        if not told and notice:
            notice(f"waiting for another wn-export (pid {_owner(directory / LOCK_NAME)}) that is writing {directory}")
        told.append(True)

    while True:
        if create and not directory.is_dir():
            try:
                directory.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass
            except OSError as e:
                raise OutputError(f"cannot create {directory}: {e.strerror}") from None
        path = directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise OutputError(f"cannot lock {directory} for writing: {e.strerror}") from None
        try:
            if not _acquire(fd, deadline, waiting):
                raise OutputError(f"{directory} is still being written by another wn-export (pid {_owner(path)}) "
                                  f"after {_timeout():g} s; try again later or raise {TIMEOUT_ENV}")
            if _same_inode(fd, path):  # else its owner removed it while we waited: lock the new one
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield directory
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: a failed first export leaves nothing behind


def _acquire(fd: int, deadline: float, waiting: Callable[[], object]) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            waiting()
            time.sleep(0.05)


def _owner(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def _same_inode(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_directory(directory: Path) -> Path:
    """A fresh staging directory beside DIR, named with this process's pid (call with DIR's lock held)."""
    prefix = f"{temp_prefix(directory.name)}{STAGING_INFIX.lstrip('.')}{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=directory.parent))


def remove_debris(directory: Path) -> list[Path]:
    """Remove what dead writers left (call with DIR's lock held) → the paths removed."""
    directory = Path(directory)
    removed = []
    staging = re.compile(re.escape(f"{temp_prefix(directory.name)}{STAGING_INFIX.lstrip('.')}") + r"(\d+)-")
    with contextlib.suppress(OSError):
        for entry in directory.parent.iterdir():
            m = staging.match(entry.name)
            if m and entry.is_dir() and not entry.is_symlink() and not _alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if _debris(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
    return removed


def _debris(name: str) -> bool:
    """A temporary file of a dead writer: the temporary sibling of a file writers write (only ever made
    under the lock, so its maker is gone), or a partial engine whose process is not alive."""
    if m := _TEMP.match(name):
        inner = m["name"]
        return inner == "manifest.json" or inner.endswith((".onnx", ".engine")) or bool(_PARTIAL.match(inner))
    if m := _PARTIAL.match(name):
        return not _alive(int(m["pid"]))
    return False


__all__ = ["LOCK_NAME", "TIMEOUT_ENV", "export_lock", "staging_directory", "remove_debris"]
