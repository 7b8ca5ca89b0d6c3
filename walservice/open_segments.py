"""A bounded set of open segment file descriptors, shared by a node's timelines.

A timeline appends to its open segment through a file descriptor kept open
between writes (an open per append would cost a syscall pair per flush). Kept
forever, those descriptors grow with the number of timelines written since start
until the process runs out (`Too many open files`, and then CreateTimeline and
everything else that opens a file fails). So they live here, least recently used
first, at most `capacity` of them idle: taking one for a write removes it from
the set (it cannot be closed under the writer), giving it back puts it last and
closes the least recently used idle ones past `capacity`. A timeline holds at
most one (its open segment's); the next write of an evicted timeline reopens it.

Threads: `checkout` and `give_back` run on flush threads (each timeline's writes
are serialized by its sequencer, so one owner holds a timeline's descriptor at a
time); `discard` runs wherever the owner closes its files. `_lock` guards
`_idle`; no other lock is taken while holding it.
"""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from pathlib import Path

# The default bound: a quarter of the soft RLIMIT_NOFILE (the rest is for
# sockets, reads, control files, creations), at least 16 and at most 1024.
MIN_DEFAULT_CAPACITY = 16
MAX_DEFAULT_CAPACITY = 1024


def default_capacity() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CAPACITY
    return max(MIN_DEFAULT_CAPACITY, min(MAX_DEFAULT_CAPACITY, soft // 4))


class OpenSegmentFiles:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: at least one open segment file is needed")
        self.capacity = capacity
        self._lock = threading.Lock()
        # owner (a TimelineWal) -> (path, fd), least recently used first; guarded by _lock.
        self._idle: OrderedDict[object, tuple[Path, int]] = OrderedDict()

    def checkout(self, owner: object, path: Path) -> int:
        """A write descriptor of `path` for `owner`'s exclusive use until `give_back`:
        its idle one when it is for the same path, else a new one (closing the
        owner's stale one, and the least recently used idle one when full)."""
        with self._lock:
            entry = self._idle.pop(owner, None)
            if entry is not None and entry[0] == path:
                return entry[1]
            if entry is not None:
                os.close(entry[1])
            while len(self._idle) >= self.capacity:
                _, (_, fd) = self._idle.popitem(last=False)
                os.close(fd)
        return os.open(path, os.O_WRONLY)

    def give_back(self, owner: object, path: Path, fd: int) -> None:
        with self._lock:
            self._idle[owner] = (path, fd)
            while len(self._idle) > self.capacity:
                _, (_, old) = self._idle.popitem(last=False)
                os.close(old)

    def discard(self, owner: object) -> None:
        """Close `owner`'s idle descriptor, if any (its files are closed or cut)."""
        with self._lock:
            entry = self._idle.pop(owner, None)
        if entry is not None:
            os.close(entry[1])

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)
