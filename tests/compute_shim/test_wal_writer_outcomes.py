"""WalWriter's resend rule against scripted AppendStream servers (in process):
an append is resent elsewhere only when a node said not_leader (nothing was
applied); an ambiguous UNAVAILABLE, a broken stream or a deadline raise
AppendFailed(outcome_unknown=True) and are never resent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from compute_shim import AppendFailed, WalWriter
from strata.v1 import wal_pb2

T, TL = "a" * 32, "b" * 32
Answer = Callable[[wal_pb2.AppendRequest], "wal_pb2.AppendOutcome | None"]


class ScriptedNode:
    """An AppendStream endpoint that answers each append with `answer(request)`
    (None: never answers) and counts what it received."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received = 0
        self.server = grpc.aio.server()
        self.address = ""

    async def AppendStream(
        self, requests: AsyncIterator[wal_pb2.AppendStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wal_pb2.AppendStreamResponse]:
        async for message in requests:
            outcomes = []
            for request in message.appends:
                self.received += 1
                outcome = self.answer(request)
                if outcome is None:
                    await asyncio.sleep(3600)
                outcomes.append(outcome)
            yield wal_pb2.AppendStreamResponse(outcomes=outcomes)

    async def start(self) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            self.AppendStream,
            request_deserializer=wal_pb2.AppendStreamRequest.FromString,
            response_serializer=wal_pb2.AppendStreamResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("strata.v1.WalService", {"AppendStream": handler}),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(0)


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def ok(request: wal_pb2.AppendRequest) -> wal_pb2.AppendOutcome:
    return wal_pb2.AppendOutcome(response=wal_pb2.AppendResponse(start_lsn=0, end_lsn=10, record_lsns=[10], term=2))


async def two_nodes(first: Answer, second: Answer) -> tuple[ScriptedNode, ScriptedNode]:
    nodes = ScriptedNode(first), ScriptedNode(second)
    for node in nodes:
        await node.start()
    return nodes


async def append(wal: WalWriter) -> wal_pb2.AppendResponse:
    return await wal.append(tenant_id=T, timeline_id=TL, records=[])


def test_not_leader_is_resent_to_the_named_leader() -> None:
    async def body() -> None:
        b = ScriptedNode(ok)
        await b.start()
        a = ScriptedNode(
            lambda r: wal_pb2.AppendOutcome(error_code=UNAVAILABLE, error="not the leader", leader=b.address, not_leader=True)
        )
        await a.start()
        async with WalWriter(f"{a.address},{b.address}") as wal:
            assert (await append(wal)).end_lsn == 10
        assert (a.received, b.received) == (1, 1)
        await a.stop()
        await b.stop()

    asyncio.run(body())


def test_ambiguous_unavailable_is_not_resent() -> None:
    async def body() -> None:
        a, b = await two_nodes(lambda r: wal_pb2.AppendOutcome(error_code=UNAVAILABLE, error="no quorum"), ok)
        async with WalWriter(f"{a.address},{b.address}") as wal:
            with pytest.raises(AppendFailed) as caught:
                await append(wal)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.outcome_unknown
        assert (a.received, b.received) == (1, 0)  # a blind resend to b could apply it twice
        await a.stop()
        await b.stop()

    asyncio.run(body())


def test_a_definite_refusal_is_not_outcome_unknown() -> None:
    async def body() -> None:
        invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        a, b = await two_nodes(lambda r: wal_pb2.AppendOutcome(error_code=invalid, error="bad record"), ok)
        async with WalWriter(a.address) as wal:
            with pytest.raises(AppendFailed) as caught:
                await append(wal)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and not caught.value.outcome_unknown
        await a.stop()
        await b.stop()

    asyncio.run(body())


def test_an_unanswered_append_times_out_as_outcome_unknown() -> None:
    async def body() -> None:
        a, b = await two_nodes(lambda r: None, ok)
        wal = WalWriter(f"{a.address},{b.address}", append_timeout=0.5)
        with pytest.raises(AppendFailed) as caught:
            await append(wal)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and caught.value.outcome_unknown
        assert b.received == 0
        await a.stop()  # breaks the stream: the timed-out append is not resent either
        await asyncio.sleep(0.2)
        await wal.close()
        assert b.received == 0
        await b.stop()

    asyncio.run(body())


def test_a_broken_stream_fails_in_flight_appends_as_outcome_unknown() -> None:
    async def body() -> None:
        a, b = await two_nodes(lambda r: None, ok)
        async with WalWriter(f"{a.address},{b.address}") as wal:
            task = asyncio.create_task(append(wal))
            while a.received == 0:
                await asyncio.sleep(0.01)
            await a.stop()
            with pytest.raises(AppendFailed) as caught:
                await task
        assert caught.value.outcome_unknown
        assert b.received == 0
        await b.stop()

    asyncio.run(body())
