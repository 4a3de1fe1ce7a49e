"""Files a command reads and writes: bounded reads of regular files, and output paths checked before any
work starts (writable, a legal name, never one of the command's inputs)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError, OutputError


def read_regular(path, max_bytes: int, what: str, error: type[Exception] = InputError) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Devices, FIFOs and directories are refused
    without blocking or reading (the file is opened non-blocking and checked by its descriptor)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{what} {path} is {st.st_size:,} bytes, larger than any {what} ({max_bytes:,} max)")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is larger than any {what} ({max_bytes:,} bytes max)")
    return data


def regular_file(path, what: str, error: type[Exception] = InputError) -> Path:
    """`path` if it names an existing regular file (following links), else one clear error."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file")
    return path


def same_file(a, b) -> bool:
    """Whether two paths name the same file (after links), existing or not."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, inputs=(), what: str = "output", directory: bool = False) -> Path:
    """Refuse, before any work, an output the command could not write at the end: one of its `inputs`,
    an existing directory (or, with `directory`, an existing non-directory), a name longer than the file
    system allows, or a place where no file can be created (probed with a temporary file, removed at once)."""
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise OutputError(f"{what} {path} is also an input of this command ({source}): "
                              "choose another output path")
    # os.path's exists/isdir answer False for any OSError (a name too long, a file as a parent)
    if os.path.lexists(path):
        if directory and not os.path.isdir(path):
            raise OutputError(f"{what} {path} exists and is not a directory")
        if not directory and os.path.isdir(path):
            raise OutputError(f"{what} {path} is a directory")
    full = Path(os.path.abspath(path))
    ancestor = full if directory and os.path.isdir(full) else full.parent
    missing = [] if ancestor == full else [full.name]
    while not os.path.exists(ancestor) and ancestor != ancestor.parent:
        missing.insert(0, ancestor.name)
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        raise OutputError(f"cannot write {path}: {ancestor} is not a directory")
    _check_names(path, ancestor, missing)
    _probe(path, ancestor)
    if directory and os.path.isdir(full) and full.parent != full:
        _probe(path, full.parent)  # the staging directory is created beside it
    return path


def _check_names(path: Path, ancestor: Path, missing: list[str]) -> None:
    name_max = _pathconf(ancestor, "PC_NAME_MAX", 255)
    path_max = _pathconf(ancestor, "PC_PATH_MAX", 4096)
    for name in missing:
        if len(os.fsencode(name)) > name_max:
            raise OutputError(f"cannot write {str(path)[:80]}…: the name {name[:40]}… is "
                              f"{len(os.fsencode(name))} bytes, longer than the file system allows ({name_max})")
    if len(os.fsencode(os.path.abspath(path))) >= path_max:
        raise OutputError(f"cannot write {str(path)[:80]}…: the path is longer than the file system allows "
                          f"({path_max} bytes)")


def _probe(path: Path, directory: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".wn-export-probe.", dir=directory)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror} ({directory})") from None
    os.close(fd)
    os.unlink(probe)


def _pathconf(directory: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(directory, name)
    except (OSError, ValueError):
        return default


__all__ = ["read_regular", "regular_file", "same_file", "check_output"]
