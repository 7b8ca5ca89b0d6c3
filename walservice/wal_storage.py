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

Threads: `write_and_sync` runs on a flush thread, at most one call at a time per
timeline (the sequencer guarantees it), and is the only code that touches the
open segment's file descriptor. `segments` is mutated only on the event loop
(`committed`) after a write returned; `WalCursor.read` runs on reader threads
and only reads bytes below the commit LSN it is given.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

from strata.durable_file import fsync_dir
from strata.errors import CorruptionError
from strata.logs import EventLogger
from walservice.control_file import TimelineControl
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

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024


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


class TimelineWal:
    def __init__(self, directory: Path, control: TimelineControl, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.control = control
        self.segment_bytes = segment_bytes
        self.segments: list[SegmentInfo] = []
        self._fd: int | None = None  # the open segment, owned by the flush thread

    # -- creation and recovery ------------------------------------------------

    def _segment_header(self, start_lsn: int) -> SegmentHeader:
        c = self.control
        return SegmentHeader(start_lsn, c.tenant_id, c.timeline_id, c.page_size)

    def create_segment_file(self, start_lsn: int) -> Path:
        """Durably create an empty segment starting at `start_lsn`."""
        path = self.directory / segment_file_name(start_lsn)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(self._segment_header(start_lsn).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.directory)
        return path

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
                raise CorruptionError(
                    f"{ctx} segment={path.name}: starts at lsn={start} but the previous segment ends at lsn={expected_start}"
                )
            if scan.problem is not None and (not last or scan.corrupt_before_tail):
                raise CorruptionError(
                    f"{ctx} segment={path.name} offset={scan.problem_offset}: {scan.problem}, "
                    f"with whole records after it: the WAL is damaged before its tail"
                )
            if scan.torn_bytes:
                truncated, reason = scan.torn_bytes, scan.problem
                with open(path, "r+b") as f:
                    f.truncate(scan.batch_end_offset)
                    f.flush()
                    os.fsync(f.fileno())
                log.warning(
                    "wal_tail_truncated",
                    tenant=c.tenant_id,
                    timeline=c.timeline_id,
                    segment=path.name,
                    lsn=scan.end_lsn,
                    cut_bytes=scan.torn_bytes,
                    reason=reason,
                )
            records += sum(1 for _ in iter_frames(memoryview(data)[: scan.batch_end_offset], SEGMENT_HEADER_SIZE, start, scan.end_lsn))
            self.segments.append(SegmentInfo(start, path, scan.end_lsn))
            expected_start = scan.end_lsn
        return RecoveryReport(len(starts), records, self.end_lsn, truncated, reason)

    @property
    def end_lsn(self) -> int:
        return self.segments[-1].end_lsn

    # -- writing (flush thread) -------------------------------------------------

    def needs_new_segment(self) -> bool:
        seg = self.segments[-1]
        return seg.end_lsn - seg.start_lsn >= self.segment_bytes

    def write_and_sync(self, data: bytes, new_segment_at: int | None) -> None:
        """Append whole frames to the open segment (or to a new one starting at
        `new_segment_at`) and fdatasync. Raises OSError; then nothing may be
        acknowledged and the caller stops the timeline."""
        if new_segment_at is not None:
            self.close()
            path = self.create_segment_file(new_segment_at)
            self._fd = os.open(path, os.O_WRONLY)
        elif self._fd is None:
            self._fd = os.open(self.segments[-1].path, os.O_WRONLY)
        fd = self._fd
        offset = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        os.fdatasync(fd)

    def committed(self, end_lsn: int, new_segment_at: int | None) -> None:
        """On the loop, after `write_and_sync` returned: make the bytes readable."""
        if new_segment_at is not None:
            self.segments.append(SegmentInfo(new_segment_at, self.directory / segment_file_name(new_segment_at), new_segment_at))
        self.segments[-1].end_lsn = end_lsn

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading ---------------------------------------------------------------

    def cursor(self, after_lsn: int) -> WalCursor:
        """A cursor over records with LSN > after_lsn."""
        starts = [s.start_lsn for s in self.segments]
        index = max(0, bisect.bisect_right(starts, after_lsn) - 1)
        return WalCursor(self, index, self.segments[index].start_lsn, after_lsn)


class WalCursor:
    """Reads committed frames in LSN order, segment after segment.

    `position` is the WAL position of the next frame to read. Frames with LSN
    <= `skip_to` are read past and not returned (a stream may start mid-segment).
    """

    def __init__(self, wal: TimelineWal, segment_index: int, position: int, skip_to: int) -> None:
        self.wal = wal
        self.segment_index = segment_index
        self.position = position
        self.skip_to = skip_to

    def read(self, limit_lsn: int, max_bytes: int) -> list[Frame]:
        """Up to about `max_bytes` of frames with LSN <= limit_lsn (a frame boundary)."""
        out: list[Frame] = []
        budget = max_bytes
        while self.position < limit_lsn and budget > 0:
            seg = self.wal.segments[self.segment_index]
            if self.position >= seg.end_lsn:
                if self.segment_index + 1 >= len(self.wal.segments):
                    break
                self.segment_index += 1
                self.position = self.wal.segments[self.segment_index].start_lsn
                continue
            end = min(limit_lsn, seg.end_lsn)
            want = min(end - self.position, budget)
            data = self._pread(seg, self.position, want)
            got_any = False
            for offset, frame in _whole_frames(data, self.position, end):
                self.position = frame.lsn
                got_any = True
                budget -= FRAME_HEADER_SIZE + len(frame.payload)
                if frame.lsn > self.skip_to:
                    out.append(frame)
            if not got_any:
                # One frame bigger than the budget: read exactly that frame.
                head = self._pread(seg, self.position, FRAME_HEADER_SIZE)
                size = FRAME_HEADER_SIZE + int.from_bytes(head[:4], "little")
                data = self._pread(seg, self.position, size)
                for _, frame in _whole_frames(data, self.position, end):
                    self.position = frame.lsn
                    budget -= size
                    if frame.lsn > self.skip_to:
                        out.append(frame)
        return out

    @staticmethod
    def _pread(seg: SegmentInfo, position: int, n: int) -> bytes:
        with open(seg.path, "rb") as f:
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
