"""The WAL segment file format.

A timeline's WAL is a sequence of segment files `<start_lsn:016x>.wal`, each a
header and then frames. LSNs are byte positions in the timeline's WAL: the
segment starting at `start_lsn` holds positions start_lsn.. and a frame written
at position P with a payload of n bytes gives its record the LSN
P + FRAME_HEADER_SIZE + n (the position just past the frame), so LSNs strictly
increase and the next frame starts at the previous record's LSN.

Segment header (SEGMENT_HEADER_SIZE = 64 bytes, little-endian):

| offset | size | field                                          |
|--------|------|------------------------------------------------|
| 0      | 4    | magic b"SWAL"                                  |
| 4      | 1    | format version (FORMAT_VERSION = 1)            |
| 5      | 3    | reserved, zero                                 |
| 8      | 8    | start_lsn: the WAL position of the first frame |
| 16     | 16   | tenant id (raw bytes)                          |
| 32     | 16   | timeline id (raw bytes)                        |
| 48     | 4    | page size                                      |
| 52     | 4    | reserved, zero                                 |
| 56     | 8    | xxhash64 of bytes 0..56                        |

Frame (FRAME_HEADER_SIZE = 40 bytes, then the payload):

| offset | size | field                                                        |
|--------|------|--------------------------------------------------------------|
| 0      | 4    | payload length n                                             |
| 4      | 1    | flags: bit 0 = END_OF_BATCH (last record of an Append)       |
| 5      | 3    | reserved, zero                                               |
| 8      | 8    | term of the leader that sequenced the record                 |
| 16     | 8    | commit_time_us                                               |
| 24     | 8    | xxhash64(payload, seed=P)                                    |
| 32     | 8    | xxhash64(bytes 0..32, seed=P): the header's own checksum     |
| 40     | n    | payload: a serialized strata.v1.Record                       |

Both checksums are seeded with the frame's WAL position P, so bytes that are
whole but in the wrong place (a stale or shifted tail) do not validate.

Atomicity: a batch is a run of frames whose last one has END_OF_BATCH; a batch
never spans segments. Recovery keeps whole batches only.

Preallocated segments (walservice/wal_storage.py): a segment file may run on past
its last frame with zeros (space written ahead so a commit's fdatasync overwrites
allocated blocks) or with the stale frames of a recycled file's previous life.
Zeros are never a valid frame (an all-zero header fails its position-seeded
checksum), and a frame read at a position other than the one it was written at
fails its checksums, so neither passes for a record: a run of zeros to the end of
the data is a clean end (`SegmentScan.zero_tail`), and stale bytes read as a torn
tail that recovery wipes. The layout of the bytes is unchanged (FORMAT_VERSION 1):
segments written before preallocation (the file ends at its last frame) read the
same.

Torn tails (see `scan_segment`): a crash can cut the last write anywhere. In the
last segment, the first frame that is short or fails its checksum ends the log,
unless a valid frame follows it (right after it when its header is intact,
anywhere after it when the header is damaged): that is a corrupt record
*before* the tail, and `CorruptionError` stops the timeline. Non-last segments
must be whole: any bad frame there is corruption. (After a power loss a write
may persist out of order, leaving a valid frame behind a torn one; that is then
reported as corruption: loud, never silent, and nothing acknowledged is lost.)
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from strata.errors import CorruptionError

MAGIC = b"SWAL"
FORMAT_VERSION = 1

_SEGMENT_HEADER = struct.Struct("<4sB3xQ16s16sI4x")
_SEGMENT_CHECKSUM = struct.Struct("<Q")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size + _SEGMENT_CHECKSUM.size
assert SEGMENT_HEADER_SIZE == 64

_FRAME_HEADER = struct.Struct("<IB3xQQQ")
_FRAME_CHECKSUM = struct.Struct("<Q")
FRAME_HEADER_SIZE = _FRAME_HEADER.size + _FRAME_CHECKSUM.size
assert FRAME_HEADER_SIZE == 40

END_OF_BATCH = 0x01
MAX_PAYLOAD = (1 << 32) - 1


# xxh64(data, seed) as an int: bound directly (no wrapper), since encode_frame calls
# it twice per record on the walservice's event loop.
_xxh64 = xxhash.xxh64_intdigest


class SegmentFormatError(Exception):
    """A segment header that cannot be read (bad magic, version or checksum)."""


def segment_file_name(start_lsn: int) -> str:
    return f"{start_lsn:016x}.wal"


def parse_segment_file_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if ext != "wal" or len(stem) != 16:
        return None
    try:
        return int(stem, 16)
    except ValueError:
        return None


@dataclass(frozen=True)
class SegmentHeader:
    start_lsn: int
    tenant_id: str
    timeline_id: str
    page_size: int
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        body = _SEGMENT_HEADER.pack(
            MAGIC,
            self.version,
            self.start_lsn,
            bytes.fromhex(self.tenant_id),
            bytes.fromhex(self.timeline_id),
            self.page_size,
        )
        return body + _SEGMENT_CHECKSUM.pack(_xxh64(body, 0))

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        if len(data) < SEGMENT_HEADER_SIZE:
            raise SegmentFormatError(f"segment header is {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
        body = data[: _SEGMENT_HEADER.size]
        (checksum,) = _SEGMENT_CHECKSUM.unpack_from(data, _SEGMENT_HEADER.size)
        magic, version, start_lsn, tenant, timeline, page_size = _SEGMENT_HEADER.unpack(body)
        if magic != MAGIC:
            raise SegmentFormatError(f"bad segment magic {magic!r}, expected {MAGIC!r}")
        if _xxh64(body, 0) != checksum:
            raise SegmentFormatError("segment header checksum mismatch")
        if version != FORMAT_VERSION:
            raise SegmentFormatError(f"unsupported segment format version {version} (this build reads {FORMAT_VERSION})")
        return cls(start_lsn, tenant.hex(), timeline.hex(), page_size, version)


@dataclass(frozen=True)
class Frame:
    """One record as stored: `lsn` is the position just past the frame."""

    lsn: int
    term: int
    commit_time_us: int
    end_of_batch: bool
    payload: bytes


def encode_frame(position: int, payload: bytes, term: int, commit_time_us: int, end_of_batch: bool) -> bytes:
    """The bytes of one frame written at WAL position `position`."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError(f"record payload of {n} bytes exceeds {MAX_PAYLOAD}")
    head = _FRAME_HEADER.pack(n, END_OF_BATCH if end_of_batch else 0, term, commit_time_us, _xxh64(payload, position))
    return b"".join((head, _FRAME_CHECKSUM.pack(_xxh64(head, position)), payload))


def frame_lsn(position: int, payload_len: int) -> int:
    return position + FRAME_HEADER_SIZE + payload_len


@dataclass
class SegmentScan:
    """What `scan_segment` found in one segment's bytes.

    `batch_end_offset`: the file offset just past the last whole batch: everything
    from there on is the torn tail to cut. `problem`: why the scan stopped before
    the end of the data (None when every byte formed whole frames).
    `corrupt_before_tail`: a bad frame with valid frames after it.
    `zero_tail`: the data past the last whole batch is all zeros (a preallocated
    segment's unwritten space, or nothing at all): a clean end, not a torn tail.
    `used_len`: the offset just past the last non-zero byte at or after the last
    whole batch (what a torn tail's wipe must cover).
    """

    header: SegmentHeader
    frames: list[Frame]
    batch_end_offset: int
    data_len: int
    problem: str | None = None
    problem_offset: int | None = None
    corrupt_before_tail: bool = False
    zero_tail: bool = True
    used_len: int = 0

    @property
    def end_lsn(self) -> int:
        """The WAL position just past the last whole batch."""
        return self.header.start_lsn + self.batch_end_offset - SEGMENT_HEADER_SIZE

    @property
    def torn_bytes(self) -> int:
        """The bytes past the last whole batch, to cut (0 for a clean or zero-filled end)."""
        return 0 if self.zero_tail else self.data_len - self.batch_end_offset


@dataclass(frozen=True)
class _FrameCheck:
    frame: Frame | None
    size: int  # bytes the frame occupies when its header is intact, else 0
    problem: str | None


def _check_frame(data: bytes | memoryview, offset: int, position: int) -> _FrameCheck:
    if len(data) - offset < FRAME_HEADER_SIZE:
        return _FrameCheck(None, 0, f"short frame header ({len(data) - offset} of {FRAME_HEADER_SIZE} bytes)")
    head = data[offset : offset + _FRAME_HEADER.size]
    (head_sum,) = _FRAME_CHECKSUM.unpack_from(data, offset + _FRAME_HEADER.size)
    if _xxh64(head, position) != head_sum:
        return _FrameCheck(None, 0, "frame header checksum mismatch")
    n, flags, term, commit_time_us, payload_sum = _FRAME_HEADER.unpack(head)
    start = offset + FRAME_HEADER_SIZE
    if len(data) - start < n:
        return _FrameCheck(None, 0, f"short payload ({len(data) - start} of {n} bytes)")
    payload = bytes(data[start : start + n])
    if _xxh64(payload, position) != payload_sum:
        return _FrameCheck(None, FRAME_HEADER_SIZE + n, "payload checksum mismatch")
    frame = Frame(frame_lsn(position, n), term, commit_time_us, bool(flags & END_OF_BATCH), payload)
    return _FrameCheck(frame, FRAME_HEADER_SIZE + n, None)


_NONZERO = re.compile(rb"[^\x00]")
_RESERVED = b"\x00\x00\x00"  # bytes 5..8 of every frame header


def _valid_frame_after(view: memoryview, data: bytes, offset: int, start_lsn: int) -> bool:
    """Whether a whole, valid frame starts anywhere after `offset`.

    Candidates are offsets whose reserved bytes are zero, whose flags are 0 or 1
    and whose term is non-zero; each is then checked in full (the checksums are
    seeded with the candidate's position, so stray bytes do not pass). Runs of
    zeros are skipped in one step, so a zero-filled tail costs little."""
    pos = offset + 1
    end = len(data) - FRAME_HEADER_SIZE
    while pos <= end:
        i = data.find(_RESERVED, pos + 5)
        if i < 0:
            return False
        cand = i - 5
        if cand > end:
            return False
        if not any(data[cand + 8 : cand + 16]):
            found = _NONZERO.search(data, cand + 8)
            if found is None:
                return False
            pos = max(cand + 1, found.start() - 15)
            continue
        if data[cand + 4] <= END_OF_BATCH:
            check = _check_frame(view, cand, start_lsn + cand - SEGMENT_HEADER_SIZE)
            if check.frame is not None:
                return True
        pos = cand + 1
    return False


def scan_segment(data: bytes, *, keep_frames: bool = True) -> SegmentScan:
    """Check every frame of a segment's bytes (raises SegmentFormatError on a bad header)."""
    header = SegmentHeader.decode(data)
    view = memoryview(data)
    frames: list[Frame] = []
    pending: list[Frame] = []  # frames of the batch still open
    offset = SEGMENT_HEADER_SIZE
    batch_end = offset
    scan = SegmentScan(header, frames, batch_end, len(data))
    while offset < len(data):
        position = header.start_lsn + offset - SEGMENT_HEADER_SIZE
        check = _check_frame(view, offset, position)
        if check.frame is None:
            if not pending and _NONZERO.search(data, offset) is None:
                break  # zeros to the end: a preallocated segment's unwritten space
            scan.problem, scan.problem_offset = check.problem, offset
            if check.size:
                # The header is intact, so we know where the next frame starts: a valid
                # frame there means this is a damaged record, not a torn tail.
                nxt = offset + check.size
                if nxt < len(data):
                    follow = _check_frame(view, nxt, header.start_lsn + nxt - SEGMENT_HEADER_SIZE)
                    scan.corrupt_before_tail = follow.frame is not None
            elif len(data) - offset >= FRAME_HEADER_SIZE:
                # A damaged header hides where the next frame starts: search for any
                # whole frame further on. A torn write leaves none (only its own prefix).
                scan.corrupt_before_tail = _valid_frame_after(view, data, offset, header.start_lsn)
            break
        offset += check.size
        pending.append(check.frame)
        if check.frame.end_of_batch:
            if keep_frames:
                frames.extend(pending)
            pending.clear()
            batch_end = offset
    scan.batch_end_offset = batch_end
    scan.used_len = len(data.rstrip(b"\x00")) if batch_end < len(data) else len(data)
    scan.used_len = max(scan.used_len, batch_end)
    scan.zero_tail = scan.used_len == batch_end
    if scan.problem is None and not scan.zero_tail:
        scan.problem, scan.problem_offset = "batch without its END_OF_BATCH frame", batch_end
    return scan


def iter_frames(data: bytes | memoryview, offset: int, position: int, limit_lsn: int) -> Iterator[tuple[int, Frame]]:
    """Frames from `offset` (at WAL `position`) whose LSN is <= limit_lsn, with the
    offset just past each. Used on bytes already validated by recovery or written
    by this process; a frame that fails its checks here is corruption."""

    while offset < len(data):
        check = _check_frame(data, offset, position)
        if check.frame is None:
            raise CorruptionError(f"WAL frame at position={position} is damaged: {check.problem}")
        if check.frame.lsn > limit_lsn:
            return
        offset += check.size
        position = check.frame.lsn
        yield offset, check.frame
