"""Running out of disk: recognised, answered, and survived.

A write that fails with ENOSPC or EDQUOT (`is_disk_full`) is not a broken disk:
the component rolls back what it half wrote, answers the call with `DiskFull`
(RESOURCE_EXHAUSTED, built by `disk_full_error`: which data directory, how many
bytes are free, what was not written), and takes the same call again once space
is back, with no restart. What each component rolls back and retries is said
where it writes: walservice/wal_storage.py ("Out of disk space"),
walservice/timelines.py, pageserver/timeline.py ("Disk full").

`DiskSpaceWatch` (one per process) is the log's view of an outage, one line at
each edge: `event=disk_full level=warn dir=... free_bytes=... what=...` on the
first failure, and `event=disk_space_back level=info dir=... free_bytes=...
disk_full_errors=N` (how many writes failed meanwhile) on the first write that
succeeds after it. Operators alert on the first and clear on the second.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from strata.errors import DiskFull
from strata.logs import EventLogger

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is an out-of-space OSError."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use under `directory` (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_error(component: str, directory: Path, what: str, exc: BaseException) -> DiskFull:
    """The RESOURCE_EXHAUSTED answer for a write under `directory` that ran out
    of space: `what` says what was not written (and so what to retry)."""
    free = free_bytes(directory)
    reason = getattr(exc, "strerror", None) or str(exc)
    return DiskFull(
        f"{component} data dir {directory} is full: {'unknown' if free is None else free} bytes free; {what} "
        f"({reason}); retry once space is freed"
    )


class DiskSpaceWatch:
    """One process's disk-full state, for its `disk_full` / `disk_space_back` lines.

    `failed` and `succeeded` may be called from any thread (writes run on
    executors); `_lock` guards `_failures`."""

    def __init__(self, log: EventLogger, directory: Path) -> None:
        self.log = log
        self.directory = directory
        self._lock = threading.Lock()
        self._failures = 0  # writes that failed for want of space since the last success

    @property
    def full(self) -> bool:
        return self._failures > 0

    def still_full(self, min_free_bytes: int) -> bool:
        """Whether the last write here ran out of space and fewer than
        `min_free_bytes` are free now (a cheap statvfs: no write needed to learn
        that space is back)."""
        if not self.full:
            return False
        free = free_bytes(self.directory)
        return free is not None and free < min_free_bytes

    def failed(self, what: str, exc: BaseException, **fields: object) -> None:
        with self._lock:
            self._failures += 1
            first = self._failures == 1
        if first:
            self.log.warning(
                "disk_full", dir=self.directory, free_bytes=free_bytes(self.directory), what=what,
                error=getattr(exc, "strerror", None) or exc, **fields,
            )

    def succeeded(self) -> None:
        """A write went through: the outage (if any) is over."""
        if not self._failures:
            return
        with self._lock:
            failures, self._failures = self._failures, 0
        if failures:
            self.log.info("disk_space_back", dir=self.directory, free_bytes=free_bytes(self.directory), disk_full_errors=failures)
