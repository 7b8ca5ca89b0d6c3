"""Damaged local WAL is fetched again from remote storage (walservice/wal_restore.py):
after a SIGKILL, a byte flipped in the middle of a sealed segment, and one in the
open segment, of a single node whose WAL is offloaded are repaired from the
offloaded copy at start: the timeline serves every record and takes appends."""

from __future__ import annotations

from pathlib import Path

from strata.remote_storage.local_fs import LocalFsStorage
from tests.env import StrataEnv
from tests.walservice.harness import create_timeline, read_stream, streamed
from tests.walservice.test_offload import (
    append_batches,
    local_segment_path,
    local_segment_starts,
    log_events,
    offloading_node,
    status,
    wait_backed_up,
)


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_segments_are_repaired_from_the_offloaded_copy(strata_env: StrataEnv, tmp_path: Path) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    node = offloading_node(strata_env, f"file://{storage.root}")
    stub = strata_env.wal_stub(node)
    key = create_timeline(stub)
    written = append_batches(stub, key, 80)
    commit_lsn = wait_backed_up(stub, key)
    starts = local_segment_starts(node, key)
    assert len(starts) >= 3
    node.kill()
    for start in (starts[1], starts[-1]):
        flip_middle_byte(local_segment_path(node, key, start))
    node.start()
    stub = strata_env.wal_stub(node)
    assert status(stub, key).commit_lsn == commit_lsn
    assert len(log_events(node, "wal_segment_repaired", key)) == 2
    assert streamed(read_stream(stub, key, commit_lsn)) == written
    written += append_batches(stub, key, 5, first=80)
    assert streamed(read_stream(stub, key, written[-1][0], start_lsn=commit_lsn)) == [r for r in written if r[0] > commit_lsn]
