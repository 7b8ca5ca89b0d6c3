"""Crash-safe file writes, shared by every component that keeps files.

The order that makes a write survive a crash at any step: write a temp file,
fsync it, rename it over the target (atomic on POSIX), fsync the directory so
the rename itself is durable. A crash leaves the old or the new file, whole;
a write that fails (out of space) leaves the old file and no temp file.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # (Out of space, say: the target is untouched, and no half-written temp file
        # is left to hold on to the space that is left.)
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
