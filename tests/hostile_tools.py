"""What every hostile-input case checks: the command is refused with a non-zero exit and exactly one
message line on stderr (no traceback), and the working tree (inputs, outputs, export directories) is
byte-for-byte what it was: nothing created, changed or left behind."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def tree(root: Path) -> dict[str, tuple]:
    """{relative path: (kind, content hash or link target, mode)} of everything under root."""
    out = {}
    for base, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(base) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("special", "", stat.S_IMODE(st.st_mode))
    return out


def tree_diff(before: dict, after: dict) -> list[str]:
    """Paths created, changed or removed between two `tree` snapshots."""
    return sorted([f"+{p}" for p in after.keys() - before.keys()] + [f"-{p}" for p in before.keys() - after.keys()]
                  + [f"~{p}" for p in before.keys() & after.keys() if before[p] != after[p]])


def assert_one_line_error(exit_code: int, stderr: str, message: str = "") -> None:
    """A refused command: non-zero exit, one line on stderr naming the problem, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code not in (0, None), f"exit 0 for a refused command; stderr: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one message line, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    assert message.lower() in lines[0].lower(), f"{message!r} not in {lines[0]!r}"
