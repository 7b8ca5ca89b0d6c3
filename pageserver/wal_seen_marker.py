"""`wal_seen.json`: a timeline's durable note that it has taken WAL from the
walservice, written once, before the first record past its start is applied.

Why: until its first layer flush a timeline's durable state says nothing past
its start (`disk_consistent_lsn == start_lsn`), so after a SIGKILL it could not
tell "the walservice never had WAL for me" (a crash between the two halves of
CreateTimeline: registering it again loses nothing) from "I ingested WAL that
the walservice has since lost" (registering it again would re-create it empty
and hand the LSNs already served to other records). The marker tells them
apart (pageserver/ingest.py, NOT_FOUND). It is local only: a pageserver
attached on an empty disk has neither the marker nor the unflushed WAL.

Layout (strata/checksummed_json.py: `format_version`, xxhash64 `checksum`):
`{"first_lsn": N, "seen_at_us": T}`: the LSN of the first record taken and
when (microseconds since the epoch). Written with write_durably (temp file,
fsync, rename, directory fsync).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from strata import checksummed_json
from strata.durable_file import write_durably
from strata.ids import Lsn

FILE_NAME = "wal_seen.json"
FORMAT_VERSION = 1
_FIELDS = {"first_lsn", "seen_at_us"}


@dataclass(frozen=True)
class WalSeenMarker:
    first_lsn: Lsn
    seen_at_us: int

    def encode(self) -> bytes:
        return checksummed_json.encode({"first_lsn": self.first_lsn, "seen_at_us": self.seen_at_us}, FORMAT_VERSION)

    @classmethod
    def decode(cls, data: bytes, where: str) -> WalSeenMarker:
        body = checksummed_json.decode(data, where, FORMAT_VERSION)
        checksummed_json.check_fields(body, _FIELDS, where, required=_FIELDS)
        checksummed_json.check_ints(body, where, {"first_lsn": (0, 2**63 - 1), "seen_at_us": (0, 2**63 - 1)})
        return cls(Lsn(body["first_lsn"]), body["seen_at_us"])


def has_seen_wal(timeline_dir: Path) -> bool:
    """Whether the timeline in `timeline_dir` ever took WAL (a damaged marker
    counts as taken: it was being written because WAL arrived)."""
    return (timeline_dir / FILE_NAME).exists()


def mark_wal_seen(timeline_dir: Path, first_lsn: Lsn) -> None:
    """Record durably that the timeline takes WAL from `first_lsn` on (blocking: run on an executor)."""
    write_durably(timeline_dir / FILE_NAME, WalSeenMarker(first_lsn, time.time_ns() // 1000).encode())
