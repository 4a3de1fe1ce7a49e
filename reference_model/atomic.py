"""Atomic file writes: every output goes to a temporary name beside it and is renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError

TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary sibling of `name`: hidden, and short enough that any legal name has one."""
    return f".{name[:64]}."


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
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            Path(tmp).unlink(missing_ok=True)
