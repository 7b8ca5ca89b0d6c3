"""One timeline's WAL on local disk: segment files, recovery, writes, reads.

Layout: `<timeline dir>/<start_lsn:016x>.wal`, one file per segment (format in
segment.py). The last segment is the open one; a new segment is started once the
open one has reached `segment_bytes` (at a batch boundary: batches never span
segments).

Crash consistency:
- a new segment is written as a header in a temp file, fsync'd, renamed into
  place and the directory fsync'd, so a segment file always has a whole header;
- appends are one pwrite of whole frames followed by fdatasync; the caller
  acknowledges nothing before `write_and_sync` returns;
- `recover` checks every segment on start and cuts a torn tail of the last one
  back to its last whole batch (nothing acknowledged can be there: it was never
  fsync'd), logging what it cut; any other damage raises CorruptionError.
- Never below the floor: a "torn tail" that starts below the control file's
  `recovery_floor` (floor_lsn: WAL sent to a reader or acknowledged; commit_lsn,
  backup_lsn, remote_consistent_lsn) is damage to WAL that was durable and seen,
  not a torn write: `DamagedBelowFloor` (DATA_LOSS), and nothing is cut, so the
  LSNs it held are never handed out again.

Out of disk space (ENOSPC, EDQUOT; strata/disk_space.py): a write that runs out
of space is rolled back before `write_and_sync` raises `DiskFull`
(RESOURCE_EXHAUSTED): the open segment is cut back to its last whole batch (the
`end_lsn` the loop knows, never what the file's size says) and that cut is
fsync'd; a segment the write had just started is deleted. Nothing of the batch
is acknowledged, and neither recovery nor the next append can misread it: the
next write starts at the same position, on a fresh descriptor, and writes its
bytes anew (after a failed fsync the page cache's state is unknown, so, as
PostgreSQL learnt in "fsyncgate", nothing is retried as if it were durable).
The timeline keeps serving and takes the next append once space is back. If the
rollback itself fails, the error is raised as it is and the timeline stops
(recovery at the next start cuts the torn tail).

Preallocation and recycling (as PostgreSQL does with its WAL files): an fdatasync
that extends a file must also commit the file's new size and blocks (0.3-0.45 ms
here), one that overwrites allocated blocks only the data (~0.1 ms). So with
`preallocate` (the walservice's default) the open segment's file runs ahead of its
frames with zeros: a write that would pass the file's end first writes zeros up to
`PREALLOCATE_STEP` past it (at most to `segment_bytes` past the header), and the
commit's one fdatasync covers both; the next commits overwrite allocated zeros
(one extending fdatasync per step of WAL, not one per commit). A timeline that is
never written keeps a header-only file. Zeros are not a valid frame (segment.py),
so recovery reads a zero run to the end of the file as the clean end of the WAL.
When a segment is sealed (the write that starts the next one), its file is first
cut back to its last frame and that cut fsync'd, so a sealed segment is exactly
its frames (what offload uploads and recovery requires), and only then is the
next one created: a crash in between leaves a sealed file that is whole.
Recycling: a trimmed segment's file is not deleted but renamed to `SPARE_NAME`
(one spare per timeline); the next segment is made from it by overwriting its
header in place (fdatasync) and renaming it, so its blocks stay allocated. Its old
frames stay behind the new header: all were written at positions below the new
segment's start (a spare is taken only when its old end is at or below the new
start; trimmed WAL is below remote_consistent_lsn, which no later write goes
under), and every frame's checksums are seeded with its position, so none of
them validates at its new place: recovery reads them as a torn tail and wipes it.
WAL cut by a follower (`truncate_to`) is deleted, never recycled: those positions
are written again.
Recovery of a torn tail with `preallocate` wipes it (zeros written over its
non-zero bytes, fsync'd, the blocks kept) instead of truncating the file; without
it (`preallocate=False`) the file is truncated. Segments written before
preallocation existed (each file ends at its last frame) read as they always did.

Trimming (walservice/offload.py): once a sealed segment is offloaded to remote
storage and the pageserver's remote_consistent_lsn has passed its end, it is
detached from `segments` (`detach_segments_below`, on the loop) and its file
deleted (`delete_segment_files`, oldest first, so a crash leaves a contiguous
suffix). The open (last) segment is never trimmed. Recovery accepts a first
segment above the timeline's start_lsn when it is at or below
min(backup_lsn, remote_consistent_lsn) of the control file (what trimming may
have removed); a gap anywhere else is corruption. A read below the first local
segment raises `WalTrimmed` (OUT_OF_RANGE, naming the oldest LSN held and where
the offloaded WAL is); the sequencer's Stream catches it and serves that range
from the offloaded copy (walservice/wal_restore.py).

Threads: `write_and_sync` runs on a flush thread, at most one call at a time per
timeline (the sequencer guarantees it), and is the only code that writes through
the open segment's file descriptor. That descriptor stays open between writes in
a node-wide LRU of bounded size (walservice/open_segments.py), so the number of
open files does not grow with the number of timelines written since start. `segments` is owned by the event loop: appended
to in place (`committed`) after a write returned, and replaced by a shorter
copy when trimmed (`detach_segments_below`), never shortened in place, so a
reader thread holding the list sees whole entries. `WalCursor.read` runs on
reader threads, finds its segment by LSN in the current list each step, and
only reads bytes below the commit LSN it is given.
"""

from __future__ import annotations

import bisect
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strata.disk_space import disk_full_error, is_disk_full
from strata.durable_file import fsync_dir, write_durably
from strata.errors import CorruptionError, FailedPrecondition, OutOfRange
from strata.ids import Lsn
from strata.logs import EventLogger
from walservice.control_file import TimelineControl
from walservice.open_segments import OpenSegmentFiles
from walservice.segment import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Frame,
    SegmentFormatError,
    SegmentHeader,
    iter_frames,
    parse_segment_file_name,
    scan_segment,
    segment_file_name,
)

if TYPE_CHECKING:
    from walservice.wal_restore import OffloadedWal

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
# A trimmed segment's file kept for the next segment (see "Preallocation and recycling").
SPARE_NAME = "recycled.wal.spare"
PREALLOCATE_STEP = 256 * 1024  # zeros written ahead of the open segment's frames at a time
_ZEROS = bytes(1 << 20)  # written in pieces of this size when preallocating or wiping


class MissingWal(CorruptionError):
    """Segment files are missing (a gap, or the first one above what trimming may
    have removed): the WAL lost data, as opposed to damaged bytes."""


class DamagedBelowFloor(MissingWal):
    """The last segment is damaged below the recovery floor: WAL that was
    acknowledged or served is unreadable. Lost like missing WAL (a cluster node
    restores it from its peers), never cut as a torn tail."""


@dataclass
class SegmentInfo:
    """A segment file holding WAL positions [start_lsn, end_lsn)."""

    start_lsn: int
    path: Path
    end_lsn: int  # just past the last durable frame; grows only for the open segment


@dataclass(frozen=True)
class RecoveryReport:
    segments: int
    records: int
    end_lsn: int
    truncated_bytes: int
    truncated_reason: str | None
    first_lsn: int = 0  # the first local segment's start (above start_lsn once trimmed)


class ReaderAhead(FailedPrecondition):
    """A reader asks for WAL after an LSN past the end of this single node's WAL:
    the reader holds records this WAL does not. Its copy of the timeline must stop."""


class WalTrimmed(OutOfRange):
    """A read below the first local segment: that WAL was offloaded and trimmed."""


class TimelineWal:
    def __init__(
        self,
        directory: Path,
        control: TimelineControl,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        open_files: OpenSegmentFiles | None = None,
        *,
        preallocate: bool = False,
    ) -> None:
        self.directory = directory
        # Keep zeros written ahead of the open segment's frames and recycle trimmed
        # segments (module doc, "Preallocation and recycling").
        self.preallocate = preallocate
        # (path, size) of the open segment's file as last known; flush thread only.
        self._allocated: tuple[Path, int] | None = None
        self.control = control
        self.segment_bytes = segment_bytes
        # Owned by the event loop; see "Threads" above for how readers share it.
        self.segments: list[SegmentInfo] = []
        # The open segment's write descriptor, kept between writes (one of the node's LRU).
        self.open_files = open_files if open_files is not None else OpenSegmentFiles(1)
        # Where offloaded WAL lives (for error messages); set by the offloader on the loop.
        self.offload_location: str | None = None
        # The offloaded copy, read back below the first local segment (set by TimelineSet).
        self.offloaded: OffloadedWal | None = None

    # -- creation and recovery ------------------------------------------------

    def segment_header(self, start_lsn: int) -> SegmentHeader:
        c = self.control
        return SegmentHeader(start_lsn, c.tenant_id, c.timeline_id, c.page_size)

    def create_segment_file(self, start_lsn: int) -> Path:
        """Durably create an empty segment starting at `start_lsn` (on a failure
        the temp file is removed, so a full disk keeps no half-made header).
        Preallocating: made from the spare when there is a fitting one (its blocks
        already allocated; writes fill in zeros ahead otherwise, see `write_and_sync`)."""
        path = self.directory / segment_file_name(start_lsn)
        tmp = path.with_name(path.name + ".tmp")
        header = self.segment_header(start_lsn).encode()
        if not (self.preallocate and self._take_spare(start_lsn, tmp)):
            write_durably(path, header)  # (through `tmp`, removed on a failure)
            return path
        with open(tmp, "r+b") as f:
            f.write(header)
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.directory)
        return path

    def _take_spare(self, start_lsn: int, tmp: Path) -> bool:
        """Move the spare to `tmp` if its frames all lie below `start_lsn` (so none
        can validate in the new segment); a spare that does not fit is deleted."""
        spare = self.directory / SPARE_NAME
        try:
            with open(spare, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                old = SegmentHeader.decode(f.read(SEGMENT_HEADER_SIZE))
        except FileNotFoundError:
            return False
        except SegmentFormatError:
            old = None
        if old is None or old.start_lsn + size - SEGMENT_HEADER_SIZE > start_lsn or size < SEGMENT_HEADER_SIZE + self.segment_bytes:
            spare.unlink(missing_ok=True)
            return False
        os.replace(spare, tmp)
        return True

    def recover(self, log: EventLogger) -> RecoveryReport:
        """Check every segment; cut a torn tail; raise CorruptionError on other damage."""
        c = self.control
        ctx = f"tenant={c.tenant_id} timeline={c.timeline_id}"
        for leftover in self.directory.glob("*.wal.tmp"):
            leftover.unlink()
        starts = sorted(
            s for s in (parse_segment_file_name(p.name) for p in self.directory.iterdir()) if s is not None
        )
        if not starts:
            self.create_segment_file(c.start_lsn)
            starts = [c.start_lsn]
        self._check_first_segment(starts[0], ctx)
        records = 0
        truncated, reason = 0, None
        expected_start = starts[0]
        for i, start in enumerate(starts):
            path = self.directory / segment_file_name(start)
            last = i == len(starts) - 1
            data = path.read_bytes()
            try:
                scan = scan_segment(data, keep_frames=False)
            except SegmentFormatError as exc:
                raise CorruptionError(f"{ctx} segment={path.name}: {exc}") from exc
            h = scan.header
            if (h.start_lsn, h.tenant_id, h.timeline_id, h.page_size) != (start, c.tenant_id, c.timeline_id, c.page_size):
                raise CorruptionError(f"{ctx} segment={path.name}: header {h} does not belong here")
            if start != expected_start:
                raise MissingWal(
                    f"{ctx} segment={path.name}: starts at lsn={start} but the previous segment ends at lsn={expected_start}"
                )
            if scan.problem is not None and (not last or scan.corrupt_before_tail):
                raise CorruptionError(
                    f"{ctx} segment={path.name} offset={scan.problem_offset}: {scan.problem}, "
                    f"with whole records after it: the WAL is damaged before its tail"
                )
            if scan.torn_bytes and scan.end_lsn < c.recovery_floor:
                raise DamagedBelowFloor(
                    f"{ctx} segment={path.name} offset={scan.problem_offset}: {scan.problem} at lsn={scan.end_lsn}, "
                    f"below the recovery floor lsn={c.recovery_floor} (WAL acknowledged or sent to a reader): "
                    "the WAL is damaged, not torn; nothing was cut"
                )
            if scan.torn_bytes:
                # (With preallocation only the non-zero bytes are wiped; the zeros after them stay.)
                truncated = scan.used_len - scan.batch_end_offset if self.preallocate else scan.torn_bytes
                reason = scan.problem
                with open(path, "r+b") as f:
                    if self.preallocate:
                        # A preallocated segment: wipe the tail, keep its blocks allocated.
                        _write_zeros(f.fileno(), scan.batch_end_offset, scan.used_len)
                    else:
                        f.truncate(scan.batch_end_offset)
                    f.flush()
                    os.fsync(f.fileno())
                log.warning(
                    "wal_tail_truncated",
                    tenant=c.tenant_id,
                    timeline=c.timeline_id,
                    segment=path.name,
                    lsn=scan.end_lsn,
                    cut_bytes=truncated,
                    reason=reason,
                )
            records += sum(1 for _ in iter_frames(memoryview(data)[: scan.batch_end_offset], SEGMENT_HEADER_SIZE, start, scan.end_lsn))
            self.segments.append(SegmentInfo(start, path, scan.end_lsn))
            expected_start = scan.end_lsn
        return RecoveryReport(len(starts), records, self.end_lsn, truncated, reason, starts[0])

    def _check_first_segment(self, first_start: int, ctx: str) -> None:
        """The first segment starts at start_lsn, or above it only where trimming
        could have removed what is below (offloaded and persisted by the pageserver)."""
        c = self.control
        trim_horizon = min(c.backup_lsn, c.remote_consistent_lsn)
        if first_start < c.start_lsn or (first_start > c.start_lsn and first_start > trim_horizon):
            raise MissingWal(
                f"{ctx}: the first WAL segment starts at lsn={first_start}, but the timeline starts at "
                f"lsn={c.start_lsn} and only WAL below min(backup_lsn, remote_consistent_lsn)={trim_horizon} "
                "may have been trimmed: segments are missing"
            )

    @property
    def end_lsn(self) -> Lsn:
        return Lsn(self.segments[-1].end_lsn)

    # -- writing (flush thread) -------------------------------------------------

    def needs_new_segment(self) -> bool:
        seg = self.segments[-1]
        return seg.end_lsn - seg.start_lsn >= self.segment_bytes

    def write_and_sync(self, data: bytes, new_segment_at: int | None, what: str = "the append was not written") -> None:
        """Append whole frames to the open segment (or to a new one starting at
        `new_segment_at`) and fdatasync. Out of space: rolled back, then
        `DiskFull` (see "Out of disk space"; `what` ends its message). Any other
        OSError: nothing may be acknowledged and the caller stops the timeline."""
        if new_segment_at is not None:
            self.close()
            offset = SEGMENT_HEADER_SIZE
            try:
                self._seal_open_segment()
                path = self.create_segment_file(new_segment_at)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._roll_back(self.directory / segment_file_name(new_segment_at), None, exc)
                raise disk_full_error("walservice", self.directory, what, exc) from exc
        else:
            seg = self.segments[-1]  # (appended to only on the loop after this returns)
            path, offset = seg.path, SEGMENT_HEADER_SIZE + seg.end_lsn - seg.start_lsn
        valid_end = offset
        fd = self.open_files.checkout(self, path)
        try:
            if self.preallocate:
                self._preallocate(fd, path, offset + len(data))
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
            os.fdatasync(fd)
        except BaseException as exc:
            os.close(fd)
            self._allocated = None
            if isinstance(exc, OSError) and is_disk_full(exc):
                self._roll_back(path, None if new_segment_at is not None else valid_end, exc)
                raise disk_full_error("walservice", self.directory, what, exc) from exc
            raise
        self.open_files.give_back(self, path, fd)

    def _preallocate(self, fd: int, path: Path, end: int) -> None:
        """Make the open segment's file reach past `end` (a file offset) with zeros,
        a `PREALLOCATE_STEP` at a time; synced by the write's own fdatasync."""
        if self._allocated is None or self._allocated[0] != path:
            self._allocated = (path, os.fstat(fd).st_size)
        size = self._allocated[1]
        if end <= size:
            return
        target = max(end, min(end + PREALLOCATE_STEP, SEGMENT_HEADER_SIZE + self.segment_bytes))
        try:
            _write_zeros(fd, size, target)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # No room to run ahead: give the zeros back and write the frames alone.
            os.ftruncate(fd, size)
            return
        self._allocated = (path, target)

    def _seal_open_segment(self) -> None:
        """Cut the open segment's file back to its last frame (its preallocated
        zeros or recycled tail), fsync'd, before the next segment is created."""
        if not self.segments:
            return
        seg = self.segments[-1]
        size = SEGMENT_HEADER_SIZE + seg.end_lsn - seg.start_lsn
        with open(seg.path, "r+b") as f:
            if os.fstat(f.fileno()).st_size > size:
                f.truncate(size)
                os.fsync(f.fileno())

    def _roll_back(self, path: Path, valid_end: int | None, exc: OSError) -> None:
        """Undo a write that ran out of space: cut `path` back to `valid_end` bytes
        and fsync the cut, or (None) delete the segment it had just created.
        Raises the original error when the rollback fails (the timeline stops)."""
        try:
            if valid_end is None:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".tmp").unlink(missing_ok=True)
                fsync_dir(self.directory)
                return
            with open(path, "r+b") as f:
                f.truncate(valid_end)
                os.fsync(f.fileno())
        except OSError as rollback_exc:
            raise OSError(  # EIO, not ENOSPC: the file is not known to be whole, so the timeline stops
                errno.EIO, f"{exc.strerror}; and rolling back {path.name} to {valid_end} bytes failed: {rollback_exc}"
            ) from rollback_exc

    def committed(self, end_lsn: int, new_segment_at: int | None) -> None:
        """On the loop, after `write_and_sync` returned: make the bytes readable."""
        if new_segment_at is not None:
            self.segments.append(SegmentInfo(new_segment_at, self.directory / segment_file_name(new_segment_at), new_segment_at))
        self.segments[-1].end_lsn = end_lsn

    def close(self) -> None:
        self.open_files.discard(self)
        self._allocated = None

    def truncate_to(self, lsn: int) -> None:
        """Off the loop, under the timeline's `wal_lock` (replication: a follower cuts a
        divergent suffix; docs/design/0005-replication.md). Removes every WAL byte at or
        past position `lsn` (a batch boundary at or above the first local segment's
        start): later segments are deleted newest first, the one holding `lsn` is cut
        back, then the directory is fsync'd. The caller has already lowered its LSNs,
        and readers only read below commit_lsn <= lsn."""
        self.close()
        keep = [seg for seg in self.segments if seg.start_lsn < lsn or seg is self.segments[0]]
        for seg in reversed(self.segments[len(keep) :]):
            seg.path.unlink(missing_ok=True)
        last = keep[-1]
        with open(last.path, "r+b") as f:
            f.truncate(SEGMENT_HEADER_SIZE + lsn - last.start_lsn)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.directory)
        keep[-1] = SegmentInfo(last.start_lsn, last.path, lsn)
        self.segments = keep

    def starts_segment(self, lsn: int) -> bool:
        """Whether a local segment starts at `lsn` (safe on reader threads)."""
        return any(seg.start_lsn == lsn for seg in self.segments)

    def read_batches(self, start_lsn: int, limit_lsn: int, max_bytes: int) -> bytes:
        """Off the loop: the encoded frames of whole batches from WAL position
        `start_lsn` (a batch boundary) up to at most `limit_lsn`, about `max_bytes`
        (more when one batch is larger), within one segment; every frame is checked.
        What a leader sends a follower that is behind (replication)."""
        seg = self.segment_at(start_lsn)
        end = min(limit_lsn, seg.end_lsn)
        want = min(end - start_lsn, max_bytes)
        while True:
            data = WalCursor(self, seg.start_lsn, start_lsn)._pread(seg, start_lsn, want)
            cut = 0
            for offset, frame in _whole_frames(data, start_lsn, end):
                if frame.end_of_batch:
                    cut = offset
            if cut or want >= end - start_lsn:
                return data[:cut]
            want = min(end - start_lsn, want * 2)

    # -- trimming ----------------------------------------------------------------

    def detach_segments_below(self, horizon_lsn: int) -> list[SegmentInfo]:
        """On the loop: drop the sealed segments whose end_lsn <= horizon_lsn from
        `segments` (never the open one) and return them, oldest first, for
        `delete_segment_files`. Readers see the shorter list from now on."""
        sealed = self.segments[:-1]
        count = 0
        while count < len(sealed) and sealed[count].end_lsn <= horizon_lsn:
            count += 1
        if count == 0:
            return []
        detached = self.segments[:count]
        self.segments = self.segments[count:]
        return detached

    def delete_segment_files(self, detached: list[SegmentInfo]) -> None:
        """Off the loop: delete detached segments' files, oldest first (a crash
        leaves a contiguous suffix), then make the deletions durable."""
        spare = self.directory / SPARE_NAME
        for seg in detached:
            if self.preallocate and not spare.exists():
                os.replace(seg.path, spare)  # recycled for the next segment (module doc)
            else:
                seg.path.unlink(missing_ok=True)
        fsync_dir(self.directory)

    # -- reading ---------------------------------------------------------------

    def trimmed_error(self, lsn: int) -> WalTrimmed:
        c = self.control
        oldest = self.segments[0].start_lsn
        where = self.offload_location or "remote storage"
        return WalTrimmed(
            f"tenant={c.tenant_id} timeline={c.timeline_id}: WAL at lsn={lsn} is no longer held by this walservice: "
            f"the oldest LSN it holds is {oldest} (stream with start_lsn >= {oldest}); the WAL below it was "
            f"offloaded to {where} and trimmed once the pageserver persisted it"
        )

    def segment_at(self, position: int) -> SegmentInfo:
        """The segment holding WAL position `position` (the last one for its end);
        WalTrimmed below the first local segment. Safe on reader threads."""
        segments = self.segments  # one snapshot: trimming replaces the list, never edits it
        if position < segments[0].start_lsn:
            raise self.trimmed_error(position)
        index = bisect.bisect_right(segments, position, key=lambda s: s.start_lsn) - 1
        return segments[index]

    def cursor(self, after_lsn: int) -> WalCursor:
        """A cursor over records with LSN > after_lsn (WalTrimmed when some are trimmed)."""
        first = self.segments[0].start_lsn
        if after_lsn < first:
            if first > self.control.start_lsn:
                # The record with LSN == first lies in a trimmed segment (LSN = end of its frame).
                raise self.trimmed_error(after_lsn)
            return WalCursor(self, first, after_lsn)
        return WalCursor(self, self.segment_at(after_lsn).start_lsn, after_lsn)


# Past the byte budget, a read finishing a batch reads on in pieces of this size.
_FINISH_BATCH_READ_BYTES = 64 * 1024


class WalCursor:
    """Reads committed frames in LSN order, segment after segment.

    `position` is the WAL position of the next frame to read. Frames with LSN
    <= `skip_to` are read past and not returned (a stream may start mid-segment).
    """

    def __init__(self, wal: TimelineWal, position: int, skip_to: int) -> None:
        self.wal = wal
        self.position = position
        self.skip_to = skip_to

    def read(self, limit_lsn: int, max_bytes: int) -> list[Frame]:
        """Frames with LSN <= limit_lsn (a batch boundary): about `max_bytes` of
        them, and always up to a batch's end, so a reader that applies what one
        call returns never exposes part of an atomic Append (a batch never spans
        segments, so the loop ends within the segment it started a batch in)."""
        out: list[Frame] = []
        budget = max_bytes
        at_batch_end = True
        while self.position < limit_lsn and (budget > 0 or not at_batch_end):
            # Segments are contiguous, so the next segment starts where this one ends.
            seg = self.wal.segment_at(self.position)
            if self.position >= seg.end_lsn:
                break
            end = min(limit_lsn, seg.end_lsn)
            want = min(end - self.position, max(budget, _FINISH_BATCH_READ_BYTES))
            data = self._pread(seg, self.position, want)
            frames = list(_whole_frames(data, self.position, end))
            if not frames:
                # One frame bigger than the budget: read exactly that frame.
                head = self._pread(seg, self.position, FRAME_HEADER_SIZE)
                size = FRAME_HEADER_SIZE + int.from_bytes(head[:4], "little")
                frames = list(_whole_frames(self._pread(seg, self.position, size), self.position, end))
            for _, frame in frames:
                self.position = frame.lsn
                budget -= FRAME_HEADER_SIZE + len(frame.payload)
                at_batch_end = frame.end_of_batch
                if frame.lsn > self.skip_to:
                    out.append(frame)
                if budget <= 0 and at_batch_end:
                    break
        return out

    def _pread(self, seg: SegmentInfo, position: int, n: int) -> bytes:
        try:
            f = open(seg.path, "rb")
        except FileNotFoundError:
            if position < self.wal.segments[0].start_lsn:
                raise self.wal.trimmed_error(position) from None  # trimmed while we read
            raise
        with f:
            data = os.pread(f.fileno(), n, SEGMENT_HEADER_SIZE + position - seg.start_lsn)
        if len(data) != n:
            raise CorruptionError(f"segment={seg.path.name}: short read at lsn={position} ({len(data)} of {n} bytes)")
        return data


def _whole_frames(data: bytes, position: int, limit_lsn: int):
    """Frames wholly inside `data` (read from `position`); stops at a cut frame."""
    view = memoryview(data)
    offset = 0
    while len(view) - offset >= FRAME_HEADER_SIZE:
        n = int.from_bytes(view[offset : offset + 4], "little")
        if len(view) - offset < FRAME_HEADER_SIZE + n:
            return
        yield from iter_frames(view[: offset + FRAME_HEADER_SIZE + n], offset, position, limit_lsn)
        offset += FRAME_HEADER_SIZE + n
        position += FRAME_HEADER_SIZE + n


def _write_zeros(fd: int, start: int, end: int) -> None:
    """Write zeros over file bytes [start, end) (allocating them; not synced)."""
    while start < end:
        n = os.pwrite(fd, memoryview(_ZEROS)[: min(len(_ZEROS), end - start)], start)
        start += n
