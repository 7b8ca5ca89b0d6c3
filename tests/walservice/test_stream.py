"""Stream, group commit, corruption at start, SIGTERM and health, on real
walservice processes on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.v1 import records_pb2, wal_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv
from tests.walservice.harness import (
    STREAM_TIMEOUT_S,
    StreamReader,
    TimelineKey,
    create_timeline,
    image_record,
    patch_record,
    read_stream,
    record_tag,
    sequenced,
    streamed,
    tagged_batch,
)
from walservice.segment import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, parse_segment_file_name

LIVE_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def node(module_env: StrataEnv) -> Component:
    return module_env.walservice("--segment-bytes", "4096")


@pytest.fixture(scope="module")
def stub(module_env: StrataEnv, node: Component) -> wal_pb2_grpc.WalServiceStub:
    return module_env.wal_stub(node)


def append_batches(
    stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, batches: int, writer: int = 0, first_batch: int = 0
) -> list[tuple[int, bytes]]:
    """Append tagged batches of 1, 2, 3.. records; every record as (lsn, bytes)."""
    out = []
    for b in range(first_batch, first_batch + batches):
        records = tagged_batch(writer, b, 1 + b % 4)
        done = stub.Append(key.append(records), timeout=STREAM_TIMEOUT_S)
        out += sequenced(records, done.record_lsns)
    return out


# -- reading ----------------------------------------------------------------------------


def test_stream_from_the_start(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub)
    written = append_batches(stub, key, 40)  # past several 4 KiB segments
    assert streamed(read_stream(stub, key, written[-1][0])) == written
    lsns = [lsn for lsn, _ in written]
    assert lsns == sorted(set(lsns))


@pytest.mark.parametrize("index", [0, 1, 30, 60])
def test_stream_from_a_mid_lsn(stub: wal_pb2_grpc.WalServiceStub, index: int) -> None:
    key = create_timeline(stub)
    written = append_batches(stub, key, 40)
    start = written[index][0]
    assert streamed(read_stream(stub, key, written[-1][0], start_lsn=start)) == written[index + 1 :]
    # Not at a record boundary: the record whose LSN passes it comes first.
    assert streamed(read_stream(stub, key, written[-1][0], start_lsn=start - 1)) == written[index:]


def test_stream_of_records_bigger_than_a_stream_message(stub: wal_pb2_grpc.WalServiceStub) -> None:
    # Stream messages hold about 1 MiB of frames: a 1.5 MiB batch, and a single
    # 2 MiB record (a patch of 32 whole-page splices), must still arrive whole.
    key = create_timeline(stub, page_size=65536)
    images = [image_record(1, b, bytes([b]) * 65536) for b in range(24)]
    huge = records_pb2.Record(
        patch=records_pb2.PagePatch(rel=2, splices=[records_pb2.Splice(data=bytes([i]) * 65536) for i in range(32)])
    )
    written = []
    for records in (images, [huge], [patch_record(3, 0, b"small")]):
        done = stub.Append(key.append(records), timeout=STREAM_TIMEOUT_S)
        written += sequenced(records, done.record_lsns)
    assert streamed(read_stream(stub, key, written[-1][0])) == written
    assert streamed(read_stream(stub, key, written[-1][0], start_lsn=written[10][0])) == written[11:]


def test_streamed_records_mark_each_batch_end(stub: wal_pb2_grpc.WalServiceStub) -> None:
    # end_of_batch is set on each Append's last record only, also for a batch the
    # stream cuts into several messages (24 x 64 KiB images).
    key = create_timeline(stub, page_size=65536)
    ends = []
    for n in (1, 3, 24, 2):
        records = [image_record(1, b, bytes([b]) * 65536) for b in range(n)]
        ends.append(stub.Append(key.append(records), timeout=STREAM_TIMEOUT_S).end_lsn)
    got = read_stream(stub, key, ends[-1])
    assert [r.lsn for r in got if r.end_of_batch] == ends
    assert len(got) == 30


def test_stream_of_a_timeline_with_a_start_lsn(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub, start_lsn=70_000)
    written = append_batches(stub, key, 5)
    assert written[0][0] > 70_000
    assert streamed(read_stream(stub, key, written[-1][0])) == written


def test_stream_follows_live_commits(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub)
    written = append_batches(stub, key, 3)
    with StreamReader(stub, key) as reader:
        assert streamed(reader.records_until(written[-1][0])) == written
        for round_no in range(3):
            more = append_batches(stub, key, 2, first_batch=10 * (round_no + 1))
            assert streamed(reader.records_until(more[-1][0], timeout=LIVE_TIMEOUT_S)) == more


def test_stream_from_the_end_waits_for_the_next_commit(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub)
    written = append_batches(stub, key, 3)
    with StreamReader(stub, key, start_lsn=written[-1][0]) as reader:
        more = append_batches(stub, key, 1, first_batch=5)
        assert streamed(reader.records_until(more[-1][0], timeout=LIVE_TIMEOUT_S)) == more


def test_several_streams_see_the_same_commits(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub)
    written = append_batches(stub, key, 6)
    starts = [0, written[3][0], written[-1][0], 0]
    readers = [StreamReader(stub, key, start_lsn=s) for s in starts]
    try:
        more = append_batches(stub, key, 4, first_batch=100)
        everything = written + more
        for reader, start in zip(readers, starts):
            expected = [r for r in everything if r[0] > start]
            assert streamed(reader.records_until(everything[-1][0], timeout=LIVE_TIMEOUT_S)) == expected
    finally:
        for reader in readers:
            reader.close()


def test_wal_batches_carry_the_commit_lsn(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub)
    written = append_batches(stub, key, 10)
    end = written[-1][0]
    call = stub.Stream(key.stream(0), timeout=STREAM_TIMEOUT_S)
    try:
        seen = 0
        for batch in call:
            assert batch.records
            assert all(rec.lsn <= batch.commit_lsn for rec in batch.records)
            assert batch.commit_lsn == end  # nothing is appended meanwhile
            seen = batch.records[-1].lsn
            if seen == end:
                break
    finally:
        call.cancel()
    assert seen == end
    status = stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S)
    assert (status.flush_lsn, status.commit_lsn) == (end, end)


# -- group commit ---------------------------------------------------------------------------


def test_concurrent_appends_get_consecutive_lsn_ranges(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub)
    writers = 64
    start = threading.Barrier(writers)
    results: dict[int, wal_pb2.AppendResponse] = {}
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            start.wait(STREAM_TIMEOUT_S)
            results[writer] = stub.Append(key.append(tagged_batch(writer, 0, 1 + writer % 5)), timeout=30)
        except BaseException as exc:  # reported below, with the writer
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == writers

    by_start = sorted(results.items(), key=lambda item: item[1].start_lsn)
    expected_start = 0
    for writer, done in by_start:
        assert done.start_lsn == expected_start  # consecutive: no gap, no overlap
        assert len(done.record_lsns) == 1 + writer % 5
        assert list(done.record_lsns) == sorted(set(done.record_lsns))
        assert done.record_lsns[0] > done.start_lsn and done.record_lsns[-1] == done.end_lsn
        expected_start = done.end_lsn
    assert stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S).commit_lsn == expected_start

    # The stream holds every batch, whole and contiguous, at the LSNs acknowledged.
    records = read_stream(stub, key, expected_start)
    assert [rec.lsn for rec in records] == [lsn for _, done in by_start for lsn in done.record_lsns]
    assert [(record_tag(rec.record).writer, record_tag(rec.record).index) for rec in records] == [
        (writer, i) for writer, done in by_start for i in range(len(done.record_lsns))
    ]


# -- corruption found at start ---------------------------------------------------------------


def corrupt_a_middle_payload(timeline_dir: Path, written: list[tuple[int, bytes]]) -> Path:
    """Flip a payload byte of a record in the middle of the first segment."""
    path = min(timeline_dir.glob("*.wal"))
    segment_start = parse_segment_file_name(path.name)
    assert segment_start is not None
    lsn, payload = written[len(written) // 4]
    frame_position = lsn - len(payload) - FRAME_HEADER_SIZE
    offset = SEGMENT_HEADER_SIZE + frame_position - segment_start + FRAME_HEADER_SIZE + len(payload) // 2
    data = bytearray(path.read_bytes())
    assert offset < len(data) - 100, "whole records must follow the damage"
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "allowed_errors", [[r"event=timeline_broken", r"event=rpc_failed .*code=DATA_LOSS"]], ids=["expected-errors"]
)
def test_a_corrupt_segment_stops_its_timeline(strata_env: StrataEnv, allowed_errors: list[str]) -> None:
    comp = strata_env.walservice()
    stub = strata_env.wal_stub(comp)
    broken, healthy = create_timeline(stub), create_timeline(stub)
    written = append_batches(stub, broken, 12)
    healthy_written = append_batches(stub, healthy, 3)
    assert comp.stop() == 0
    path = corrupt_a_middle_payload(comp.data_dir / "timelines" / broken.tenant_id / broken.timeline_id, written)
    damaged = path.read_bytes()

    comp.start()
    stub = strata_env.wal_stub(comp)
    for method, request in [
        ("Status", broken.ref()),
        ("Append", broken.append([patch_record(1, 0, b"x")])),
        ("ReportPersisted", wal_pb2.PersistedRequest(tenant_id=broken.tenant_id, timeline_id=broken.timeline_id)),
        ("CreateTimeline", wal_pb2.WalTimeline(tenant_id=broken.tenant_id, timeline_id=broken.timeline_id)),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=STREAM_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS, method
        assert path.name in caught.value.details() and "checksum" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Stream(broken.stream(0), timeout=STREAM_TIMEOUT_S))
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS

    assert path.read_bytes() == damaged  # nothing was cut or rewritten
    broken_lines = [line for line in comp.log_text().splitlines() if "event=timeline_broken" in line]
    assert len(broken_lines) == 1 and "level=error" in broken_lines[0] and broken.timeline_id in broken_lines[0]
    # The other timeline on the node is served as before.
    assert streamed(read_stream(stub, healthy, healthy_written[-1][0])) == healthy_written
    stub.Append(healthy.append([patch_record(1, 0, b"still fine")]), timeout=STREAM_TIMEOUT_S)


# -- shutdown and health ---------------------------------------------------------------------


def test_sigterm_ends_streams_and_keeps_the_data(strata_env: StrataEnv) -> None:
    comp = strata_env.walservice("--segment-bytes", "2048")
    # A channel of our own: Component.stop() closes the ones it handed out before
    # signalling, which would end the stream from this side.
    channel = grpc.insecure_channel(comp.address)
    stub = wal_pb2_grpc.WalServiceStub(channel)
    try:
        key = create_timeline(stub)
        written = append_batches(stub, key, 20)
        reader = StreamReader(stub, key)
        assert streamed(reader.records_until(written[-1][0])) == written
        persisted = written[5][0]
        stub.ReportPersisted(
            wal_pb2.PersistedRequest(tenant_id=key.tenant_id, timeline_id=key.timeline_id, remote_consistent_lsn=persisted),
            timeout=STREAM_TIMEOUT_S,
        )
        assert comp.stop() == 0
        assert reader.ended.wait(STREAM_TIMEOUT_S), "the open stream did not end on SIGTERM"
        assert reader.end_code == grpc.StatusCode.OK
        reader.close()
    finally:
        channel.close()
    log = comp.log_text()
    assert "event=stopping" in log and "event=stopped" in log
    assert "event=wal_tail_truncated" not in log

    comp.start()
    stub = strata_env.wal_stub(comp)
    status = stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S)
    assert (status.flush_lsn, status.commit_lsn) == (written[-1][0], written[-1][0])
    assert status.remote_consistent_lsn == persisted
    assert streamed(read_stream(stub, key, written[-1][0])) == written
    assert "event=wal_tail_truncated" not in comp.new_log_text()  # a clean stop leaves no torn tail


def test_health_service_answers_serving(module_env: StrataEnv, node: Component) -> None:
    health = health_pb2_grpc.HealthStub(node.channel())
    for service in ("", "strata.v1.WalService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=STREAM_TIMEOUT_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="strata.v1.NoSuchService"), timeout=STREAM_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_records_round_trip_every_kind(stub: wal_pb2_grpc.WalServiceStub) -> None:
    key = create_timeline(stub, page_size=512)
    records = [
        records_pb2.Record(image=records_pb2.PageImage(rel=7, blkno=3, page=bytes(range(256)) * 2)),
        patch_record(7, 0xFFFFFFFE, b"last block", offset=502),
        records_pb2.Record(rel_size=records_pb2.RelSize(rel=7, nblocks=2)),
        records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=7)),
    ]
    done = stub.Append(key.append(records), timeout=STREAM_TIMEOUT_S)
    got = read_stream(stub, key, done.end_lsn)
    assert [rec.record for rec in got] == records
    assert all(rec.term == 1 and rec.commit_time_us > 0 for rec in got)
    assert len({rec.commit_time_us for rec in got}) == 1  # one batch, one commit
