"""`compute_shim.Client`: one method per RPC of the strata.v1 contract.

    c = Client(pageserver="127.0.0.1:6400", walservice="127.0.0.1:7676")
    tenant = c.create_tenant(page_size=8192).tenant_id
    main = c.create_timeline(tenant_id=tenant).timeline_id

Methods are the RPC names in snake_case, take the request's fields as keyword
arguments and return the response message. The two services' CreateTimeline
RPCs collide: `create_timeline` is the pageserver's (it registers the timeline
with the walservice itself) and `wal_create_timeline` the walservice's.

Every call has a deadline (`timeout`, default 30 s). Calls that are safe to
repeat (reads, Status, idempotent creates) are retried on UNAVAILABLE with
backoff and jitter. Append is retried only when the node said it is not the
leader (it then applied nothing): the node's `strata-leader` trailing metadata
names the leader, and the client follows it; with a cluster
(`walservice="A,B,C"`) a node that cannot be reached at all (the call never
left) or that knows no leader sends the client on to the next node. Errors surface as grpc.RpcError
with the contract's codes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from compute_shim.page_cache import DEFAULT_CACHE_BYTES, PageCache
from strata.v1 import page_pb2, page_pb2_grpc, records_pb2, timeline_pb2, timeline_pb2_grpc, wal_pb2, wal_pb2_grpc

T = TypeVar("T")
LEADER_METADATA_KEY = "strata-leader"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class PageError(Exception):
    """One failed page of a `get_pages` batch."""

    code: grpc.StatusCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def _leader_hint(exc: grpc.RpcError) -> str | None:
    """The `strata-leader` trailing metadata of an UNAVAILABLE answer: the leader's
    address, "" when the node knows none (it applied nothing either way), None
    when absent."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            return value
    return None


def _not_sent(exc: grpc.RpcError) -> bool:
    """The call never reached a server (connection refused): safe to send elsewhere."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "").lower()


class Client:
    def __init__(
        self,
        pageserver: str | None = None,
        walservice: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        page_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.timeout = timeout
        # Page versions for compute nodes on this client (compute_shim/page_cache.py).
        self.page_cache = PageCache(page_cache_bytes)
        self.retries = retries
        self._page_channel = grpc.insecure_channel(pageserver, options=_CHANNEL_OPTIONS) if pageserver else None
        self._wal_nodes = [a for a in (walservice or "").split(",") if a]
        self._wal_lock = threading.Lock()  # guards _wal_leader and _wal_channels
        self._wal_leader = self._wal_nodes[0] if self._wal_nodes else None
        self._wal_channels: dict[str, grpc.Channel] = {}

    # -- plumbing -----------------------------------------------------------------

    def close(self) -> None:
        if self._page_channel is not None:
            self._page_channel.close()
        with self._wal_lock:
            for ch in self._wal_channels.values():
                ch.close()
            self._wal_channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pageserver(self) -> grpc.Channel:
        if self._page_channel is None:
            raise ValueError("this Client has no pageserver address: pass pageserver='HOST:PORT'")
        return self._page_channel

    def _wal_channel(self, address: str) -> grpc.Channel:
        with self._wal_lock:
            ch = self._wal_channels.get(address)
            if ch is None:
                ch = self._wal_channels[address] = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            return ch

    def _wal_stub(self) -> tuple[str, wal_pb2_grpc.WalServiceStub]:
        if self._wal_leader is None:
            raise ValueError("this Client has no walservice address: pass walservice='HOST:PORT[,HOST:PORT...]'")
        address = self._wal_leader
        return address, wal_pb2_grpc.WalServiceStub(self._wal_channel(address))

    def _next_wal_node(self, hint: str | None) -> None:
        """Follow a leader hint, or go on to the next node of the cluster."""
        with self._wal_lock:
            if hint:
                self._wal_leader = hint
            elif self._wal_leader in self._wal_nodes:
                self._wal_leader = self._wal_nodes[(self._wal_nodes.index(self._wal_leader) + 1) % len(self._wal_nodes)]
            else:
                self._wal_leader = self._wal_nodes[0]

    def _retrying(self, call: Callable[[float], T], *, retry_unavailable: bool, timeout: float | None) -> T:
        deadline = time.monotonic() + (timeout or self.timeout)
        backoff = 0.05
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return call(max(remaining, 0.001))
            except grpc.RpcError as exc:
                hint = _leader_hint(exc)
                # A node that is not the leader, or one not reached at all, applied
                # nothing: go where the hint says (or to the next node) until the deadline.
                moved = hint is not None or (len(self._wal_nodes) > 1 and (_not_sent(exc) or retry_unavailable))
                if moved and exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() + backoff < deadline:
                    self._next_wal_node(hint)
                    if not hint:
                        time.sleep(backoff * (0.5 + random.random()))
                        backoff = min(backoff * 2, 0.5)
                    continue
                attempt += 1
                retryable = retry_unavailable and exc.code() == grpc.StatusCode.UNAVAILABLE
                if not retryable or attempt > self.retries or time.monotonic() + backoff >= deadline:
                    raise
                time.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)

    def _page_call(self, stub_cls: Any, method: str, request: Any, timeout: float | None, idempotent: bool = True) -> Any:
        stub = stub_cls(self._pageserver())
        return self._retrying(lambda t: getattr(stub, method)(request, timeout=t), retry_unavailable=idempotent, timeout=timeout)

    def _wal_call(self, method: str, request: Any, timeout: float | None, idempotent: bool) -> Any:
        def once(t: float) -> Any:
            _, stub = self._wal_stub()
            return getattr(stub, method)(request, timeout=t)

        return self._retrying(once, retry_unavailable=idempotent, timeout=timeout)

    # -- WalService ---------------------------------------------------------------

    def wal_create_timeline(self, *, timeout: float | None = None, **fields: Any) -> wal_pb2.WalStatus:
        return self._wal_call("CreateTimeline", wal_pb2.WalTimeline(**fields), timeout, idempotent=True)

    def append(self, *, timeout: float | None = None, **fields: Any) -> wal_pb2.AppendResponse:
        """fields: tenant_id, timeline_id, records (Record messages), expected_end_lsn."""
        return self._wal_call("Append", wal_pb2.AppendRequest(**fields), timeout, idempotent=False)

    def append_stream(
        self, requests: Iterable[wal_pb2.AppendStreamRequest], *, timeout: float | None = None
    ) -> Iterator[wal_pb2.AppendStreamResponse]:
        """The raw bidi stream: one response per request message, in order, one
        outcome per append. Not retried (appends are not idempotent); for many
        concurrent writers use `compute_shim.WalWriter`, which packs their appends."""
        _, stub = self._wal_stub()
        return stub.AppendStream(iter(requests), timeout=timeout or self.timeout)

    def stream(self, *, timeout: float | None = None, **fields: Any) -> Iterator[wal_pb2.WalBatch]:
        """fields: tenant_id, timeline_id, start_lsn. Follows live commits until cancelled or `timeout`."""
        _, stub = self._wal_stub()
        return stub.Stream(wal_pb2.StreamRequest(**fields), timeout=timeout)

    def status(self, *, timeout: float | None = None, **fields: Any) -> wal_pb2.WalStatus:
        return self._wal_call("Status", records_pb2.TimelineRef(**fields), timeout, idempotent=True)

    def report_persisted(self, *, timeout: float | None = None, **fields: Any) -> wal_pb2.WalStatus:
        return self._wal_call("ReportPersisted", wal_pb2.PersistedRequest(**fields), timeout, idempotent=True)

    def wal_delete_timeline(self, *, timeout: float | None = None, **fields: Any) -> wal_pb2.WalDeleteTimelineResponse:
        """fields: tenant_id, timeline_id. Deletes the timeline's WAL on the
        walservice (every node when replicated) and its offloaded WAL.
        Idempotent: a timeline that is gone already answers existed=False."""
        return self._wal_call("DeleteTimeline", wal_pb2.WalDeleteTimelineRequest(**fields), timeout, idempotent=True)

    # -- PageService --------------------------------------------------------------

    def get_page(self, *, timeout: float | None = None, **fields: Any) -> page_pb2.GetPageResponse:
        return self._page_call(page_pb2_grpc.PageServiceStub, "GetPage", page_pb2.GetPageRequest(**fields), timeout)

    def get_rel_size(self, *, timeout: float | None = None, **fields: Any) -> page_pb2.RelSizeResponse:
        return self._page_call(page_pb2_grpc.PageServiceStub, "GetRelSize", page_pb2.RelRequest(**fields), timeout)

    def get_pages(
        self, requests: Iterable[page_pb2.GetPagesRequest], *, timeout: float | None = None
    ) -> Iterator[page_pb2.GetPagesResponse]:
        """The raw bidi stream: one response message per request message, in order."""
        stub = page_pb2_grpc.PageServiceStub(self._pageserver())
        return stub.GetPages(iter(requests), timeout=timeout or self.timeout)

    def read_pages(
        self,
        *,
        tenant_id: str,
        timeline_id: str,
        keys: Iterable[tuple[int, int]],
        lsn: int = 0,
        batch: int = 64,
        timeout: float | None = None,
    ) -> list[bytes | PageError]:
        """Pages (rel, blkno) at one LSN over one GetPages stream, `batch` per
        message; the stream is retried whole on UNAVAILABLE (reads are safe to repeat)."""
        keys = list(keys)
        messages = [
            page_pb2.GetPagesRequest(
                requests=[
                    page_pb2.GetPageRequest(tenant_id=tenant_id, timeline_id=timeline_id, rel=rel, blkno=blkno, lsn=lsn)
                    for rel, blkno in keys[i : i + batch]
                ]
            )
            for i in range(0, len(keys), batch)
        ]
        stub = page_pb2_grpc.PageServiceStub(self._pageserver())
        responses = self._retrying(
            lambda t: list(stub.GetPages(iter(messages), timeout=t)), retry_unavailable=True, timeout=timeout
        )
        out: list[bytes | PageError] = []
        for response in responses:
            for result in response.responses:
                if result.error_code:
                    out.append(PageError(status_code_of(result.error_code), result.error))
                else:
                    out.append(result.page)
        return out

    # -- TimelineService ------------------------------------------------------------

    def _timeline_call(self, method: str, request: Any, timeout: float | None, idempotent: bool = True) -> Any:
        return self._page_call(timeline_pb2_grpc.TimelineServiceStub, method, request, timeout, idempotent)

    def create_tenant(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TenantInfo:
        return self._timeline_call("CreateTenant", timeline_pb2.CreateTenantRequest(**fields), timeout, idempotent=bool(fields.get("tenant_id")))

    def list_tenants(self, *, timeout: float | None = None) -> timeline_pb2.ListTenantsResponse:
        return self._timeline_call("ListTenants", timeline_pb2.ListTenantsRequest(), timeout)

    def delete_tenant(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TenantInfo:
        return self._timeline_call("DeleteTenant", timeline_pb2.TenantRef(**fields), timeout, idempotent=False)

    def create_timeline(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call(
            "CreateTimeline", timeline_pb2.CreateTimelineRequest(**fields), timeout, idempotent=bool(fields.get("timeline_id"))
        )

    def get_timeline(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call("GetTimeline", records_pb2.TimelineRef(**fields), timeout)

    def list_timelines(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.ListTimelinesResponse:
        return self._timeline_call("ListTimelines", timeline_pb2.TenantRef(**fields), timeout)

    def delete_timeline(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call("DeleteTimeline", records_pb2.TimelineRef(**fields), timeout, idempotent=False)

    def get_lsn_by_timestamp(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.LsnByTimestampResponse:
        return self._timeline_call("GetLsnByTimestamp", timeline_pb2.LsnByTimestampRequest(**fields), timeout)

    def compact(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call("Compact", records_pb2.TimelineRef(**fields), timeout)

    def gc(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call("Gc", records_pb2.TimelineRef(**fields), timeout)

    def attach_tenant(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TenantInfo:
        return self._timeline_call("AttachTenant", timeline_pb2.TenantRef(**fields), timeout)

    def detach_tenant(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TenantInfo:
        return self._timeline_call("DetachTenant", timeline_pb2.TenantRef(**fields), timeout)


def status_code_of(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN
