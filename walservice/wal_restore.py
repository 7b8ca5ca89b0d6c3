"""Reading offloaded WAL back from remote storage (walservice/offload.py puts it
there): repairing damaged local segments at start, and serving a Stream below
the oldest local segment.

DESIGN.md's contract: a damaged file is "fetched again from remote storage or a
peer, never served". The offloaded objects (keys in strata/remote_storage/layout.py)
are `<start_lsn:016x>.wal` (a sealed segment, whole) and `.wal.partial` (the open
segment's committed prefix, overwritten); when both exist the `.wal` wins. Every
download is checked against the checksum stored with the object, and every
frame used is checked again by its own (position-seeded) checksums.

Repair (`repair_segments`, in TimelineSet.load, before serving): a local segment
that fails its scan is rebuilt from its offloaded copy: the remote bytes, then
the local bytes past the end of the remote copy (the open segment may hold
commits newer than its last `.partial` upload). The rebuilt file is used only if
it scans further than the damaged one, written as a temp file, fsync'd, renamed
over the damaged one and the directory fsync'd, so a crash leaves the old or
the new file whole; recovery then checks it like any other. Logged as
`event=wal_segment_repaired` (level=warn) with the object it came from.

Serving (`read_frames`): a Stream that starts below the first local segment
(trimmed once offloaded and persisted by the pageserver) reads the offloaded
segments covering [after_lsn, first local start) and sends their frames; it
then goes on from the local segments.

Threads: everything here does blocking I/O and runs off the event loop (the
executor); an `OffloadedWal` holds no mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from strata.durable_file import write_durably
from strata.errors import CorruptionError
from strata.ids import TenantId, TimelineId
from strata.logs import EventLogger
from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.layout import parse_wal_name, wal_prefix
from walservice.segment import SEGMENT_HEADER_SIZE, Frame, SegmentFormatError, parse_segment_file_name, scan_segment


@dataclass(frozen=True)
class OffloadedSegment:
    start_lsn: int
    key: str
    size: int

    @property
    def end_lsn(self) -> int:
        return self.start_lsn + self.size - SEGMENT_HEADER_SIZE


class OffloadedWal:
    """A node's offloaded WAL in `storage` (at `location`, for messages)."""

    def __init__(self, storage: RemoteStorage, location: str) -> None:
        self.storage = storage
        self.location = location

    def segments(self, tenant_id: str, timeline_id: str) -> list[OffloadedSegment]:
        """The offloaded segments of a timeline, by start LSN (a `.wal` over its `.partial`)."""
        prefix = wal_prefix(TenantId(tenant_id), TimelineId(timeline_id))
        best: dict[int, tuple[bool, OffloadedSegment]] = {}
        for obj in self.storage.list(prefix):
            name = parse_wal_name(obj.key.removeprefix(prefix))
            if name is None:
                continue
            seen = best.get(name.start_lsn)
            if seen is None or (seen[0] and not name.partial):
                best[name.start_lsn] = (name.partial, OffloadedSegment(name.start_lsn, obj.key, obj.size))
        return [seg for _, (_, seg) in sorted(best.items())]

    def download(self, seg: OffloadedSegment) -> bytes:
        return self.storage.download_bytes(seg.key)

    # -- repair ------------------------------------------------------------------

    def repair_segments(self, directory: Path, tenant_id: str, timeline_id: str, log: EventLogger) -> int:
        """Rebuild every local segment of `directory` that fails its scan from its
        offloaded copy (see "Repair"); returns how many were replaced."""
        remote = {seg.start_lsn: seg for seg in self.segments(tenant_id, timeline_id)}
        repaired = 0
        for path in sorted(directory.iterdir()):
            start = parse_segment_file_name(path.name)
            if start is None or start not in remote:
                continue
            local = path.read_bytes()
            damaged_at = _scan_end(local)
            if damaged_at is None:
                continue
            seg = remote[start]
            copy = self.download(seg)
            rebuilt = copy + local[len(copy) :]
            rebuilt_end = _scan_end(rebuilt)
            if rebuilt_end is not None and rebuilt_end <= damaged_at:
                continue  # the damage lies past what was offloaded
            write_durably(path, rebuilt)
            repaired += 1
            log.warning(
                "wal_segment_repaired", tenant=tenant_id, timeline=timeline_id, segment=path.name,
                damaged_offset=damaged_at, source=f"{self.location}/{seg.key}",
            )
        return repaired

    # -- serving -----------------------------------------------------------------

    def covering(self, tenant_id: str, timeline_id: str, after_lsn: int, below_lsn: int) -> list[OffloadedSegment]:
        """The offloaded segments holding the records with after_lsn < LSN <=
        below_lsn (the first local segment's start), oldest first. CorruptionError
        when they do not reach `below_lsn` contiguously."""
        out: list[OffloadedSegment] = []
        expected: int | None = None
        for seg in self.segments(tenant_id, timeline_id):
            if seg.start_lsn >= below_lsn:
                break
            if seg.end_lsn > after_lsn:
                if expected is not None and seg.start_lsn != expected:
                    raise CorruptionError(f"offloaded WAL has a gap at lsn={expected}: {self.location}/{seg.key} starts at {seg.start_lsn}")
                out.append(seg)
            expected = seg.end_lsn
        if expected is None or expected < below_lsn or not out:
            raise CorruptionError(
                f"the offloaded WAL at {self.location} does not hold lsn={after_lsn}..{below_lsn} "
                f"(it ends at lsn={expected}): WAL below the first local segment is lost"
            )
        return out

    def frames(self, seg: OffloadedSegment, tenant_id: str, timeline_id: str, after_lsn: int) -> list[Frame]:
        """The frames of one offloaded segment with LSN > after_lsn, every one checked."""
        try:
            scan = scan_segment(self.download(seg))
        except SegmentFormatError as exc:
            raise CorruptionError(f"{self.location}/{seg.key}: {exc}") from exc
        h = scan.header
        if scan.problem is not None or (h.start_lsn, h.tenant_id, h.timeline_id) != (seg.start_lsn, tenant_id, timeline_id):
            raise CorruptionError(f"{self.location}/{seg.key}: not a whole segment of this timeline ({scan.problem})")
        return [f for f in scan.frames if f.lsn > after_lsn]


def _scan_end(data: bytes) -> int | None:
    """Where a segment's bytes stop scanning whole (None when all of it does)."""
    try:
        scan = scan_segment(data, keep_frames=False)
    except SegmentFormatError:
        return 0
    return None if scan.problem is None else scan.batch_end_offset

