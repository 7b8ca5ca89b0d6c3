"""The recovery floor (walservice/control_file.py `floor_lsn`,
walservice/sequencer.py "Floor"): WAL a reader was sent is never cut as a torn
tail. A byte flipped inside it after a SIGKILL is DATA_LOSS, and its LSNs are
not handed out again; a pageserver whose timeline is ahead of the WAL it streams
from (a walservice without that floor) stops the timeline loudly."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import grpc
import pytest
import xxhash

from compute_shim import Client
from strata.v1 import records_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv
from tests.walservice.harness import create_timeline, patch_record, read_stream
from walservice.control_file import read_control
from walservice.segment import SEGMENT_HEADER_SIZE, parse_segment_file_name

WAIT_S = 30.0


@pytest.fixture
def allowed_errors() -> list[str]:
    return ["event=timeline_broken", "event=rpc_failed.*DATA_LOSS", "event=timeline_ahead_of_wal"]


def timeline_dir(node: Component, tenant_id: str, timeline_id: str) -> Path:
    return node.data_dir / "timelines" / tenant_id / timeline_id


def flip_byte_at(directory: Path, lsn: int) -> Path:
    """Flip the WAL byte at position `lsn` in the segment holding it."""
    start, path = max((parse_segment_file_name(p.name), p) for p in directory.glob("*.wal") if parse_segment_file_name(p.name) <= lsn)
    data = bytearray(path.read_bytes())
    data[SEGMENT_HEADER_SIZE + lsn - start] ^= 0x40
    path.write_bytes(bytes(data))
    return path


def test_damage_in_wal_a_reader_saw_is_data_loss_not_a_torn_tail(strata_env: StrataEnv) -> None:
    node = strata_env.walservice()
    stub = wal_pb2_grpc.WalServiceStub(node.channel())
    key = create_timeline(stub)
    a = stub.Append(key.append([patch_record(1, 0, b"A" * 100)]), timeout=10)
    b = stub.Append(key.append([patch_record(1, 0, b"B" * 100)]), timeout=10)
    assert [r.lsn for r in read_stream(stub, key, b.end_lsn)] == [a.end_lsn, b.end_lsn]
    node.kill()
    segment = flip_byte_at(timeline_dir(node, key.tenant_id, key.timeline_id), b.end_lsn - 10)
    size = segment.stat().st_size
    node.start()
    stub = wal_pb2_grpc.WalServiceStub(node.channel())
    with pytest.raises(grpc.RpcError) as caught:
        stub.Append(key.append([patch_record(1, 0, b"C" * 100)]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert "below the recovery floor" in (caught.value.details() or "")
    assert "event=wal_tail_truncated" not in node.new_log_text()
    assert segment.stat().st_size == size  # nothing was cut: the damaged bytes stay for repair


def write_version_3_control(directory: Path) -> None:
    """Rewrite the control file as a walservice before the floor wrote it."""
    fields = {k: v for k, v in vars(read_control(directory)).items() if k != "floor_lsn"}
    fields["commit_lsn"] = 0
    fields["term_history"] = [[e.term, e.start_lsn] for e in fields["term_history"]]  # as version 3 stored it
    body = json.dumps(fields, sort_keys=True).encode()
    (directory / "control").write_bytes(struct.pack("<4sB3xIQ", b"SWCF", 3, len(body), xxhash.xxh64_intdigest(body)) + body)


def test_pageserver_ahead_of_its_walservice_stops_the_timeline(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant_id = client.create_tenant(page_size=512).tenant_id
        timeline_id = client.create_timeline(tenant_id=tenant_id).timeline_id
        page = lambda fill: records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=0, page=bytes([fill]) * 512))  # noqa: E731
        client.append(tenant_id=tenant_id, timeline_id=timeline_id, records=[page(1)])
        b = client.append(tenant_id=tenant_id, timeline_id=timeline_id, records=[page(2)])
        assert client.get_page(tenant_id=tenant_id, timeline_id=timeline_id, rel=1, blkno=0, lsn=b.end_lsn).page == bytes([2]) * 512
    wal.kill()
    directory = timeline_dir(wal, tenant_id, timeline_id)
    flip_byte_at(directory, b.end_lsn - 10)
    write_version_3_control(directory)  # no floor: recovery takes B for a torn tail
    wal.start()
    assert "event=wal_tail_truncated" in wal.new_log_text()
    deadline = time.monotonic() + WAIT_S
    while "event=timeline_ahead_of_wal" not in ps.new_log_text():
        assert time.monotonic() < deadline, "the pageserver went on streaming a timeline ahead of its WAL"
        time.sleep(0.05)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.get_page(tenant_id=tenant_id, timeline_id=timeline_id, rel=1, blkno=0, lsn=b.end_lsn, timeout=5)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert "is stopped" in (caught.value.details() or "")
