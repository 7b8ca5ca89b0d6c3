"""The per-timeline control file: `<timeline dir>/control`.

Holds what must survive a restart besides the WAL itself: the timeline's start
LSN and page size, the term state (kept from day one for replication: term 1 on a
single node), and the LSNs other components reported.

Layout (little-endian):

| offset | size | field                                   |
|--------|------|-----------------------------------------|
| 0      | 4    | magic b"SWCF"                           |
| 4      | 1    | format version (FORMAT_VERSION = 4)     |
| 5      | 3    | reserved, zero                          |
| 8      | 4    | body length n                           |
| 12     | 8    | xxhash64 of the body                    |
| 20     | n    | body: UTF-8 JSON of `TimelineControl`   |

Versions: 1 (single node) had no `voted_for` and `commit_lsn`; it is still read
(voted_for=0, commit_lsn=0: the caller then takes the recovered end on a single
node). Version 2 adds them for replication (docs/design/0005-replication.md).
Version 3 adds `catchup_lsn` (a node that lost WAL catches up before it votes or
serves); versions 1 and 2 are still read (catchup_lsn=None: not catching up).
Version 4 adds `floor_lsn` (recovery never cuts WAL below it: it was sent to a
reader or acknowledged); versions 1 to 3 are still read (floor_lsn=0: no floor
but commit_lsn, backup_lsn and remote_consistent_lsn).

Crash consistency: `write_control` writes `control.tmp`, fsyncs it, renames it
over `control` and fsyncs the directory, so a crash leaves the old or the new
file whole, never a mix.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash

from strata import ids
from strata.checksummed_json import check_ints
from strata.durable_file import write_durably
from strata.errors import CorruptionError
from strata.ids import Lsn, TenantId, Term, TimelineId
from walservice.term_history import TermHistory, history_from_json, history_to_json, last_log_term

MAGIC = b"SWCF"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
# voted_for: no vote yet in `term` / abstains in `term` (a node that lost its disk).
NO_VOTE = 0
ABSTAIN = -1
_HEADER = struct.Struct("<4sB3xIQ")
CONTROL_FILE_NAME = "control"
# Read back under the bounds CreateTimeline validated them with (CorruptionError past them).
_BOUNDS = {
    "start_lsn": (0, ids.MAX_START_LSN),
    "page_size": (ids.MIN_PAGE_SIZE, ids.MAX_PAGE_SIZE),
    **{name: (0, ids.MAX_U64) for name in ("term", "remote_consistent_lsn", "backup_lsn", "commit_lsn", "floor_lsn")},
}


@dataclass(frozen=True)
class TimelineControl:
    tenant_id: TenantId
    timeline_id: TimelineId
    start_lsn: Lsn
    page_size: int
    # The highest term this node has voted in or accepted appends under.
    term: Term = Term(1)
    # Oldest first: records with LSN > an entry's start_lsn (to the next entry's)
    # were sequenced in its term (walservice/term_history.py). Stored in the JSON
    # body as [[term, start_lsn], ...].
    term_history: TermHistory = ()
    remote_consistent_lsn: Lsn = Lsn(0)
    backup_lsn: Lsn = Lsn(0)
    # The node id this node voted for in `term` (NO_VOTE, ABSTAIN).
    voted_for: int = NO_VOTE
    # A lower bound of the cluster's commit_lsn (persisted lazily: at sync with a
    # leader, at each new segment, at shutdown). WAL recovered short of it was lost.
    commit_lsn: Lsn = Lsn(0)
    # None, or: this node lost WAL its peers hold (a wiped disk, deleted segments)
    # and neither votes nor serves until its log reaches this LSN and the
    # commit_lsn a leader sent it (docs/design/0005-replication.md, "Catch-up").
    catchup_lsn: Lsn | None = None
    # WAL below this LSN was streamed to a reader or acknowledged to a writer, so
    # recovery never cuts it as a torn tail: damage below it is DATA_LOSS (or, with
    # an offloaded copy, repaired). Raised before a Stream sends WAL past it, and in
    # the background after acknowledgements (walservice/sequencer.py, "Floor").
    floor_lsn: Lsn = Lsn(0)

    @property
    def recovery_floor(self) -> Lsn:
        """WAL below this LSN was durable and seen (floor_lsn, commit_lsn) or is
        counted on by others (backup_lsn, remote_consistent_lsn): recovery never
        cuts it, and WAL ending below it was lost."""
        return max(self.floor_lsn, self.commit_lsn, self.backup_lsn, self.remote_consistent_lsn)

    def last_log_term(self, flush_lsn: Lsn) -> Term:
        """The term of the last history entry starting at or below flush_lsn."""
        return last_log_term(self.term_history, flush_lsn)

    def encode(self) -> bytes:
        fields = asdict(self)
        fields["term_history"] = history_to_json(self.term_history)
        body = json.dumps(fields, sort_keys=True).encode()
        return _HEADER.pack(MAGIC, FORMAT_VERSION, len(body), xxhash.xxh64_intdigest(body)) + body

    @classmethod
    def decode(cls, data: bytes, where: str = "control file") -> TimelineControl:
        if len(data) < _HEADER.size:
            raise CorruptionError(f"{where}: {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
        magic, version, n, checksum = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CorruptionError(f"{where}: bad magic {magic!r}, expected {MAGIC!r}")
        if version not in READABLE_VERSIONS:
            raise CorruptionError(f"{where}: unsupported format version {version} (this build reads {READABLE_VERSIONS})")
        body = data[_HEADER.size : _HEADER.size + n]
        if len(body) != n or xxhash.xxh64_intdigest(body) != checksum:
            raise CorruptionError(f"{where}: body checksum mismatch")
        fields = json.loads(body)
        check_ints(fields, where, _BOUNDS)
        try:
            fields["term_history"] = history_from_json(fields.get("term_history", []))
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise CorruptionError(f"{where}: a field has the wrong shape: {exc}") from exc


def write_control(timeline_dir: Path, control: TimelineControl) -> None:
    write_durably(timeline_dir / CONTROL_FILE_NAME, control.encode())


def read_control(timeline_dir: Path) -> TimelineControl:
    path = timeline_dir / CONTROL_FILE_NAME
    return TimelineControl.decode(path.read_bytes(), where=str(path))
