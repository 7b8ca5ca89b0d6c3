"""Every bad input to the WalService gets the contract's status code and a message
naming the field, and changes nothing (one real walservice process on loopback)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from strata import ids
from strata.v1 import records_pb2, wal_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv
from tests.walservice.conftest import APPEND_CODECS
from tests.walservice.harness import (
    STREAM_TIMEOUT_S,
    TimelineKey,
    create_timeline,
    image_record,
    patch_record,
    read_stream,
    tagged_batch,
)
from walservice import append_codec

MAX_BATCH_BYTES = 100_000
PAGE_SIZE = 8192
BAD_TENANT = "not-a-tenant"
BAD_TIMELINE = "0123456789ABCDEF0123456789ABCDEF"  # upper case: not an id


@dataclass
class Node:
    comp: Component
    stub: wal_pb2_grpc.WalServiceStub
    key: TimelineKey  # a timeline holding a few records

    def status(self) -> wal_pb2.WalStatus:
        return self.stub.Status(self.key.ref(), timeout=STREAM_TIMEOUT_S)

    def state(self) -> tuple[wal_pb2.WalStatus, list[tuple[str, int]]]:
        """What no bad request may change: the timeline's status and every file."""
        # A read raises the control file's floor_lsn to commit_lsn before it answers, so
        # no background floor write of an earlier good Append races the snapshot.
        read_stream(self.stub, self.key, self.status().commit_lsn)
        root = self.comp.data_dir
        files = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
        return self.status(), files


@pytest.fixture(scope="module", params=APPEND_CODECS)
def node(module_env: StrataEnv, request: pytest.FixtureRequest) -> Node:
    """One walservice per append codec (walservice/append_codec.py): the C one
    must refuse exactly what the Python path refuses, in the same words."""
    comp = module_env.walservice(
        "--max-batch-bytes", str(MAX_BATCH_BYTES), name=f"walservice-{request.param}", env={"STRATA_APPEND_CODEC": request.param}
    )
    runs = "python" if request.param == "python" or append_codec.native is None else "c"
    assert f"event=append_codec codec={runs}" in comp.log_text()
    stub = module_env.wal_stub(comp)
    key = create_timeline(stub, page_size=PAGE_SIZE)
    stub.Append(key.append(tagged_batch(0, 0, 3)), timeout=STREAM_TIMEOUT_S)
    return Node(comp, stub, key)


def call(stub: wal_pb2_grpc.WalServiceStub, method: str, request: object) -> object:
    if method == "Stream":
        return list(stub.Stream(request, timeout=STREAM_TIMEOUT_S))
    return getattr(stub, method)(request, timeout=STREAM_TIMEOUT_S)


def request_for(method: str, tenant_id: str, timeline_id: str) -> object:
    """A request to `method` that is valid but for the ids."""
    if method == "Append":
        return wal_pb2.AppendRequest(tenant_id=tenant_id, timeline_id=timeline_id, records=tagged_batch(9, 9, 1))
    if method == "Stream":
        return wal_pb2.StreamRequest(tenant_id=tenant_id, timeline_id=timeline_id)
    if method == "Status":
        return records_pb2.TimelineRef(tenant_id=tenant_id, timeline_id=timeline_id)
    if method == "CreateTimeline":
        return wal_pb2.WalTimeline(tenant_id=tenant_id, timeline_id=timeline_id, page_size=PAGE_SIZE)
    assert method == "ReportPersisted"
    return wal_pb2.PersistedRequest(tenant_id=tenant_id, timeline_id=timeline_id)


@dataclass(frozen=True)
class BadCall:
    id: str
    method: str
    request: Callable[[Node], object]
    code: grpc.StatusCode
    names: tuple[str, ...]  # what the message must name


def bad_append(records: list[records_pb2.Record]) -> Callable[[Node], object]:
    return lambda n: n.key.append(records)


GOOD = patch_record(1, 0, b"fine")
METHODS = ("Append", "Stream", "Status", "CreateTimeline", "ReportPersisted")
INVALID = grpc.StatusCode.INVALID_ARGUMENT

BAD_CALLS = [
    *(
        BadCall(f"{m}-bad-tenant", m, lambda n, m=m: request_for(m, BAD_TENANT, n.key.timeline_id), INVALID, ("tenant_id", BAD_TENANT))
        for m in METHODS
    ),
    *(
        BadCall(f"{m}-bad-timeline", m, lambda n, m=m: request_for(m, n.key.tenant_id, BAD_TIMELINE), INVALID, ("timeline_id", BAD_TIMELINE))
        for m in METHODS
    ),
    *(
        BadCall(f"{m}-empty-ids", m, lambda n, m=m: request_for(m, "", ""), INVALID, ("tenant_id",))
        for m in METHODS
    ),
    BadCall("page-too-small", "Append", bad_append([image_record(1, 0, b"\1" * 100)]), INVALID, ("records[0].image.page", "8192")),
    BadCall("page-too-large", "Append", bad_append([GOOD, image_record(1, 0, b"\1" * (PAGE_SIZE + 1))]), INVALID, ("records[1].image.page",)),
    BadCall("splice-past-the-end", "Append", bad_append([GOOD, patch_record(1, 0, b"abc", offset=PAGE_SIZE - 2)]), INVALID, ("records[1].patch.splices[0]",)),
    BadCall("splice-offset-outside", "Append", bad_append([patch_record(1, 0, b"", offset=PAGE_SIZE + 1)]), INVALID, ("records[0].patch.splices[0]",)),
    BadCall(
        "second-splice-outside",
        "Append",
        bad_append([records_pb2.Record(patch=records_pb2.PagePatch(rel=1, splices=[records_pb2.Splice(data=b"x"), records_pb2.Splice(offset=PAGE_SIZE, data=b"y")]))]),
        INVALID,
        ("records[0].patch.splices[1]",),
    ),
    BadCall("patch-without-splices", "Append", bad_append([records_pb2.Record(patch=records_pb2.PagePatch(rel=1, blkno=2))]), INVALID, ("records[0].patch.splices",)),
    BadCall("record-without-kind", "Append", bad_append([GOOD, GOOD, records_pb2.Record()]), INVALID, ("records[2]", "kind")),
    BadCall("image-blkno-reserved", "Append", bad_append([image_record(1, 0xFFFFFFFF, b"\0" * PAGE_SIZE)]), INVALID, ("records[0].image.blkno",)),
    BadCall("patch-blkno-reserved", "Append", bad_append([patch_record(1, 0xFFFFFFFF, b"x")]), INVALID, ("records[0].patch.blkno",)),
    BadCall("empty-batch", "Append", bad_append([]), INVALID, ("records",)),
    BadCall(
        "batch-over-the-limit",
        "Append",
        # 13 images of 8192 bytes: just over the 100000-byte limit.
        bad_append([image_record(1, b, bytes([b]) * PAGE_SIZE) for b in range(13)]),
        INVALID,
        ("records", str(MAX_BATCH_BYTES)),
    ),
    *(
        BadCall(f"{m}-unknown-timeline", m, lambda n, m=m, t=ids.new_id(): request_for(m, n.key.tenant_id, t), grpc.StatusCode.NOT_FOUND, ("timeline_id",))
        for m in ("Append", "Stream", "Status", "ReportPersisted")
    ),
    BadCall(
        "expected-end-lsn-mismatch",
        "Append",
        lambda n: n.key.append([GOOD], expected_end_lsn=n.status().flush_lsn + 1),
        grpc.StatusCode.FAILED_PRECONDITION,
        ("expected_end_lsn",),
    ),
    BadCall(
        "create-with-another-start-lsn",
        "CreateTimeline",
        lambda n: wal_pb2.WalTimeline(tenant_id=n.key.tenant_id, timeline_id=n.key.timeline_id, start_lsn=4096, page_size=PAGE_SIZE),
        grpc.StatusCode.ALREADY_EXISTS,
        ("start_lsn=4096",),
    ),
    BadCall(
        "create-with-another-page-size",
        "CreateTimeline",
        lambda n: wal_pb2.WalTimeline(tenant_id=n.key.tenant_id, timeline_id=n.key.timeline_id, page_size=16384),
        grpc.StatusCode.ALREADY_EXISTS,
        ("page_size=16384",),
    ),
    *(
        BadCall(f"create-page-size-{size}", "CreateTimeline", lambda n, s=size: wal_pb2.WalTimeline(tenant_id=ids.new_id(), timeline_id=ids.new_id(), page_size=s), INVALID, ("page_size", str(size)))
        for size in (1000, 256, 131072, 8191)
    ),
    *(
        BadCall(
            f"create-start-lsn-{lsn}", "CreateTimeline",
            lambda n, lsn=lsn: wal_pb2.WalTimeline(tenant_id=ids.new_id(), timeline_id=ids.new_id(), start_lsn=lsn, page_size=PAGE_SIZE),
            INVALID, ("start_lsn", str(lsn), str(ids.MAX_START_LSN)),
        )
        for lsn in ((1 << 64) - 10, (1 << 62) + 1)
    ),
    BadCall(
        "persisted-past-commit",
        "ReportPersisted",
        lambda n: wal_pb2.PersistedRequest(tenant_id=n.key.tenant_id, timeline_id=n.key.timeline_id, remote_consistent_lsn=n.status().commit_lsn + 1),
        INVALID,
        ("remote_consistent_lsn",),
    ),
]


@pytest.mark.parametrize("bad", BAD_CALLS, ids=[b.id for b in BAD_CALLS])
def test_bad_input_is_refused_and_changes_nothing(node: Node, bad: BadCall) -> None:
    before = node.state()
    request = bad.request(node)
    with pytest.raises(grpc.RpcError) as caught:
        call(node.stub, bad.method, request)
    assert caught.value.code() == bad.code, caught.value.details()
    for name in bad.names:
        assert name in caught.value.details(), f"{name!r} not named in {caught.value.details()!r}"
    assert node.state() == before


STREAMED_BAD_APPENDS = [b for b in BAD_CALLS if b.method == "Append"]


@pytest.mark.parametrize("bad", STREAMED_BAD_APPENDS, ids=[b.id for b in STREAMED_BAD_APPENDS])
def test_a_bad_append_in_an_append_stream_gets_the_same_answer(node: Node, bad: BadCall) -> None:
    """AppendStream answers each bad append with the unary call's code and message
    as its outcome, and changes nothing; the stream itself stays healthy."""
    before = node.state()
    responses = list(
        node.stub.AppendStream(iter([wal_pb2.AppendStreamRequest(appends=[bad.request(node)])]), timeout=STREAM_TIMEOUT_S)
    )
    assert len(responses) == 1 and len(responses[0].outcomes) == 1
    outcome = responses[0].outcomes[0]
    assert outcome.error_code == bad.code.value[0], outcome.error
    for name in bad.names:
        assert name in outcome.error, f"{name!r} not named in {outcome.error!r}"
    assert not outcome.HasField("response")
    assert node.state() == before


def test_an_append_stream_message_that_is_not_protobuf_ends_the_stream_as_invalid_argument(node: Node) -> None:
    before = node.state()
    append_stream = node.comp.channel().stream_stream(
        "/strata.v1.WalService/AppendStream", request_serializer=None, response_deserializer=wal_pb2.AppendStreamResponse.FromString
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(append_stream(iter([b"\x0a\x05ab"]), timeout=STREAM_TIMEOUT_S))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "AppendStreamRequest" in caught.value.details()
    assert node.state() == before


@pytest.mark.parametrize(
    "method, request_type", [("Append", "AppendRequest"), ("Status", "TimelineRef"), ("Stream", "StreamRequest")]
)
def test_request_bytes_that_are_not_protobuf_are_invalid_argument(node: Node, method: str, request_type: str) -> None:
    """Garbage where a unary (or server-streaming) request belongs: INVALID_ARGUMENT
    naming the message type, not grpc's UNKNOWN from a failed deserializer."""
    before = node.state()
    channel = node.comp.channel()
    if method == "Stream":
        rpc = channel.unary_stream(f"/strata.v1.WalService/{method}", request_serializer=None, response_deserializer=None)
    else:
        rpc = channel.unary_unary(f"/strata.v1.WalService/{method}", request_serializer=None, response_deserializer=None)
    for garbage in (b"\x0a\x05ab", b"\xff" * 64):
        with pytest.raises(grpc.RpcError) as caught:
            answer = rpc(garbage, timeout=STREAM_TIMEOUT_S)
            if method == "Stream":
                list(answer)
        assert caught.value.code() == INVALID, f"{caught.value.code()}: {caught.value.details()}"
        assert request_type in caught.value.details()
    assert node.state() == before


def test_an_end_lsn_mismatch_names_the_current_end(node: Node) -> None:
    end = node.status().flush_lsn
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.Append(node.key.append([GOOD], expected_end_lsn=end - 1), timeout=STREAM_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"end_lsn={end}" in caught.value.details()
    assert f"expected_end_lsn={end - 1}" in caught.value.details()
    assert node.status().flush_lsn == end
    # With the end it named, the same append goes through, right there.
    done = node.stub.Append(node.key.append([GOOD], expected_end_lsn=end), timeout=STREAM_TIMEOUT_S)
    assert done.start_lsn == end and node.status().flush_lsn == done.end_lsn


def patch_of_size(payload_bytes: int) -> records_pb2.Record:
    """A patch record whose serialized form is exactly `payload_bytes` long."""
    for data_len in range(payload_bytes, 0, -1):
        record = patch_record(2, 1, b"\0" * data_len)
        if len(record.SerializeToString()) == payload_bytes:
            return record
    raise ValueError(payload_bytes)


def test_a_batch_at_the_limit_is_accepted(node: Node) -> None:
    # Payloads summing to exactly the limit pass; one record more does not.
    images = [image_record(2, b, b"\7" * PAGE_SIZE) for b in range(12)]
    room = MAX_BATCH_BYTES - sum(len(r.SerializeToString()) for r in images)
    records = [*images, patch_of_size(room)]
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.Append(node.key.append([*records, GOOD]), timeout=STREAM_TIMEOUT_S)
    assert caught.value.code() == INVALID and "records[13]" in caught.value.details()
    done = node.stub.Append(node.key.append(records), timeout=STREAM_TIMEOUT_S)
    assert len(done.record_lsns) == 13


def test_create_timeline_is_idempotent(node: Node) -> None:
    before = node.state()
    again = node.stub.CreateTimeline(
        wal_pb2.WalTimeline(tenant_id=node.key.tenant_id, timeline_id=node.key.timeline_id, page_size=PAGE_SIZE),
        timeout=STREAM_TIMEOUT_S,
    )
    assert again == before[0]
    assert again.flush_lsn > 0  # the existing timeline, records and all
    assert node.state() == before
    # page_size 0 means the default, 8192: the same parameters.
    default = node.stub.CreateTimeline(
        wal_pb2.WalTimeline(tenant_id=node.key.tenant_id, timeline_id=node.key.timeline_id), timeout=STREAM_TIMEOUT_S
    )
    assert default == before[0]


def test_create_timeline_with_a_start_lsn(node: Node) -> None:
    key = create_timeline(node.stub, page_size=512, start_lsn=1_000_000)
    status = node.stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S)
    assert (status.start_lsn, status.flush_lsn, status.commit_lsn, status.page_size) == (1_000_000, 1_000_000, 1_000_000, 512)
    done = node.stub.Append(key.append([image_record(1, 0, b"\1" * 512)]), timeout=STREAM_TIMEOUT_S)
    assert done.start_lsn == 1_000_000 and done.record_lsns[0] > 1_000_000
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.Append(key.append([image_record(1, 0, b"\1" * PAGE_SIZE)]), timeout=STREAM_TIMEOUT_S)
    assert caught.value.code() == INVALID and "512" in caught.value.details()


def test_report_persisted_moves_forward_only(node: Node) -> None:
    key = create_timeline(node.stub)
    done = node.stub.Append(key.append(tagged_batch(1, 1, 4)), timeout=STREAM_TIMEOUT_S)
    persisted = wal_pb2.PersistedRequest(tenant_id=key.tenant_id, timeline_id=key.timeline_id)
    persisted.remote_consistent_lsn = done.record_lsns[2]
    assert node.stub.ReportPersisted(persisted, timeout=STREAM_TIMEOUT_S).remote_consistent_lsn == done.record_lsns[2]
    persisted.remote_consistent_lsn = done.record_lsns[0]
    assert node.stub.ReportPersisted(persisted, timeout=STREAM_TIMEOUT_S).remote_consistent_lsn == done.record_lsns[2]
    assert node.stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S).remote_consistent_lsn == done.record_lsns[2]
