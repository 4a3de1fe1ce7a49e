"""Atomic file writes: every output goes to a temporary name beside it, is flushed to disk (fsync) and is
renamed into place, and the directory entry is flushed too: after a crash or power loss a name holds the old
file or the complete new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError

TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary sibling of `name`: hidden, and short enough that any legal name has one."""
    return f".{name[:64]}."


def fsync_file(path) -> None:
    """Flush a written file's data to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Flush a directory's entries (after a rename into it); a filesystem that cannot is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so no half-written file is ever left. An
    `OSError` (no space, no permission) becomes one `OutputError` naming the path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600: give the file ordinary permissions
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            Path(tmp).unlink(missing_ok=True)
