"""Reads land on a commit: the LSN a read-only `connect_sqlite(..., lsn=N)` opens at.

An LSN between a commit's first and last record would show half of that
transaction (SQLite then reads a torn database: "database disk image is
malformed"). The pageserver knows every commit point (ListCommits,
pageserver/commit_log.py), so `commit_lsn_at_or_below` turns N into the end LSN
of the last commit at or below it: this timeline's own, or at or below its branch
point its ancestor's. N before the first retained commit (or below the GC
cutoff) is refused with `NoCommitAtLsn`, naming the nearest commits.

`read_lsn_of(db)` says at which LSN a connection opened read-only reads (None for
a read-write one): the rounded LSN, what a caller prints or branches at.
"""

from __future__ import annotations

import weakref

import apsw

from compute_shim.client import Client


class NoCommitAtLsn(ValueError):
    """No retained commit at or below the LSN asked for: nothing whole to read there."""


# connection -> the LSN it reads at (read-only connections only); guarded by the GIL
# (a WeakKeyDictionary's single get/set), entries go with their connection.
_read_lsns: weakref.WeakKeyDictionary[apsw.Connection, int] = weakref.WeakKeyDictionary()


def remember_read_lsn(db: apsw.Connection, lsn: int) -> None:
    _read_lsns[db] = lsn


def read_lsn_of(db: apsw.Connection) -> int | None:
    """The LSN a read-only connection from connect_sqlite reads at (None: read-write)."""
    return _read_lsns.get(db)


def commit_lsn_at_or_below(client: Client, tenant: str, timeline: str, lsn: int, gc_cutoff_lsn: int) -> int:
    """The end LSN of the last commit at or below `lsn` (which is > 0 and at most
    the timeline's end); NoCommitAtLsn when there is none at or above the GC cutoff."""
    if lsn < gc_cutoff_lsn:
        raise NoCommitAtLsn(
            f"tenant={tenant} timeline={timeline}: lsn={lsn} is below the GC cutoff {gc_cutoff_lsn}; "
            "only LSNs at or above it are retained"
        )
    ids = {"tenant_id": tenant, "timeline_id": timeline, "include_ancestors": True}
    below = client.list_commits(end_lsn=lsn, limit=1, newest_first=True, **ids).commits
    if below and below[0].end_lsn >= gc_cutoff_lsn:
        return below[0].end_lsn
    after = client.list_commits(start_lsn=lsn + 1, limit=1, **ids).commits
    nearest = [f"lsn={c.end_lsn}" for c in (*below, *after)]
    raise NoCommitAtLsn(
        f"tenant={tenant} timeline={timeline}: no commit at or below lsn={lsn} is readable"
        + (f" (the GC cutoff is {gc_cutoff_lsn})" if gc_cutoff_lsn else "")
        + ("; the nearest commits: " + ", ".join(nearest) if nearest else "; the timeline has no commit yet")
        + "; open at a commit's end LSN at or above the GC cutoff"
    )
