"""A timeline's WAL on real files (walservice/wal_storage.py): recovery cuts torn
tails and refuses damage, segments roll over at batch boundaries, and cursors
read across segments from any LSN."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.logs import EventLogger
from walservice.control_file import TimelineControl, write_control
from walservice.segment import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Frame,
    SegmentHeader,
    encode_frame,
    frame_lsn,
    scan_segment,
    segment_file_name,
)
from walservice.term_history import history
from walservice.wal_storage import TimelineWal

TENANT = "0123456789abcdef0123456789abcdef"
TIMELINE = "fedcba9876543210fedcba9876543210"
LOG = EventLogger("walservice")


def new_wal(directory: Path, start_lsn: int = 0, segment_bytes: int = 1 << 20) -> TimelineWal:
    directory.mkdir(parents=True, exist_ok=True)
    control = TimelineControl(TENANT, TIMELINE, start_lsn, 8192, term=1, term_history=history((1, start_lsn)))
    write_control(directory, control)
    wal = TimelineWal(directory, control, segment_bytes)
    wal.recover(LOG)
    return wal


def reopen(wal: TimelineWal) -> TimelineWal:
    wal.close()
    again = TimelineWal(wal.directory, wal.control, wal.segment_bytes)
    again.recover(LOG)
    return again


def append_batch(wal: TimelineWal, payloads: list[bytes]) -> list[int]:
    """Write one batch the way the sequencer does (rollover included); its LSNs."""
    position = wal.end_lsn
    buf, lsns = bytearray(), []
    for i, payload in enumerate(payloads):
        buf += encode_frame(position, payload, 1, 42, i == len(payloads) - 1)
        position = frame_lsn(position, len(payload))
        lsns.append(position)
    new_segment_at = wal.end_lsn if wal.needs_new_segment() else None
    wal.write_and_sync(bytes(buf), new_segment_at)
    wal.committed(position, new_segment_at)
    return lsns


def fill(wal: TimelineWal, batches: int, records_per_batch: int = 3, size: int = 50) -> list[tuple[int, bytes]]:
    """Append `batches` batches; every record's (lsn, payload)."""
    out = []
    for b in range(batches):
        payloads = [f"batch {b} record {r} ".encode().ljust(size, b".") for r in range(records_per_batch)]
        out += zip(append_batch(wal, payloads), payloads)
    return out


def closed_wal(directory: Path, batches: int, segment_bytes: int = 1 << 20) -> tuple[TimelineWal, list[tuple[int, bytes]]]:
    """A WAL holding `batches` batches of 3 records, closed as a stopped node leaves it."""
    wal = new_wal(directory, segment_bytes=segment_bytes)
    written = fill(wal, batches)
    wal.close()
    return wal, written


@pytest.fixture
def segmented(tmp_path: Path) -> tuple[TimelineWal, list[tuple[int, bytes]]]:
    """An open WAL of 10 batches over several 300-byte segments."""
    wal = new_wal(tmp_path / "tl", segment_bytes=300)
    written = fill(wal, 10)
    assert len(wal.segments) >= 4
    return wal, written


def read_all(wal: TimelineWal, after_lsn: int = 0, max_bytes: int = 1 << 20) -> list[tuple[int, bytes]]:
    cursor = wal.cursor(after_lsn)
    out: list[Frame] = []
    while chunk := cursor.read(wal.end_lsn, max_bytes):
        out += chunk
    return [(f.lsn, f.payload) for f in out]


def segment_paths(wal: TimelineWal) -> list[Path]:
    return sorted(wal.directory.glob("*.wal"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# -- recovery ---------------------------------------------------------------------


def test_recover_an_empty_timeline_creates_its_first_segment(tmp_path: Path) -> None:
    wal = new_wal(tmp_path / "tl", start_lsn=1000)
    assert [p.name for p in segment_paths(wal)] == [segment_file_name(1000)]
    assert wal.end_lsn == 1000
    wal.close()
    report = TimelineWal(wal.directory, wal.control).recover(LOG)
    assert (report.segments, report.records, report.end_lsn, report.truncated_bytes) == (1, 0, 1000, 0)


def test_reopen_finds_every_record(tmp_path: Path) -> None:
    wal, written = closed_wal(tmp_path / "tl", 5)
    again = TimelineWal(wal.directory, wal.control, wal.segment_bytes)
    report = again.recover(LOG)
    assert (report.records, report.end_lsn, report.truncated_bytes, report.truncated_reason) == (15, written[-1][0], 0, None)
    assert read_all(again) == written


@pytest.mark.parametrize(
    "tail",
    [os.urandom(332) + b"\xff", b"partial"],
    ids=["garbage", "short-header"],
)
def test_torn_tail_is_cut_on_disk_and_logged(tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture) -> None:
    wal, written = closed_wal(tmp_path / "tl", 4)
    path = segment_paths(wal)[-1]
    whole_size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(tail)

    with caplog.at_level(logging.WARNING, logger="strata.walservice"):
        again = reopen(wal)
    assert path.stat().st_size == whole_size
    assert again.end_lsn == written[-1][0]
    lines = [r.getMessage() for r in caplog.records if "event=wal_tail_truncated" in r.getMessage()]
    assert len(lines) == 1
    assert f"cut_bytes={len(tail)}" in lines[0] and f"lsn={written[-1][0]}" in lines[0]
    assert f"segment={path.name}" in lines[0] and "level=warn" in lines[0]
    # Appends continue exactly where the whole batches ended.
    more = fill(again, 1)
    assert more[0][0] == written[-1][0] + FRAME_HEADER_SIZE + len(more[0][1])
    assert read_all(reopen(again)) == written + more


def test_a_zero_tail_is_a_clean_end_not_a_torn_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Zeros past the last batch are what a preallocated segment holds: no frame, nothing to cut."""
    wal, written = closed_wal(tmp_path / "tl", 4)
    path = segment_paths(wal)[-1]
    with open(path, "ab") as f:
        f.write(b"\0" * 100)
    size = path.stat().st_size
    with caplog.at_level(logging.WARNING, logger="strata.walservice"):
        again = reopen(wal)
    assert again.end_lsn == written[-1][0] and path.stat().st_size == size
    assert "wal_tail_truncated" not in caplog.text
    more = fill(again, 1)
    assert read_all(reopen(again)) == written + more


def test_torn_half_batch_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal = new_wal(tmp_path / "tl")
    written = fill(wal, 2)
    end = wal.end_lsn
    fill(wal, 1, records_per_batch=4)
    wal.close()
    path = segment_paths(wal)[-1]
    # Keep two whole frames of the last batch and part of a third.
    keep = SEGMENT_HEADER_SIZE + end + 2 * (FRAME_HEADER_SIZE + 50) + 10
    os.truncate(path, keep)
    with caplog.at_level(logging.WARNING, logger="strata.walservice"):
        again = reopen(wal)
    assert again.end_lsn == end
    assert path.stat().st_size == SEGMENT_HEADER_SIZE + end
    assert read_all(again) == written
    assert "event=wal_tail_truncated" in caplog.text


def test_torn_tail_in_the_last_of_several_segments(tmp_path: Path) -> None:
    wal, written = closed_wal(tmp_path / "tl", 10, segment_bytes=400)
    assert len(segment_paths(wal)) > 2
    last = segment_paths(wal)[-1]
    with open(last, "ab") as f:
        f.write(encode_frame(wal.end_lsn, b"never acknowledged", 1, 1, False))
    again = reopen(wal)
    assert again.end_lsn == written[-1][0]
    assert read_all(again) == written


def test_corruption_in_a_non_last_segment_is_refused(tmp_path: Path) -> None:
    wal, _ = closed_wal(tmp_path / "tl", 10, segment_bytes=400)
    first = segment_paths(wal)[0]
    flip_byte(first, first.stat().st_size - 3)  # the payload of its last frame
    before = first.read_bytes()
    with pytest.raises(CorruptionError, match=f"segment={first.name}.*payload checksum mismatch"):
        reopen(wal)
    assert first.read_bytes() == before  # evidence is not cut away


def test_a_torn_non_last_segment_is_refused(tmp_path: Path) -> None:
    wal, _ = closed_wal(tmp_path / "tl", 10, segment_bytes=400)
    first = segment_paths(wal)[0]
    os.truncate(first, first.stat().st_size - 5)
    with pytest.raises(CorruptionError, match=f"segment={first.name}"):
        reopen(wal)


def test_a_gap_between_segments_is_refused(tmp_path: Path) -> None:
    wal, _ = closed_wal(tmp_path / "tl", 10, segment_bytes=400)
    first = segment_paths(wal)[0]
    scan = scan_segment(first.read_bytes())
    # Cut the first segment back to its first whole batch: it now ends before the next starts.
    os.truncate(first, SEGMENT_HEADER_SIZE + 3 * (FRAME_HEADER_SIZE + 50))
    assert scan.end_lsn > 3 * (FRAME_HEADER_SIZE + 50)
    with pytest.raises(CorruptionError, match="but the previous segment ends at"):
        reopen(wal)


def test_corruption_before_the_tail_of_the_last_segment_is_refused(tmp_path: Path) -> None:
    wal, _ = closed_wal(tmp_path / "tl", 5)
    path = segment_paths(wal)[-1]
    flip_byte(path, SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE + 4)  # the first record's payload
    before = path.read_bytes()
    with pytest.raises(CorruptionError, match="damaged before its tail"):
        reopen(wal)
    assert path.read_bytes() == before


def test_a_damaged_segment_header_is_refused(tmp_path: Path) -> None:
    wal, _ = closed_wal(tmp_path / "tl", 1)
    flip_byte(segment_paths(wal)[0], 10)
    with pytest.raises(CorruptionError, match="segment header checksum mismatch"):
        reopen(wal)


def test_a_segment_of_another_timeline_is_refused(tmp_path: Path) -> None:
    wal = new_wal(tmp_path / "tl")
    wal.close()
    path = segment_paths(wal)[0]
    path.write_bytes(SegmentHeader(0, TENANT, "00" * 16, 8192).encode())
    with pytest.raises(CorruptionError, match="does not belong here"):
        reopen(wal)


def test_a_leftover_temp_segment_is_removed(tmp_path: Path) -> None:
    wal, written = closed_wal(tmp_path / "tl", 2)
    leftover = wal.directory / (segment_file_name(wal.end_lsn) + ".tmp")
    leftover.write_bytes(b"half a header")
    again = reopen(wal)
    assert not leftover.exists()
    assert read_all(again) == written


# -- rollover and cursors ---------------------------------------------------------------


def test_segments_roll_over_at_batch_boundaries(tmp_path: Path) -> None:
    wal = new_wal(tmp_path / "tl", start_lsn=100, segment_bytes=500)
    written = fill(wal, 12, records_per_batch=4)
    paths = segment_paths(wal)
    assert len(paths) >= 4
    expected_start = 100
    for path in paths:
        scan = scan_segment(path.read_bytes())
        assert path.name == segment_file_name(scan.header.start_lsn)
        assert scan.header.start_lsn == expected_start
        assert scan.problem is None and scan.frames[-1].end_of_batch  # no batch spans segments
        assert len(scan.frames) % 4 == 0
        expected_start = scan.end_lsn
    assert expected_start == wal.end_lsn == written[-1][0]
    # Every segment but the last reached the size limit before the next began.
    for path in paths[:-1]:
        assert path.stat().st_size - SEGMENT_HEADER_SIZE >= 500
    assert read_all(reopen(wal)) == written


def test_cursor_reads_across_segments(segmented: tuple[TimelineWal, list[tuple[int, bytes]]]) -> None:
    wal, written = segmented
    assert read_all(wal) == written
    # A budget smaller than one frame still makes progress, a frame at a time.
    assert read_all(wal, max_bytes=1) == written
    assert read_all(wal, max_bytes=150) == written


@pytest.mark.parametrize("index", [0, 1, 4, 5, 13, 28, 29])
def test_cursor_from_a_record_lsn_returns_the_later_records(
    segmented: tuple[TimelineWal, list[tuple[int, bytes]]], index: int
) -> None:
    wal, written = segmented
    after = written[index][0]
    assert read_all(wal, after_lsn=after) == written[index + 1 :]
    # Between two records' LSNs: the next record is the first returned.
    assert read_all(wal, after_lsn=after - 1) == written[index:]


def test_cursor_from_a_segment_start(segmented: tuple[TimelineWal, list[tuple[int, bytes]]]) -> None:
    wal, written = segmented
    boundary = wal.segments[2].start_lsn
    assert read_all(wal, after_lsn=boundary) == [r for r in written if r[0] > boundary]
    assert read_all(wal, after_lsn=wal.end_lsn) == []


def test_cursor_stops_at_its_limit_and_resumes(segmented: tuple[TimelineWal, list[tuple[int, bytes]]]) -> None:
    wal, written = segmented
    cursor = wal.cursor(0)
    limit = written[7][0]
    first: list[Frame] = []
    while chunk := cursor.read(limit, 1 << 20):
        first += chunk
    assert [(f.lsn, f.payload) for f in first] == written[:8]
    more = fill(wal, 2)
    rest: list[Frame] = []
    while chunk := cursor.read(wal.end_lsn, 1 << 20):
        rest += chunk
    assert [(f.lsn, f.payload) for f in rest] == written[8:] + more


@pytest.mark.parametrize("max_bytes", [1, 100, 250, 1000])
def test_every_read_ends_at_a_batch_end(tmp_path: Path, max_bytes: int) -> None:
    """However small the byte budget, a read returns whole batches: the pageserver
    applies one Stream message at a time, so a message ending inside a batch would
    show part of an atomic Append."""
    wal = new_wal(tmp_path / "tl")
    written = fill(wal, 6, records_per_batch=7, size=90)
    batch_ends = {lsn for i, (lsn, _) in enumerate(written) if i % 7 == 6}
    cursor = wal.cursor(0)
    got: list[Frame] = []
    while chunk := cursor.read(wal.end_lsn, max_bytes):
        assert chunk[-1].end_of_batch and chunk[-1].lsn in batch_ends
        got += chunk
    assert [(f.lsn, f.payload) for f in got] == written


@pytest.mark.parametrize("field, value", [("start_lsn", (1 << 64) - 10), ("commit_lsn", 1 << 64), ("page_size", 3), ("term", -1)])
def test_a_control_file_number_out_of_bounds_is_corruption(field: str, value: int) -> None:
    """The control file is read back under the bounds CreateTimeline validates
    (a start_lsn near 2^64 once made a timeline whose LSNs no response could carry)."""
    good = TimelineControl(TENANT, TIMELINE, 4096, 8192, term=1, term_history=history((1, 4096)))
    assert TimelineControl.decode(good.encode()) == good
    with pytest.raises(CorruptionError, match=rf"control: {field}={value} is out of range"):
        TimelineControl.decode(replace(good, **{field: value}).encode(), "control")
