"""Bounded work per request (issue 17): GetPages' cap on pages per message and
its split answers, one log line per failed message, numeric fields validated
before anything is written, and request values escaped in log lines.

One walservice + pageserver (real processes on loopback; the `cluster` fixture
of test_pageserver_errors.py) serve the module; the tests use their own tenants.
Reads wait for the LSN they name, so none sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc
import pytest

from compute_shim import Client
from pageserver.tenant import TenantConfig
from strata.errors import CorruptionError
from strata.page_limits import MAX_PAGES_PER_MESSAGE, RESPONSE_MESSAGE_BYTES
from strata.v1 import page_pb2, records_pb2
from tests.env import Component
from tests.pageserver.test_pageserver_errors import Cluster, cluster  # noqa: F401 - the module's walservice + pageserver
from tests.pageserver.world import new_id

PAGE_SIZE = 8192
UNKNOWN = "0" * 31 + "1"


@dataclass
class Db:
    """A tenant with one timeline whose rel 1 has MAX_PAGES_PER_MESSAGE blocks:
    the last an image, the ones below it zeros."""

    tenant_id: str
    timeline_id: str
    lsn: int
    last: bytes  # the last block's page

    def request(self, blkno: int, **fields: object) -> page_pb2.GetPageRequest:
        return page_pb2.GetPageRequest(
            **{"tenant_id": self.tenant_id, "timeline_id": self.timeline_id, "rel": 1, "blkno": blkno, "lsn": self.lsn, **fields}
        )

    def expected(self, blkno: int) -> bytes:
        return self.last if blkno == MAX_PAGES_PER_MESSAGE - 1 else bytes(PAGE_SIZE)


@pytest.fixture(scope="module")
def db(cluster: Cluster) -> Db:
    c = cluster.client
    tenant_id = c.create_tenant(page_size=PAGE_SIZE).tenant_id
    timeline_id = c.create_timeline(tenant_id=tenant_id).timeline_id
    last = bytes(range(256)) * (PAGE_SIZE // 256)
    image = records_pb2.PageImage(rel=1, blkno=MAX_PAGES_PER_MESSAGE - 1, page=last)
    lsn = c.append(tenant_id=tenant_id, timeline_id=timeline_id, records=[records_pb2.Record(image=image)]).end_lsn
    c.get_rel_size(tenant_id=tenant_id, timeline_id=timeline_id, rel=1, lsn=lsn)  # waits until ingested
    return Db(tenant_id, timeline_id, lsn, last)


def rpc_failed_lines(ps: Component, method: str, start: int) -> list[str]:
    """The `rpc_failed` lines of `method` the pageserver wrote past byte `start` of its log."""
    text = ps.log_path.read_bytes()[start:].decode(errors="replace")
    return [line for line in text.splitlines() if "event=rpc_failed" in line and f"method={method}" in line]


# -- GetPages: the cap, and split answers -------------------------------------------


def test_a_message_over_the_page_cap_is_invalid_argument_naming_the_cap(cluster: Cluster, db: Db) -> None:
    too_many = page_pb2.GetPagesRequest(requests=[db.request(b % MAX_PAGES_PER_MESSAGE) for b in range(MAX_PAGES_PER_MESSAGE + 1)])
    with pytest.raises(grpc.RpcError) as caught:
        list(cluster.client.get_pages([too_many]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert str(MAX_PAGES_PER_MESSAGE) in caught.value.details() and str(MAX_PAGES_PER_MESSAGE + 1) in caught.value.details()
    # A message at the cap is served, on a new stream.
    at_cap = page_pb2.GetPagesRequest(requests=[db.request(b) for b in range(MAX_PAGES_PER_MESSAGE)])
    results = [r for response in cluster.client.get_pages([at_cap]) for r in response.responses]
    assert [r.page for r in results] == [db.expected(b) for b in range(MAX_PAGES_PER_MESSAGE)]


def test_a_large_answer_is_split_into_bounded_messages_in_order(cluster: Cluster, db: Db) -> None:
    """MAX_PAGES_PER_MESSAGE pages of 8 KiB (8 MiB) come back as several response
    messages, none over RESPONSE_MESSAGE_BYTES, all but each request message's
    last marked `more`; a small message after it gets one message of its own."""
    big = page_pb2.GetPagesRequest(requests=[db.request(b) for b in range(MAX_PAGES_PER_MESSAGE)])
    small = page_pb2.GetPagesRequest(requests=[db.request(MAX_PAGES_PER_MESSAGE - 1), db.request(0)])
    responses = list(cluster.client.get_pages([big, small]))
    sizes = [r.ByteSize() for r in responses]
    assert len(responses) >= 3, sizes
    assert max(sizes) <= RESPONSE_MESSAGE_BYTES, sizes
    assert [r.more for r in responses] == [True] * (len(responses) - 2) + [False, False]
    big_results = [result for r in responses[:-1] for result in r.responses]
    assert [(r.error_code, r.page, r.lsn) for r in big_results] == [(0, db.expected(b), db.lsn) for b in range(MAX_PAGES_PER_MESSAGE)]
    assert [r.page for r in responses[-1].responses] == [db.last, bytes(PAGE_SIZE)]


def test_read_pages_batches_under_the_cap_and_joins_split_answers(cluster: Cluster, db: Db) -> None:
    """The client asked for a batch over the cap sends capped messages and joins
    the split answers back in order."""
    keys = [(1, b) for b in range(MAX_PAGES_PER_MESSAGE)] * 2 + [(1, MAX_PAGES_PER_MESSAGE - 1)]
    pages = cluster.client.read_pages(
        tenant_id=db.tenant_id, timeline_id=db.timeline_id, keys=keys, lsn=db.lsn, batch=4 * MAX_PAGES_PER_MESSAGE
    )
    assert pages == [db.expected(b) for _, b in keys]


def test_failed_pages_of_a_message_are_logged_once_with_a_count(cluster: Cluster, db: Db) -> None:
    start = cluster.ps.log_path.stat().st_size
    failing = page_pb2.GetPagesRequest(
        requests=[db.request(0, tenant_id=UNKNOWN) for _ in range(500)] + [db.request(0)] + [db.request(MAX_PAGES_PER_MESSAGE + 5)]
    )
    [response] = list(cluster.client.get_pages([failing]))
    codes = [r.error_code for r in response.responses]
    assert codes == [grpc.StatusCode.NOT_FOUND.value[0]] * 500 + [0, grpc.StatusCode.OUT_OF_RANGE.value[0]]
    # The line is written before the answer is sent.
    lines = rpc_failed_lines(cluster.ps, "GetPages", start)
    assert len(lines) == 1, lines
    assert "failed=501" in lines[0] and "pages=502" in lines[0] and UNKNOWN in lines[0], lines[0]


# -- numeric fields -----------------------------------------------------------------


@pytest.mark.parametrize("ttl_seconds", [1 << 63, (1 << 64) - 1, 100 * 365 * 24 * 3600 + 1])
def test_a_ttl_out_of_range_is_invalid_argument_and_creates_nothing(cluster: Cluster, db: Db, ttl_seconds: int) -> None:
    c = cluster.client
    timeline_id = new_id()
    with pytest.raises(grpc.RpcError) as caught:
        c.create_timeline(tenant_id=db.tenant_id, timeline_id=timeline_id, ttl_seconds=ttl_seconds)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert f"ttl_seconds={ttl_seconds}" in caught.value.details()
    listed = {tl.timeline_id for tl in c.list_timelines(tenant_id=db.tenant_id).timelines}
    assert timeline_id not in listed and db.timeline_id in listed
    assert not (cluster.ps.data_dir / "tenants" / db.tenant_id / "timelines" / timeline_id).exists()


def test_pitr_seconds_out_of_range_is_invalid_argument(cluster: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        cluster.client.create_tenant(page_size=PAGE_SIZE, pitr_seconds=1 << 63)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert f"pitr_seconds={1 << 63}" in caught.value.details()


def test_the_longest_ttl_is_stored_and_listed_across_a_restart(cluster: Cluster, db: Db) -> None:
    """The largest ttl_seconds accepted makes a timeline that ListTimelines shows,
    before and after a restart (a ttl of 2^63 once made one it could not)."""
    c = cluster.client
    tenant_id = c.create_tenant(page_size=PAGE_SIZE).tenant_id
    with pytest.raises(grpc.RpcError):
        c.create_timeline(tenant_id=tenant_id, ttl_seconds=1 << 63)
    longest = c.create_timeline(tenant_id=tenant_id, ttl_seconds=100 * 365 * 24 * 3600)
    assert longest.expires_at_us > 0
    cluster.ps.stop()
    cluster.ps.start()
    with Client(pageserver=cluster.ps.address, walservice=cluster.wal.address) as again:
        [listed] = again.list_timelines(tenant_id=tenant_id).timelines
        assert (listed.timeline_id, listed.expires_at_us) == (longest.timeline_id, longest.expires_at_us)
        assert again.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=0, lsn=db.lsn).page == bytes(PAGE_SIZE)


# -- log lines ----------------------------------------------------------------------


def test_control_characters_of_request_ids_are_escaped_in_log_lines(cluster: Cluster) -> None:
    start = cluster.ps.log_path.stat().st_size
    hostile = "ab\x00cd\x1b[31m\r\x07\u2028ef"
    with pytest.raises(grpc.RpcError) as caught:
        cluster.client.get_page(tenant_id=hostile, timeline_id=UNKNOWN, rel=1, blkno=0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw = cluster.ps.log_path.read_bytes()[start:]
    for char in ("\x00", "\x1b", "\r", "\x07", "\u2028"):
        assert char.encode() not in raw, (char, raw)
    [line] = rpc_failed_lines(cluster.ps, "GetPage", start)
    assert 'tenant="ab\\x00cd\\x1b[31m\\r\\x07\\u2028ef"' in line, line


@pytest.mark.parametrize("field, value", [("pitr_seconds", 1 << 63), ("page_size", 1 << 20), ("generation", -1)])
def test_tenant_json_is_read_back_under_the_bounds_it_was_written_with(field: str, value: int) -> None:
    good = TenantConfig(new_id(), PAGE_SIZE, 3600, 2)
    assert TenantConfig.decode(good.encode(), "tenant.json") == good
    bad = replace(good, **{field: value}).encode()
    with pytest.raises(CorruptionError, match=rf"tenant.json: {field}={value} is out of range"):
        TenantConfig.decode(bad, "tenant.json")


# -- undecodable requests -----------------------------------------------------------


@pytest.mark.parametrize(
    "method, request_type",
    [("PageService/GetPage", "GetPageRequest"), ("TimelineService/CreateTenant", "CreateTenantRequest"), ("PageService/GetPages", "GetPagesRequest")],
)
def test_request_bytes_that_are_not_protobuf_are_invalid_argument(cluster: Cluster, method: str, request_type: str) -> None:
    """Garbage where a request belongs: INVALID_ARGUMENT naming the message type,
    not grpc's UNKNOWN from a failed deserializer (unary and GetPages alike)."""
    channel = cluster.ps.channel()
    path = f"/strata.v1.{method}"
    for garbage in (b"\x0a\x05ab", b"\xff" * 64):
        with pytest.raises(grpc.RpcError) as caught:
            if method.endswith("GetPages"):
                list(channel.stream_stream(path, request_serializer=None, response_deserializer=None)(iter([garbage]), timeout=10))
            else:
                channel.unary_unary(path, request_serializer=None, response_deserializer=None)(garbage, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{caught.value.code()}: {caught.value.details()}"
        assert request_type in caught.value.details()
