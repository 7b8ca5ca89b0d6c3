"""The segment format (walservice/segment.py): headers, frames, and every shape of
torn tail `scan_segment` must cut back to the last whole batch."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import CorruptionError
from walservice.segment import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SegmentFormatError,
    SegmentHeader,
    encode_frame,
    frame_lsn,
    iter_frames,
    parse_segment_file_name,
    scan_segment,
    segment_file_name,
)

TENANT = "0123456789abcdef0123456789abcdef"
TIMELINE = "fedcba9876543210fedcba9876543210"
START_LSN = 4096


@dataclass(frozen=True)
class EncodedSegment:
    data: bytes
    start_lsn: int
    batch_ends: list[int]  # file offset just past each batch
    frame_offsets: list[int]  # file offset of each frame
    frame_lsns: list[int]


def encode_segment(batches: list[list[bytes]], start_lsn: int = START_LSN, term: int = 1) -> EncodedSegment:
    """A segment holding `batches` (lists of payloads), encoded the way the sequencer does."""
    data = bytearray(SegmentHeader(start_lsn, TENANT, TIMELINE, 8192).encode())
    batch_ends, frame_offsets, lsns = [], [], []
    for batch_no, payloads in enumerate(batches):
        for i, payload in enumerate(payloads):
            position = start_lsn + len(data) - SEGMENT_HEADER_SIZE
            frame_offsets.append(len(data))
            data += encode_frame(position, payload, term, 1_000_000 + batch_no, i == len(payloads) - 1)
            lsns.append(frame_lsn(position, len(payload)))
        batch_ends.append(len(data))
    return EncodedSegment(bytes(data), start_lsn, batch_ends, frame_offsets, lsns)


def flip_bit(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


# Three batches: 1, 3 and 2 records, payloads of different lengths.
BATCHES = [[b"alpha"], [b"b" * 17, b"", b"c" * 300], [b"delta" * 3, b"echo"]]
SEGMENT = encode_segment(BATCHES)
LAST_BATCH_START = SEGMENT.batch_ends[1]  # offset of the last batch's first frame
LAST_FRAME = SEGMENT.frame_offsets[-1]


def assert_cut_to(scan_data: bytes, batch_end: int) -> None:
    scan = scan_segment(scan_data)
    assert scan.batch_end_offset == batch_end
    assert scan.torn_bytes == len(scan_data) - batch_end
    assert scan.end_lsn == START_LSN + batch_end - SEGMENT_HEADER_SIZE
    assert scan.problem is not None
    assert not scan.corrupt_before_tail
    whole = [lsn for lsn, off in zip(SEGMENT.frame_lsns, SEGMENT.frame_offsets) if off < batch_end]
    assert [f.lsn for f in scan.frames] == whole


# -- whole segments -------------------------------------------------------------


def test_whole_segment_scans_every_frame() -> None:
    scan = scan_segment(SEGMENT.data)
    assert scan.problem is None and scan.problem_offset is None
    assert scan.batch_end_offset == len(SEGMENT.data) and scan.torn_bytes == 0
    assert [f.payload for f in scan.frames] == [p for batch in BATCHES for p in batch]
    assert [f.lsn for f in scan.frames] == SEGMENT.frame_lsns
    assert [f.end_of_batch for f in scan.frames] == [True, False, False, True, False, True]
    assert [f.commit_time_us for f in scan.frames] == [1_000_000, *[1_000_001] * 3, *[1_000_002] * 2]
    assert all(f.term == 1 for f in scan.frames)
    # LSNs are WAL positions: the next frame starts at the previous record's LSN.
    assert SEGMENT.frame_lsns[0] == START_LSN + FRAME_HEADER_SIZE + len(b"alpha")
    assert scan.end_lsn == SEGMENT.frame_lsns[-1] == START_LSN + len(SEGMENT.data) - SEGMENT_HEADER_SIZE


def test_empty_segment_is_whole() -> None:
    data = SegmentHeader(START_LSN, TENANT, TIMELINE, 8192).encode()
    scan = scan_segment(data)
    assert (scan.frames, scan.batch_end_offset, scan.problem, scan.end_lsn) == ([], SEGMENT_HEADER_SIZE, None, START_LSN)


def test_keep_frames_false_still_finds_the_end() -> None:
    scan = scan_segment(SEGMENT.data + b"\0" * 10, keep_frames=False)
    assert scan.frames == [] and scan.batch_end_offset == len(SEGMENT.data)


def test_segment_header_round_trip() -> None:
    header = SegmentHeader(START_LSN, TENANT, TIMELINE, 16384)
    encoded = header.encode()
    assert len(encoded) == SEGMENT_HEADER_SIZE
    assert SegmentHeader.decode(encoded) == header


def test_segment_file_names() -> None:
    assert segment_file_name(0x1234) == "0000000000001234.wal"
    assert parse_segment_file_name(segment_file_name(2**64 - 1)) == 2**64 - 1
    for other in ("control", "0000000000001234.wal.tmp", "1234.wal", "000000000000123g.wal", "0000000000001234.seg"):
        assert parse_segment_file_name(other) is None


# -- torn tails: each must be cut back to the last whole batch ---------------------


@pytest.mark.parametrize("header_bytes", range(1, FRAME_HEADER_SIZE))
def test_tail_with_a_truncated_frame_header(header_bytes: int) -> None:
    data = SEGMENT.data[: LAST_BATCH_START + header_bytes]
    assert_cut_to(data, LAST_BATCH_START)
    assert "short frame header" in scan_segment(data).problem


@pytest.mark.parametrize("header_bytes", [1, 8, 20, 39])
def test_truncated_header_of_a_later_frame_in_the_batch(header_bytes: int) -> None:
    assert_cut_to(SEGMENT.data[: LAST_FRAME + header_bytes], LAST_BATCH_START)


@pytest.mark.parametrize("payload_bytes", [0, 1, 7, 14])
def test_tail_with_a_truncated_payload(payload_bytes: int) -> None:
    # The last batch's first payload is 15 bytes; cut it short.
    data = SEGMENT.data[: LAST_BATCH_START + FRAME_HEADER_SIZE + payload_bytes]
    assert_cut_to(data, LAST_BATCH_START)
    assert "short payload" in scan_segment(data).problem


def test_truncated_payload_of_the_last_frame() -> None:
    assert_cut_to(SEGMENT.data[:-1], LAST_BATCH_START)


@pytest.mark.parametrize("zeros", [1, FRAME_HEADER_SIZE - 1, FRAME_HEADER_SIZE, 100, 8192])
def test_zero_filled_tail(zeros: int) -> None:
    """Zeros are never a frame: a zero run to the end is a clean end (a preallocated
    segment's unwritten space), with nothing to cut."""
    assert_clean_end(SEGMENT.data + b"\0" * zeros, len(SEGMENT.data))


def test_zero_filled_tail_over_a_torn_batch() -> None:
    # The file was extended but the last batch's pages never reached the disk.
    data = SEGMENT.data[:LAST_BATCH_START] + b"\0" * (len(SEGMENT.data) - LAST_BATCH_START)
    assert_clean_end(data, LAST_BATCH_START)


def test_zeros_after_part_of_a_batch_are_a_torn_tail() -> None:
    # Preallocated space after the first frame of a batch whose last frame never came.
    data = SEGMENT.data[:LAST_FRAME] + b"\0" * 4096
    assert_cut_to(data, LAST_BATCH_START)
    assert scan_segment(data).used_len == LAST_FRAME


def assert_clean_end(data: bytes, batch_end: int) -> None:
    scan = scan_segment(data)
    assert (scan.batch_end_offset, scan.torn_bytes, scan.problem, scan.zero_tail) == (batch_end, 0, None, True)
    assert not scan.corrupt_before_tail


@pytest.mark.parametrize("seed", range(5))
def test_random_garbage_tail(seed: int) -> None:
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.randint(1, 5000))
    assert_cut_to(SEGMENT.data + garbage, len(SEGMENT.data))
    assert_cut_to(SEGMENT.data[:LAST_FRAME] + garbage, LAST_BATCH_START)


def test_batch_without_its_end_of_batch_frame() -> None:
    # The first of the last batch's two frames made it, whole; the last did not.
    data = SEGMENT.data[:LAST_FRAME]
    scan = scan_segment(data)
    assert_cut_to(data, LAST_BATCH_START)
    assert scan.problem == "batch without its END_OF_BATCH frame"
    assert scan.problem_offset == LAST_BATCH_START
    # The middle batch (3 frames) cut after one and after two whole frames.
    for frames_kept in (1, 2):
        assert_cut_to(SEGMENT.data[: SEGMENT.frame_offsets[1 + frames_kept]], SEGMENT.batch_ends[0])


@pytest.mark.parametrize("payload_offset", [0, 1, 3])  # the last payload is b"echo"
def test_bit_flip_in_the_last_frame_payload(payload_offset: int) -> None:
    data = flip_bit(SEGMENT.data, LAST_FRAME + FRAME_HEADER_SIZE + payload_offset, bit=payload_offset % 8)
    assert_cut_to(data, LAST_BATCH_START)
    assert scan_segment(data).problem == "payload checksum mismatch"


@pytest.mark.parametrize("header_offset", [0, 3, 4, 5, 8, 15, 16, 24, 31, 32, 39])
def test_bit_flip_in_the_last_frame_header(header_offset: int) -> None:
    data = flip_bit(SEGMENT.data, LAST_FRAME + header_offset, bit=7)
    assert_cut_to(data, LAST_BATCH_START)
    assert scan_segment(data).problem == "frame header checksum mismatch"


def test_bit_flip_in_the_only_frame_of_the_last_batch() -> None:
    segment = encode_segment([[b"one"], [b"two"]])
    data = flip_bit(segment.data, segment.frame_offsets[1] + FRAME_HEADER_SIZE)
    scan = scan_segment(data)
    assert scan.batch_end_offset == segment.batch_ends[0] and not scan.corrupt_before_tail


# -- damage that is not a torn tail ----------------------------------------------


@pytest.mark.parametrize("frame", [0, 1, 3, 4])  # frame 2 has an empty payload
def test_bit_flip_in_a_middle_frame_is_corruption_before_the_tail(frame: int) -> None:
    offset = SEGMENT.frame_offsets[frame]
    scan = scan_segment(flip_bit(SEGMENT.data, offset + FRAME_HEADER_SIZE))
    assert scan.corrupt_before_tail
    assert scan.problem == "payload checksum mismatch"
    assert scan.problem_offset == offset
    assert scan.batch_end_offset <= offset  # nothing at or after the damage is kept


def test_bit_flip_in_a_middle_frame_header_is_corruption_before_the_tail() -> None:
    assert scan_segment(flip_bit(SEGMENT.data, SEGMENT.frame_offsets[1] + 8)).corrupt_before_tail


def test_corruption_before_a_torn_tail_is_still_corruption() -> None:
    data = flip_bit(SEGMENT.data, SEGMENT.frame_offsets[0] + FRAME_HEADER_SIZE) + b"\0" * 64
    assert scan_segment(data).corrupt_before_tail


def test_frames_at_the_wrong_position_do_not_validate() -> None:
    # The same frames, in a segment that says they start one byte later.
    shifted = SegmentHeader(START_LSN + 1, TENANT, TIMELINE, 8192).encode() + SEGMENT.data[SEGMENT_HEADER_SIZE:]
    scan = scan_segment(shifted)
    assert scan.frames == [] and scan.batch_end_offset == SEGMENT_HEADER_SIZE
    assert scan.problem == "frame header checksum mismatch"


def test_a_stale_copy_of_a_whole_batch_after_the_end_does_not_validate() -> None:
    # Bytes that were once a valid batch, but at another position (e.g. a stale tail).
    first_batch = SEGMENT.data[SEGMENT_HEADER_SIZE : SEGMENT.batch_ends[0]]
    assert_cut_to(SEGMENT.data + first_batch, len(SEGMENT.data))


def test_a_frame_of_another_segment_start_does_not_validate() -> None:
    other = encode_segment(BATCHES, start_lsn=START_LSN + 8192)
    spliced = SEGMENT.data + other.data[SEGMENT_HEADER_SIZE:]
    assert scan_segment(spliced).batch_end_offset == len(SEGMENT.data)


# -- the segment header -------------------------------------------------------------


def _header_with(offset: int, value: bytes, *, fix_checksum: bool) -> bytes:
    head = bytearray(SEGMENT.data[:SEGMENT_HEADER_SIZE])
    head[offset : offset + len(value)] = value
    if fix_checksum:
        head[56:64] = xxhash.xxh64_intdigest(bytes(head[:56]), seed=0).to_bytes(8, "little")
    return bytes(head) + SEGMENT.data[SEGMENT_HEADER_SIZE:]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_header_with(0, b"XWAL", fix_checksum=True), "bad segment magic"),
        (_header_with(4, b"\x02", fix_checksum=True), "unsupported segment format version 2"),
        (_header_with(8, b"\x01", fix_checksum=False), "checksum mismatch"),
        (_header_with(56, b"\xff", fix_checksum=False), "checksum mismatch"),
        (SEGMENT.data[: SEGMENT_HEADER_SIZE - 1], "segment header is 63 bytes"),
        (b"", "segment header is 0 bytes"),
    ],
    ids=["magic", "version", "body-bit", "checksum-bit", "short", "empty"],
)
def test_bad_segment_header(data: bytes, message: str) -> None:
    with pytest.raises(SegmentFormatError, match=message):
        scan_segment(data)


# -- iter_frames: reading bytes that recovery already checked ------------------------


def test_iter_frames_stops_at_the_limit() -> None:
    got = list(iter_frames(SEGMENT.data, SEGMENT_HEADER_SIZE, START_LSN, SEGMENT.frame_lsns[3]))
    assert [f.lsn for _, f in got] == SEGMENT.frame_lsns[:4]
    assert [off for off, _ in got] == [*SEGMENT.frame_offsets[1:5]]


def test_iter_frames_raises_on_damage() -> None:
    data = flip_bit(SEGMENT.data, SEGMENT.frame_offsets[1] + FRAME_HEADER_SIZE)
    with pytest.raises(CorruptionError, match=f"position={SEGMENT.frame_offsets[1] - SEGMENT_HEADER_SIZE + START_LSN}"):
        list(iter_frames(data, SEGMENT_HEADER_SIZE, START_LSN, 2**64 - 1))


# -- the property: any cut keeps exactly the batches wholly before it -------------------

batches_strategy = st.lists(st.lists(st.binary(max_size=80), min_size=1, max_size=6), max_size=8)


@settings(max_examples=300, deadline=None)
@given(batches=batches_strategy, data=st.data())
def test_any_cut_recovers_the_batches_wholly_before_it(batches: list[list[bytes]], data: st.DataObject) -> None:
    segment = encode_segment(batches)
    cut = data.draw(st.integers(SEGMENT_HEADER_SIZE, len(segment.data)), label="cut")
    tail = data.draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=200), st.integers(1, 200).map(bytes)), label="tail")
    scan = scan_segment(segment.data[:cut] + tail)
    expected_end = max([SEGMENT_HEADER_SIZE, *(end for end in segment.batch_ends if end <= cut)])
    assert scan.batch_end_offset == expected_end
    assert not scan.corrupt_before_tail
    whole_batches = [b for b, end in zip(batches, segment.batch_ends) if end <= cut]
    assert [f.payload for f in scan.frames] == [p for b in whole_batches for p in b]
