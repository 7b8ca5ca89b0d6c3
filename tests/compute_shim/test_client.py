"""compute_shim.Client's retries and leader following, against in-process gRPC
servers whose answers each test scripts (and one real stack, for interceptors).

A scripted server answers each call with the next entry of its script: a
response, or (code, leader hint or None); when the script runs out it answers OK.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from compute_shim import Client
from compute_shim.client import LEADER_METADATA_KEY
from strata.v1 import records_pb2, timeline_pb2, timeline_pb2_grpc, wal_pb2, wal_pb2_grpc
from tests.compute_shim.conftest import Stack

Fault = tuple[grpc.StatusCode, str | None]


@dataclass
class Script:
    faults: list[Fault] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, context: grpc.ServicerContext) -> bool:
        """Records the call; aborts it when the script says so (returns False)."""
        with self.lock:
            self.calls.append(method)
            fault = self.faults.pop(0) if self.faults else None
        if fault is None:
            return True
        code, hint = fault
        if hint is not None:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, hint),))
        context.abort(code, f"scripted {code.name}")
        return False


class FakeWal(wal_pb2_grpc.WalServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Status(self, request: records_pb2.TimelineRef, context: grpc.ServicerContext) -> wal_pb2.WalStatus:
        self.script.answer("Status", context)
        return wal_pb2.WalStatus(commit_lsn=42)

    def Append(self, request: wal_pb2.AppendRequest, context: grpc.ServicerContext) -> wal_pb2.AppendResponse:
        self.script.answer("Append", context)
        return wal_pb2.AppendResponse(end_lsn=7)


class FakeTimelines(timeline_pb2_grpc.TimelineServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def GetTimeline(self, request: records_pb2.TimelineRef, context: grpc.ServicerContext) -> timeline_pb2.TimelineInfo:
        self.script.answer("GetTimeline", context)
        return timeline_pb2.TimelineInfo(timeline_id=request.timeline_id)

    def DeleteTimeline(self, request: records_pb2.TimelineRef, context: grpc.ServicerContext) -> timeline_pb2.TimelineInfo:
        self.script.answer("DeleteTimeline", context)
        return timeline_pb2.TimelineInfo(timeline_id=request.timeline_id)


@dataclass
class Server:
    address: str
    script: Script
    server: grpc.Server


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(kind: str, faults: list[Fault] | None = None) -> Server:
        script = Script(list(faults or []))
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        if kind == "wal":
            wal_pb2_grpc.add_WalServiceServicer_to_server(FakeWal(script), server)
        else:
            timeline_pb2_grpc.add_TimelineServiceServicer_to_server(FakeTimelines(script), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return Server(f"127.0.0.1:{port}", script, server)

    yield start
    for s in servers:
        s.stop(None)


UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, None)


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_is_exact_for_safe_calls(serve: Any, retries: int) -> None:
    wal = serve("wal", [UNAVAILABLE] * 10)
    ps = serve("ps", [UNAVAILABLE] * 10)
    with Client(pageserver=ps.address, walservice=wal.address, retries=retries, timeout=10) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.status(tenant_id="t", timeline_id="l")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            c.get_timeline(tenant_id="t", timeline_id="l")
    assert wal.script.calls == ["Status"] * (retries + 1)
    assert ps.script.calls == ["GetTimeline"] * (retries + 1)


def test_retries_succeed_within_the_budget_with_backoff(serve: Any) -> None:
    wal = serve("wal", [UNAVAILABLE] * 3)
    with Client(walservice=wal.address, retries=3, timeout=10) as c:
        started = time.monotonic()
        assert c.status(tenant_id="t", timeline_id="l").commit_lsn == 42
        elapsed = time.monotonic() - started
    assert wal.script.calls == ["Status"] * 4
    # Three backoffs of 50, 100 and 200 ms, each jittered to at least half.
    assert elapsed >= 0.17, elapsed


def test_unsafe_calls_are_not_retried_on_unavailable(serve: Any) -> None:
    wal = serve("wal", [UNAVAILABLE])
    ps = serve("ps", [UNAVAILABLE])
    with Client(pageserver=ps.address, walservice=wal.address, retries=5) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.append(tenant_id="t", timeline_id="l", expected_end_lsn=0)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            c.delete_timeline(tenant_id="t", timeline_id="l")
    assert wal.script.calls == ["Append"]
    assert ps.script.calls == ["DeleteTimeline"]


def test_other_codes_are_not_retried(serve: Any) -> None:
    wal = serve("wal", [(grpc.StatusCode.NOT_FOUND, None), (grpc.StatusCode.DEADLINE_EXCEEDED, None)])
    with Client(walservice=wal.address, retries=5) as c:
        for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED):
            with pytest.raises(grpc.RpcError) as info:
                c.status(tenant_id="t", timeline_id="l")
            assert info.value.code() == code
    assert wal.script.calls == ["Status", "Status"]


def test_append_follows_the_leader_hint(serve: Any) -> None:
    leader = serve("wal")
    follower = serve("wal", [(grpc.StatusCode.UNAVAILABLE, leader.address)])
    with Client(walservice=f"{follower.address},{leader.address}", retries=2) as c:
        assert c.append(tenant_id="t", timeline_id="l").end_lsn == 7
        assert c.wal_leader == leader.address
        c.append(tenant_id="t", timeline_id="l")  # straight to the leader now
    assert follower.script.calls == ["Append"]
    assert leader.script.calls == ["Append", "Append"]


def test_hints_count_against_retries(serve: Any) -> None:
    a = serve("wal")
    b = serve("wal")
    a.script.faults = [(grpc.StatusCode.UNAVAILABLE, b.address)] * 5
    b.script.faults = [(grpc.StatusCode.UNAVAILABLE, a.address)] * 5
    with Client(walservice=f"{a.address},{b.address}", retries=2) as c:
        with pytest.raises(grpc.RpcError):
            c.append(tenant_id="t", timeline_id="l")
    assert len(a.script.calls) + len(b.script.calls) == 3


def test_pageserver_calls_never_move_the_walservice_leader(serve: Any) -> None:
    w1 = serve("wal")
    w2 = serve("wal")
    # A pageserver answer carrying a strata-leader hint (say, relayed from the
    # walservice), then plain UNAVAILABLEs, with a walservice cluster configured.
    ps = serve("ps", [(grpc.StatusCode.UNAVAILABLE, w2.address), UNAVAILABLE, UNAVAILABLE])
    with Client(pageserver=ps.address, walservice=f"{w1.address},{w2.address}", retries=3) as c:
        assert c.get_timeline(tenant_id="t", timeline_id="l").timeline_id == "l"
        assert c.wal_leader == w1.address
        with pytest.raises(grpc.RpcError):
            ps.script.faults = [(grpc.StatusCode.UNAVAILABLE, w2.address)]
            c.delete_timeline(tenant_id="t", timeline_id="l")  # not safe: not resent
        assert c.wal_leader == w1.address
        c.status(tenant_id="t", timeline_id="l")
    assert ps.script.calls == ["GetTimeline"] * 4 + ["DeleteTimeline"]
    assert w1.script.calls == ["Status"] and w2.script.calls == []


def test_walservice_cluster_moves_on_when_no_leader_is_known(serve: Any) -> None:
    a = serve("wal", [(grpc.StatusCode.UNAVAILABLE, "")])
    b = serve("wal")
    with Client(walservice=f"{a.address},{b.address}", retries=1) as c:
        assert c.append(tenant_id="t", timeline_id="l").end_lsn == 7
        assert c.wal_leader == b.address


def test_a_call_that_never_left_is_resent(serve: Any) -> None:
    from tests.env import free_port

    dead = f"127.0.0.1:{free_port()}"
    live = serve("wal")
    with Client(walservice=f"{dead},{live.address}", retries=1, timeout=10) as c:
        assert c.append(tenant_id="t", timeline_id="l").end_lsn == 7
        assert c.wal_leader == live.address


def test_a_node_that_comes_back_is_reached_within_a_second() -> None:
    """A walservice node down for a while (its port refusing connections) and then
    back: the client's channel to it is in gRPC's reconnect backoff, which by
    default has grown to ~2.5 s after 6 s of failed connects. The client caps it
    at 0.5 s, so it reaches the node well inside the retries that ride out an
    election (a cluster test failed on this, now and then)."""
    from tests.env import free_port

    address = f"127.0.0.1:{free_port()}"
    with Client(walservice=address, retries=0, timeout=1) as c:
        down_until = time.monotonic() + 6.0
        while time.monotonic() < down_until:
            with pytest.raises(grpc.RpcError):
                c.append(tenant_id="t", timeline_id="l")
            time.sleep(0.05)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        wal_pb2_grpc.add_WalServiceServicer_to_server(FakeWal(Script()), server)
        assert server.add_insecure_port(address)
        server.start()
        try:
            back = time.monotonic()
            while True:
                try:
                    assert c.append(tenant_id="t", timeline_id="l").end_lsn == 7
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() - back < 1.5, "the node was back, but the client could not reach it for 1.5 s"
                    time.sleep(0.02)
        finally:
            server.stop(None)


class FaultInjector(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Fails the first `fail` unary calls with UNAVAILABLE before they leave; counts every call."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.methods: list[str] = []

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        self.methods.append(details.method)
        if self.fail > 0:
            self.fail -= 1
            raise _Unavailable()
        return continuation(details, request)

    def intercept_stream_stream(self, continuation: Any, details: grpc.ClientCallDetails, request_iterator: Any) -> Any:
        self.methods.append(details.method)
        return continuation(details, request_iterator)


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "injected"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_interceptors_apply_to_every_channel(stack: Stack) -> None:
    injector = FaultInjector(fail=2)
    with Client(
        pageserver=stack.pageserver.address, walservice=stack.walservice.address, retries=2, interceptors=[injector]
    ) as c:
        tenant = c.list_tenants().tenants[0].tenant_id  # two injected failures, then through
        timeline = c.create_timeline(tenant_id=tenant).timeline_id
        c.status(tenant_id=tenant, timeline_id=timeline)
        c.read_pages(tenant_id=tenant, timeline_id=timeline, keys=[(1, 0)])
    assert injector.methods == [
        "/strata.v1.TimelineService/ListTenants",
        "/strata.v1.TimelineService/ListTenants",
        "/strata.v1.TimelineService/ListTenants",
        "/strata.v1.TimelineService/CreateTimeline",
        "/strata.v1.WalService/Status",
        "/strata.v1.PageService/GetPages",
    ]
    injector.fail = 3
    with Client(pageserver=stack.pageserver.address, retries=2, interceptors=[injector]) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.list_tenants()
        assert info.value.details() == "injected"
