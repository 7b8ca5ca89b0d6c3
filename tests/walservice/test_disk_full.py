"""A full disk is survived, not just reported (walservice): on a really full
filesystem (a small tmpfs, filled to the last byte) appends, creations and
replicated writes answer RESOURCE_EXHAUSTED and leave nothing torn; once space is
back the next call succeeds with no restart, and nothing acknowledged is lost."""

from __future__ import annotations

import grpc
import pytest

from compute_shim import Client
from strata.v1 import wal_pb2
from tests.env import StrataEnv, wait_until
from tests.walservice.harness import STREAM_TIMEOUT_S, TimelineKey, create_timeline, read_stream, record_tag, tagged_batch

DISK_BYTES = 1024 * 1024
SEGMENT_BYTES = 64 * 1024  # small: segments are started while the disk is full too


def _refused_disk_full(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    exc = info.value
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
    assert "is full" in exc.details() and "bytes free" in exc.details(), exc.details()
    return exc


def test_append_refused_while_full_then_resumes_without_restart(small_disk, strata_env: StrataEnv) -> None:
    disk = small_disk(strata_env.root / "walservice", DISK_BYTES)
    wal = strata_env.walservice("--segment-bytes", str(SEGMENT_BYTES))
    stub = strata_env.wal_stub(wal)
    key = create_timeline(stub)
    acked: list[tuple[int, int]] = []  # (batch, end_lsn) of every acknowledged append
    for batch in range(3):
        acked.append((batch, stub.Append(key.append(tagged_batch(1, batch, 4)), timeout=STREAM_TIMEOUT_S).end_lsn))
    disk.fill()
    # The zeros the open segment already holds ahead of its frames (preallocation,
    # walservice/wal_storage.py) still take appends on a full disk: use them up.
    for batch in range(100, 1100):
        try:
            acked.append((batch, stub.Append(key.append(tagged_batch(1, batch, 4)), timeout=STREAM_TIMEOUT_S).end_lsn))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
            break
    else:
        pytest.fail("appends never ran out of space")
    end = acked[-1][1]
    for batch in range(3, 8):  # small and large batches, none of which fits
        exc = _refused_disk_full(lambda: stub.Append(key.append(tagged_batch(1, batch, 1 + batch * 40)), timeout=STREAM_TIMEOUT_S))
        assert "the append was not written" in exc.details()
    status = stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S)
    assert (status.flush_lsn, status.commit_lsn) == (end, end)
    other = TimelineKey("a" * 32, "b" * 32)
    exc = _refused_disk_full(
        lambda: stub.CreateTimeline(
            wal_pb2.WalTimeline(tenant_id=other.tenant_id, timeline_id=other.timeline_id, page_size=8192), timeout=STREAM_TIMEOUT_S
        )
    )
    assert "was not created" in exc.details()
    left = sorted(p.name for p in (disk.path / "timelines").iterdir())
    assert other.tenant_id not in left, f"a half-made tenant/timeline directory is left: {left}"
    assert "event=disk_full" in wal.log_text()

    disk.free()
    # Space is back: the same process takes the next append where the WAL ended,
    # and enough of them to start new segments.
    for batch in range(8, 40):
        result = stub.Append(key.append(tagged_batch(1, batch, 30)), timeout=STREAM_TIMEOUT_S)
        if batch == 8:
            assert result.start_lsn == end
        acked.append((batch, result.end_lsn))
    stub.CreateTimeline(
        wal_pb2.WalTimeline(tenant_id=other.tenant_id, timeline_id=other.timeline_id, page_size=8192), timeout=STREAM_TIMEOUT_S
    )
    assert "event=disk_space_back" in wal.log_text()

    # Nothing acknowledged is lost, nothing refused appears: restart and read back.
    wal.stop()
    wal.start()
    stub = strata_env.wal_stub(wal)
    records = read_stream(stub, key, acked[-1][1])
    batches = sorted({record_tag(r.record).batch for r in records})
    assert batches == sorted(b for b, _ in acked)
    assert "wal_tail_truncated" not in wal.new_log_text()


def test_segment_started_on_a_full_disk_is_removed(small_disk, strata_env: StrataEnv) -> None:
    """A write that would start a new segment on a full disk leaves no segment
    file behind, and the segment is started again once space is back."""
    disk = small_disk(strata_env.root / "walservice", DISK_BYTES)
    wal = strata_env.walservice("--segment-bytes", str(4096))
    stub = strata_env.wal_stub(wal)
    key = create_timeline(stub)
    end = stub.Append(key.append(tagged_batch(1, 0, 60)), timeout=STREAM_TIMEOUT_S).end_lsn  # past one segment
    tl_dir = disk.path / "timelines" / key.tenant_id / key.timeline_id
    segments = sorted(p.name for p in tl_dir.iterdir() if p.name.endswith(".wal"))
    disk.fill()
    # Bigger than a segment: it cannot fit in the zeros the open segment holds ahead.
    _refused_disk_full(lambda: stub.Append(key.append(tagged_batch(1, 1, 60)), timeout=STREAM_TIMEOUT_S))
    assert sorted(p.name for p in tl_dir.iterdir() if p.name.endswith(".wal") or p.name.endswith(".tmp")) == segments
    disk.free()
    second = stub.Append(key.append(tagged_batch(1, 2, 60)), timeout=STREAM_TIMEOUT_S)
    assert second.start_lsn == end
    assert len([p for p in tl_dir.iterdir() if p.name.endswith(".wal")]) > len(segments)
    wal.stop()
    wal.start()
    records = read_stream(strata_env.wal_stub(wal), key, second.end_lsn)
    assert sorted({record_tag(r.record).batch for r in records}) == [0, 2]


def test_follower_out_of_space_is_not_acked_then_catches_up(small_disk, strata_env: StrataEnv) -> None:
    """A follower with a full disk refuses the replicated write (the leader counts
    it as not acked: the other two still commit), and catches up once space is back."""
    disk = small_disk(strata_env.root / "wal3", DISK_BYTES)
    nodes = strata_env.walservice_cluster(3, "--segment-bytes", str(SEGMENT_BYTES))
    client = Client(walservice=nodes[0].address)
    key = create_timeline(strata_env.wal_stub(nodes[0]))
    append = lambda batch: client.append(  # noqa: E731
        tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, batch, 10)
    ).end_lsn
    end = append(0)
    follower = strata_env.wal_stub(nodes[2])
    status = follower.Status(key.ref(), timeout=STREAM_TIMEOUT_S)
    if status.leader_node_id == 3:
        pytest.skip("node 3 was elected leader; this test needs it to follow")
    wait_until("node 3 to hold the first batch", lambda: follower.Status(key.ref(), timeout=STREAM_TIMEOUT_S).flush_lsn >= end)

    disk.fill()
    for batch in range(1, 400):  # a majority (nodes 1 and 2) still acknowledges
        end = append(batch)
        if "event=disk_full" in nodes[2].log_text():
            break  # node 3 used up the zeros its open segment held ahead (preallocation)
    wait_until("node 3 to log its full disk", lambda: "event=disk_full" in nodes[2].log_text())
    assert follower.Status(key.ref(), timeout=STREAM_TIMEOUT_S).flush_lsn < end

    disk.free()
    wait_until("node 3 to catch up", lambda: follower.Status(key.ref(), timeout=STREAM_TIMEOUT_S).flush_lsn >= end)
    assert "event=disk_space_back" in nodes[2].log_text()
    nodes[2].stop()
    nodes[2].start()
    status = strata_env.wal_stub(nodes[2]).Status(key.ref(), timeout=STREAM_TIMEOUT_S)
    assert status.flush_lsn >= end
    client.close()


def test_leader_out_of_space_steps_down_and_the_cluster_goes_on(small_disk, strata_env: StrataEnv) -> None:
    """A cluster leader whose own write runs out of space cannot take the round
    back from its followers: it answers UNAVAILABLE (the batch's fate is theirs),
    steps down, and a node with space leads within a couple of seconds with no
    restart; the resigned node catches up once space is back, and nothing
    acknowledged is lost."""
    disks = [small_disk(strata_env.root / f"wal{n}", DISK_BYTES) for n in (1, 2, 3)]
    nodes = strata_env.walservice_cluster(3, "--segment-bytes", str(SEGMENT_BYTES))
    client = Client(walservice=",".join(n.address for n in nodes))
    key = create_timeline(strata_env.wal_stub(nodes[0]))
    acked: list[tuple[int, int]] = []  # (batch, end_lsn) of every acknowledged append

    def append(batch: int) -> int:
        end = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, batch, 10)).end_lsn
        acked.append((batch, end))
        return end

    append(0)
    leader = strata_env.wal_stub(nodes[0]).Status(key.ref(), timeout=STREAM_TIMEOUT_S).leader_node_id
    assert leader in (1, 2, 3)
    old = nodes[leader - 1]
    old_stub = strata_env.wal_stub(old)
    disks[leader - 1].fill()

    with pytest.raises(grpc.RpcError) as info:
        old_stub.Append(key.append(tagged_batch(1, 1, 1000)), timeout=STREAM_TIMEOUT_S)  # more than its segment's zeros ahead hold
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (info.value.code(), info.value.details())
    assert "ran out of disk space" in info.value.details() and "may or may not survive" in info.value.details()
    assert "event=leader_resigned" in old.log_text()

    # Another node leads, with no client write and no restart.
    others = [strata_env.wal_stub(n) for n in nodes if n is not old]
    wait_until(
        "a node with space to lead",
        lambda: any(s.Status(key.ref(), timeout=STREAM_TIMEOUT_S).leader_node_id not in (0, leader) for s in others),
        timeout=10,
    )
    for batch in range(2, 8):
        append(batch)  # through whichever node leads now
    new_leader = others[0].Status(key.ref(), timeout=STREAM_TIMEOUT_S).leader_node_id
    assert new_leader != leader

    disks[leader - 1].free()
    end = acked[-1][1]
    wait_until("the resigned node to catch up", lambda: old_stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S).flush_lsn >= end, timeout=15)
    assert "event=disk_space_back" in old.log_text()
    # Nothing acknowledged is lost on the node that ran out of space: read its own WAL after a restart.
    old.stop()
    old.start()
    records = read_stream(strata_env.wal_stub(old), key, end)
    got = {record_tag(r.record).batch for r in records}
    assert {b for b, _ in acked} <= got, sorted(got)
    client.close()
