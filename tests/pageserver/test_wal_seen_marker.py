"""wal_seen.json: versioned, checksummed, and written durably."""

from __future__ import annotations

from pathlib import Path

import pytest

from pageserver.wal_seen_marker import FILE_NAME, WalSeenMarker, has_seen_wal, mark_wal_seen
from strata.errors import CorruptionError


def test_marker_round_trips_and_a_flipped_byte_is_corruption(tmp_path: Path) -> None:
    assert not has_seen_wal(tmp_path)
    mark_wal_seen(tmp_path, 4242)
    assert has_seen_wal(tmp_path)
    data = (tmp_path / FILE_NAME).read_bytes()
    marker = WalSeenMarker.decode(data, FILE_NAME)
    assert marker.first_lsn == 4242 and marker.seen_at_us > 0
    damaged = data.replace(b"4242", b"4243")
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        WalSeenMarker.decode(damaged, FILE_NAME)
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME], "no temp file left"
