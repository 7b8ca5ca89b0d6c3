"""A timeline's commit points: where each Append's batch ends (DESIGN.md, "Commit points").

The walservice marks the last record of each batch (`SequencedRecord.end_of_batch`,
from its segment frames' end-of-batch flag); the WAL receiver hands every record to
`CommitLog.record` and every batch end to `CommitLog.end_batch`. A read or a branch
at an LSN lands on the last commit at or below it (`last_at_or_below`), so nobody
sees half of a transaction.

Durability: the commits with `end_lsn <= disk_consistent_lsn` are stored in
index_part.json (`IndexPart.commits`, see index_part.py) with the layers that hold
their records, so they reach remote storage with them and survive a restart and an
attach on an empty disk. Commits above disk_consistent_lsn are re-learned when ingest
re-streams their records after a restart. A batch cut by a flush (its first records
at or below disk_consistent_lsn, its end above) is counted again from the records
re-streamed after a restart: its `records`/`bytes` then count only those (its
`start_lsn`, the previous commit's end, stays right).

GC drops commits below the GC cutoff except the newest one at or below it (it
still answers "the last commit at or below" for reads at the cutoff).

Timelines ingested before commit points existed (an index without `commits`):
every commit-time sample they kept (`IndexPart.commit_times`, each a batch end)
and their disk_consistent_lsn (the best known end: old ingest did not flush mid-
batch on purpose, but could) count as commits; `legacy_commits` builds them, with
records=0 and bytes=0. Their history between samples is coarser than the truth:
a read there rounds down further than needed (to a sample), not into a batch.

Concurrency: owned by the timeline's event loop (the WAL receiver appends; reads,
ListCommits and GC read or trim on the loop, with no await in between).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TypeVar

from strata.ids import Lsn


@dataclass(frozen=True)
class CommitPoint:
    """One batch: its last record's LSN (`end_lsn`), the WAL position it starts at
    (the previous commit's end), its commit time, and how many records and payload
    bytes it holds. Invariant: start_lsn < end_lsn."""

    end_lsn: Lsn
    start_lsn: Lsn
    time_us: int
    records: int
    bytes: int


def legacy_commits(samples: list[tuple[Lsn, int]], start_lsn: Lsn, disk_consistent_lsn: Lsn) -> list[CommitPoint]:
    """Commit points for an index written before they existed: each commit-time
    sample `(lsn, time_us)` above `start_lsn`, and `disk_consistent_lsn`."""
    out: list[CommitPoint] = []
    prev = start_lsn
    ends = [(lsn, t) for lsn, t in samples if start_lsn < lsn <= disk_consistent_lsn]
    if disk_consistent_lsn > start_lsn and (not ends or ends[-1][0] < disk_consistent_lsn):
        ends.append((disk_consistent_lsn, ends[-1][1] if ends else 0))
    for lsn, t in ends:
        out.append(CommitPoint(Lsn(lsn), Lsn(prev), t, 0, 0))
        prev = lsn
    return out


class CommitLog:
    """Every known commit point of one timeline, ascending by end_lsn, and the
    batch being ingested (records past the last commit, not yet ended)."""

    def __init__(self, commits: list[CommitPoint], last_end: Lsn) -> None:
        self.commits = commits
        # End LSNs of `commits`, for bisecting (kept in step with it).
        self._ends = [c.end_lsn for c in commits]
        # The previous commit's end: where the batch being ingested starts.
        self._open_start = commits[-1].end_lsn if commits else last_end
        self._open_records = 0
        self._open_bytes = 0

    def record(self, payload_bytes: int) -> None:
        """One record of the batch being ingested."""
        self._open_records += 1
        self._open_bytes += payload_bytes

    def end_batch(self, end_lsn: Lsn, time_us: int) -> CommitPoint:
        """The batch being ingested ended at `end_lsn` (its last record's LSN)."""
        commit = CommitPoint(end_lsn, self._open_start, time_us, self._open_records, self._open_bytes)
        self.commits.append(commit)
        self._ends.append(end_lsn)
        self._open_start = end_lsn
        self._open_records = self._open_bytes = 0
        return commit

    def last_at_or_below(self, lsn: Lsn) -> CommitPoint | None:
        i = bisect.bisect_right(self._ends, lsn)
        return self.commits[i - 1] if i else None

    def first_above(self, lsn: Lsn) -> CommitPoint | None:
        i = bisect.bisect_right(self._ends, lsn)
        return self.commits[i] if i < len(self.commits) else None

    def durable(self, disk_consistent_lsn: Lsn) -> tuple[CommitPoint, ...]:
        """The commits whose records are all at or below disk_consistent_lsn (what the index stores)."""
        return tuple(self.commits[: bisect.bisect_right(self._ends, disk_consistent_lsn)])

    def in_range(self, start_lsn: Lsn, end_lsn: Lsn) -> list[CommitPoint]:
        """Commits with start_lsn <= end_lsn <= end_lsn (0: no bound), ascending."""
        lo = bisect.bisect_left(self._ends, start_lsn)
        hi = bisect.bisect_right(self._ends, end_lsn) if end_lsn else len(self._ends)
        return self.commits[lo:hi]

    def gc(self, cutoff: Lsn) -> None:
        """Drop the commits below `cutoff` but the newest at or below it."""
        i = bisect.bisect_right(self._ends, cutoff)
        if i > 1:
            del self.commits[: i - 1]
            del self._ends[: i - 1]


# Commit time samples kept per timeline (memory and index_part.json): past
# twice this many the older half is thinned to every other sample, so the
# samples always span the whole retained history, coarser for older times.
MAX_COMMIT_SAMPLES = 4096


Sample = TypeVar("Sample")


def thin_commit_times(times: list[Sample], limit: int = MAX_COMMIT_SAMPLES) -> list[Sample]:
    """Every other sample of the older half once there are more than 2 * limit
    (the first and the newest half are always kept)."""
    if len(times) <= 2 * limit:
        return times
    half = len(times) // 2
    return times[:half:2] + times[half:]
