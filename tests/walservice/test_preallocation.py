"""Preallocated and recycled segment files (walservice/wal_storage.py, "Preallocation
and recycling"): commits overwrite zeros written ahead, sealed segments are cut back
to their frames, trimmed segments come back as new ones, and recovery still tells a
torn tail from a whole batch: zeros end the WAL cleanly, a torn write in the zeros is
wiped, and the stale frames of a recycled file's previous life are never read as
records."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from strata.logs import EventLogger
from tests.walservice.test_wal_storage import TENANT, TIMELINE, fill, read_all
from walservice.control_file import TimelineControl, write_control
from walservice.segment import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, SegmentHeader, encode_frame, scan_segment
from walservice.term_history import history
from walservice.wal_storage import PREALLOCATE_STEP, SPARE_NAME, TimelineWal

LOG = EventLogger("walservice")


def new_wal(directory: Path, segment_bytes: int = 1 << 20) -> TimelineWal:
    directory.mkdir(parents=True, exist_ok=True)
    control = TimelineControl(TENANT, TIMELINE, 0, 8192, term=1, term_history=history((1, 0)))
    write_control(directory, control)
    wal = TimelineWal(directory, control, segment_bytes, preallocate=True)
    wal.recover(LOG)
    return wal


def reopen(wal: TimelineWal, control: TimelineControl | None = None) -> TimelineWal:
    """The WAL as a restarted node finds it (the files are left as they are, like a SIGKILL)."""
    wal.close()
    again = TimelineWal(wal.directory, control or wal.control, wal.segment_bytes, preallocate=True)
    again.recover(LOG)
    return again


def test_commits_overwrite_zeros_written_ahead(tmp_path: Path) -> None:
    wal = new_wal(tmp_path / "tl")
    path = wal.segments[-1].path
    assert path.stat().st_size == SEGMENT_HEADER_SIZE  # a timeline never written holds no zeros
    written = fill(wal, 3)
    used = SEGMENT_HEADER_SIZE + wal.end_lsn
    size = path.stat().st_size
    assert size == min(used + PREALLOCATE_STEP, SEGMENT_HEADER_SIZE + wal.segment_bytes) or size > used + 1000
    assert not any(path.read_bytes()[used:])
    more = fill(wal, 3)
    assert path.stat().st_size == size  # the next commits wrote inside the allocated zeros
    again = reopen(wal)
    assert again.end_lsn == more[-1][0] and read_all(again) == written + more
    assert path.stat().st_size == size  # a zero tail is a clean end: nothing cut


def test_sealed_segments_are_cut_back_to_their_frames(tmp_path: Path) -> None:
    wal = new_wal(tmp_path / "tl", segment_bytes=600)
    written = fill(wal, 12)
    assert len(wal.segments) >= 3
    for seg in wal.segments[:-1]:
        assert seg.path.stat().st_size == SEGMENT_HEADER_SIZE + seg.end_lsn - seg.start_lsn
    last = wal.segments[-1]
    # The open one runs ahead with zeros, to segment_bytes (or just its frames, past it).
    assert last.path.stat().st_size == max(SEGMENT_HEADER_SIZE + 600, SEGMENT_HEADER_SIZE + last.end_lsn - last.start_lsn)
    assert read_all(reopen(wal)) == written


@pytest.mark.parametrize("torn", ["half-frame", "whole-frames-without-end"])
def test_torn_tail_in_a_preallocated_segment_is_wiped(tmp_path: Path, torn: str, caplog: pytest.LogCaptureFixture) -> None:
    wal = new_wal(tmp_path / "tl")
    written = fill(wal, 4)
    path = wal.segments[-1].path
    size = path.stat().st_size
    end = wal.end_lsn
    frame = encode_frame(end, b"never acknowledged".ljust(300, b"!"), 1, 1, False)
    tail = frame[: len(frame) // 2] if torn == "half-frame" else frame + encode_frame(end + len(frame), b"x" * 40, 1, 1, False)
    with open(path, "r+b") as f:  # a write cut short by the crash, inside the zeros
        f.seek(SEGMENT_HEADER_SIZE + end)
        f.write(tail)
    with caplog.at_level(logging.WARNING, logger="strata.walservice"):
        again = reopen(wal)
    assert again.end_lsn == end and read_all(again) == written
    assert path.stat().st_size == size  # wiped, not truncated: the blocks stay allocated
    assert not any(path.read_bytes()[SEGMENT_HEADER_SIZE + end :])
    assert f"cut_bytes={len(tail)}" in caplog.text and "event=wal_tail_truncated" in caplog.text
    more = fill(again, 2)
    assert read_all(reopen(again)) == written + more


def _trim_oldest(wal: TimelineWal) -> TimelineControl:
    """Trim the sealed segments below the second one, as offload does; the control
    file that lets recovery accept the shorter WAL."""
    horizon = wal.segments[1].start_lsn
    wal.delete_segment_files(wal.detach_segments_below(horizon))
    return replace(wal.control, backup_lsn=horizon, remote_consistent_lsn=horizon)


def test_a_recycled_segments_stale_frames_are_never_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal = new_wal(tmp_path / "tl", segment_bytes=2000)
    fill(wal, 24)
    assert len(wal.segments) >= 3
    first = wal.segments[0]
    old_size = first.path.stat().st_size
    stale = first.path.read_bytes()[SEGMENT_HEADER_SIZE:]
    control = _trim_oldest(wal)
    spare = wal.directory / SPARE_NAME
    assert spare.exists() and not first.path.exists()
    # Write on until the next segment starts: it is made of the spare.
    before = len(wal.segments)
    while len(wal.segments) == before:
        tail = fill(wal, 1)
    assert not spare.exists()
    new = wal.segments[-1]
    assert new.path.stat().st_size == old_size  # the recycled file's blocks, header rewritten
    data = new.path.read_bytes()
    used = SEGMENT_HEADER_SIZE + new.end_lsn - new.start_lsn
    assert data[used:] == stale[used - SEGMENT_HEADER_SIZE :]  # its old frames are still there...
    assert any(data[used:])
    scan = scan_segment(data)
    assert scan.end_lsn == new.end_lsn and not scan.corrupt_before_tail  # ...and none of them validates here
    expected = read_all(wal, after_lsn=control.remote_consistent_lsn)
    with caplog.at_level(logging.WARNING, logger="strata.walservice"):
        again = reopen(wal, control)  # a crash: the open segment still holds the stale tail
    assert again.end_lsn == tail[-1][0]
    assert read_all(again, after_lsn=control.remote_consistent_lsn) == expected
    assert not any(new.path.read_bytes()[used:])  # the stale tail was wiped
    assert "event=wal_tail_truncated" in caplog.text
    more = fill(again, 1)
    assert read_all(reopen(again, control), after_lsn=control.remote_consistent_lsn) == expected + more


def test_a_spare_above_the_new_segment_is_not_reused(tmp_path: Path) -> None:
    """A spare whose frames are not all below the new segment's start (say, a copy
    from elsewhere) could validate there: it is deleted, and the segment made anew."""
    wal = new_wal(tmp_path / "tl", segment_bytes=2000)
    fill(wal, 3)
    late = TimelineWal(tmp_path / "late", wal.control, 2000, preallocate=True)
    (tmp_path / "late").mkdir()
    path = late.create_segment_file(10**9)
    path.rename(wal.directory / SPARE_NAME)
    written = fill(wal, 12)
    assert not (wal.directory / SPARE_NAME).exists()
    assert len(wal.segments) >= 2
    second = wal.segments[1]
    assert scan_segment(second.path.read_bytes()).header.start_lsn == second.start_lsn
    assert read_all(reopen(wal))[-len(written):] == written


def test_a_frame_is_not_valid_at_another_position() -> None:
    """What recycling relies on: the checksums are seeded with the frame's position."""
    frame = encode_frame(1000, b"payload", 1, 1, True)
    head = SegmentHeader(2000, TENANT, TIMELINE, 8192).encode()
    scan = scan_segment(head + frame + bytes(FRAME_HEADER_SIZE))
    assert scan.frames == [] and scan.batch_end_offset == SEGMENT_HEADER_SIZE and scan.torn_bytes
