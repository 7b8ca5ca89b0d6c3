"""`compute_shim.Client`: one method per RPC of the strata.v1 contract.

    c = Client(pageserver="127.0.0.1:6400", walservice="127.0.0.1:7676")
    tenant = c.create_tenant(page_size=8192).tenant_id
    main = c.create_timeline(tenant_id=tenant).timeline_id

Methods are the RPC names in snake_case, take the request's fields as keyword
arguments and return the response message. The two services' CreateTimeline
RPCs collide: `create_timeline` is the pageserver's (it registers the timeline
with the walservice itself) and `wal_create_timeline` the walservice's.

Every call has a deadline (`timeout`, default 30 s), and the deadline bounds
all of its attempts together. `retries` is exact: a call is sent at most
`retries + 1` times, whatever the reason for each resend. A call is sent again
only when that is safe:

- UNAVAILABLE on a call that is safe to repeat (reads, Status, idempotent
  creates), after a backoff with jitter (50 ms doubling to 1 s);
- UNAVAILABLE from a walservice node that is not the leader (it applied
  nothing): its `strata-leader` trailing metadata names the leader and the
  client follows it at once; with a cluster (`walservice="A,B,C"`) a node that
  knows no leader, or one that cannot be reached at all, sends the client on to
  the next node after a backoff;
- a call that never left (connection refused), after a backoff.

Only walservice calls move the client's notion of the walservice leader; a
pageserver answer never does, whatever metadata it carries. Append is never
resent after it may have reached a leader. Errors surface as grpc.RpcError
with the contract's codes.

`interceptors` (grpc client interceptors) wrap every channel the client opens,
pageserver and walservice alike: tests use them to inject faults.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from pathlib import Path

import grpc

from compute_shim.page_cache import DEFAULT_CACHE_BYTES, PageCache
from strata.grpc_channels import channel_options, open_channel
from strata.page_limits import MAX_PAGES_PER_MESSAGE
from strata.v1 import page_pb2, page_pb2_grpc, records_pb2, timeline_pb2, timeline_pb2_grpc, wal_pb2, wal_pb2_grpc

T = TypeVar("T")
LEADER_METADATA_KEY = "strata-leader"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# For every channel the compute opens (Client, WalWriter); strata/grpc_channels.py
# says why the reconnect backoff is capped.
CHANNEL_OPTIONS = channel_options(MAX_MESSAGE_BYTES)


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


ClientInterceptor = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)
# Enough attempts, with the backoff below (about 6 s in all), to ride out a
# walservice election (walservice/election.py: ELECTION_PATIENCE_S).
DEFAULT_RETRIES = 10
_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 1.0


class Client:
    def __init__(
        self,
        pageserver: str | None = None,
        walservice: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = DEFAULT_RETRIES,
        page_cache_bytes: int = DEFAULT_CACHE_BYTES,
        interceptors: Sequence[ClientInterceptor] = (),
        tls_ca: str | Path | None = None,
    ) -> None:
        """`tls_ca`: dial over TLS trusting this PEM CA (default $STRATA_TLS_CA, else
        plaintext; strata/tls.py)."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.timeout = timeout
        # Page versions for compute nodes on this client (compute_shim/page_cache.py).
        self.page_cache = PageCache(page_cache_bytes)
        self.retries = retries
        self._interceptors = list(interceptors)
        self.tls_ca = tls_ca
        self._raw_channels: list[grpc.Channel] = []  # what close() closes
        self._page_channel = self._open_channel(pageserver) if pageserver else None
        self._wal_nodes = [a for a in (walservice or "").split(",") if a]
        self._wal_lock = threading.Lock()  # guards _wal_leader, _wal_channels and _raw_channels
        self._wal_leader = self._wal_nodes[0] if self._wal_nodes else None
        self._wal_channels: dict[str, grpc.Channel] = {}

    # -- plumbing -----------------------------------------------------------------

    def _open_channel(self, address: str) -> grpc.Channel:
        raw = open_channel(address, CHANNEL_OPTIONS, tls_ca=self.tls_ca)
        self._raw_channels.append(raw)
        return grpc.intercept_channel(raw, *self._interceptors) if self._interceptors else raw

    def connect(self, timeout: float = 10.0) -> None:
        """Open the connections to the pageserver and the walservice leader now, not on
        the first call (channels connect lazily): what a pre-started compute does, so
        that its first request pays no TCP and HTTP/2 (or TLS) set-up. Raises
        `grpc.FutureTimeoutError` if one is not up within `timeout` seconds."""
        channels = [self._page_channel] if self._page_channel is not None else []
        leader = self.wal_leader
        if leader is not None:
            channels.append(self._wal_channel(leader))
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=timeout)

    def close(self) -> None:
        with self._wal_lock:
            for ch in self._raw_channels:
                ch.close()
            self._raw_channels.clear()
            self._wal_channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def walservice(self) -> str:
        """The walservice address(es) this client was given ("HOST:PORT[,HOST:PORT...]")."""
        return ",".join(self._wal_nodes)

    @property
    def wal_leader(self) -> str | None:
        """The walservice node this client sends its next walservice call to."""
        with self._wal_lock:
            return self._wal_leader

    def _pageserver(self) -> grpc.Channel:
        if self._page_channel is None:
            raise ValueError("this Client has no pageserver address: pass pageserver='HOST:PORT'")
        return self._page_channel

    def _wal_channel(self, address: str) -> grpc.Channel:
        with self._wal_lock:
            ch = self._wal_channels.get(address)
            if ch is None:
                ch = self._wal_channels[address] = self._open_channel(address)
            return ch

    def _wal_stub(self) -> tuple[str, wal_pb2_grpc.WalServiceStub]:
        with self._wal_lock:
            address = self._wal_leader
        if address is None:
            raise ValueError("this Client has no walservice address: pass walservice='HOST:PORT[,HOST:PORT...]'")
        return address, wal_pb2_grpc.WalServiceStub(self._wal_channel(address))

    def _next_wal_node(self, tried: str, hint: str | None) -> None:
        """Follow a leader hint, or go on from `tried` to the next node of the
        cluster. A no-op when another thread already moved the leader off `tried`."""
        with self._wal_lock:
            if self._wal_leader != tried:
                return
            if hint:
                self._wal_leader = hint
            elif tried in self._wal_nodes:
                self._wal_leader = self._wal_nodes[(self._wal_nodes.index(tried) + 1) % len(self._wal_nodes)]
            elif self._wal_nodes:
                self._wal_leader = self._wal_nodes[0]

    def _retrying(
        self, call: Callable[[float], T], *, idempotent: bool, timeout: float | None, wal: bool = False
    ) -> T:
        """Runs `call(remaining_seconds)` at most `self.retries + 1` times, all
        within one deadline. `wal`: the call went to `self._wal_leader` (it may
        follow leader hints and move between the cluster's nodes); pageserver
        calls pass False and never touch the walservice leader."""
        deadline = time.monotonic() + (timeout or self.timeout)
        backoff = _BACKOFF_START_S
        attempt = 0
        while True:
            target = self.wal_leader if wal else None
            attempt += 1
            try:
                return call(max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                code = exc.code()
                if code != grpc.StatusCode.UNAVAILABLE or attempt > self.retries:
                    raise
                hint = _leader_hint(exc) if wal else None
                not_sent = _not_sent(exc)
                # A node that is not the leader applied nothing; a call that never
                # left applied nothing anywhere; a safe call may be repeated anyway.
                if not (idempotent or not_sent or hint is not None):
                    raise
                if hint:
                    pause = 0.0  # told where the leader is: go there now
                else:
                    pause = backoff * (0.5 + random.random())
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                if time.monotonic() + pause >= deadline:
                    raise
                if wal and target is not None and (hint or len(self._wal_nodes) > 1):
                    self._next_wal_node(target, hint)
                if pause:
                    time.sleep(pause)

    def _page_call(self, stub_cls: Any, method: str, request: Any, timeout: float | None, idempotent: bool = True) -> Any:
        stub = stub_cls(self._pageserver())
        return self._retrying(lambda t: getattr(stub, method)(request, timeout=t), idempotent=idempotent, timeout=timeout)

    def _wal_call(self, method: str, request: Any, timeout: float | None, idempotent: bool) -> Any:
        def once(t: float) -> Any:
            _, stub = self._wal_stub()
            return getattr(stub, method)(request, timeout=t)

        return self._retrying(once, idempotent=idempotent, timeout=timeout, wal=True)

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
        """The raw bidi stream: each request message's answers in order, in one
        response message or several (all but the last with `more` set; see
        strata/page_limits.py). A request message may carry at most
        MAX_PAGES_PER_MESSAGE page requests."""
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
        message (at most MAX_PAGES_PER_MESSAGE, the pageserver's cap); answers
        split over several response messages are joined back in order. The
        stream is retried whole on UNAVAILABLE (reads are safe to repeat)."""
        keys = list(keys)
        batch = max(1, min(batch, MAX_PAGES_PER_MESSAGE))
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
        responses = self._retrying(lambda t: list(stub.GetPages(iter(messages), timeout=t)), idempotent=True, timeout=timeout)
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

    def get_timeline_by_name(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call("GetTimelineByName", timeline_pb2.TimelineNameRef(**fields), timeout)

    def list_timelines(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.ListTimelinesResponse:
        return self._timeline_call("ListTimelines", timeline_pb2.TenantRef(**fields), timeout)

    def delete_timeline(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.TimelineInfo:
        return self._timeline_call("DeleteTimeline", records_pb2.TimelineRef(**fields), timeout, idempotent=False)

    def get_lsn_by_timestamp(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.LsnByTimestampResponse:
        return self._timeline_call("GetLsnByTimestamp", timeline_pb2.LsnByTimestampRequest(**fields), timeout)

    def list_commits(self, *, timeout: float | None = None, **fields: Any) -> timeline_pb2.ListCommitsResponse:
        return self._timeline_call("ListCommits", timeline_pb2.ListCommitsRequest(**fields), timeout)

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
