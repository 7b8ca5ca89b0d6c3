"""The PeerAppend connection (walservice/peer_stream.py): a real listening socket
on a loopback port chosen by the OS, with the test's own answer function in place of
a timeline; the process-level replication tests run it between real nodes."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
import pytest

from strata.errors import NotFound
from strata.logs import event_logger
from strata.v1 import peer_pb2
from walservice.peer_stream import (
    HEADER,
    KIND_REQUEST,
    MAGIC,
    PREAMBLE,
    PeerAppendConnection,
    PeerStreamRefused,
    PeerStreamServer,
    encode_message,
)

Answer = Callable[[peer_pb2.PeerAppendRequest], Awaitable[peer_pb2.PeerAppendResponse]]


async def echo_flush(request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
    """Answers as a follower that wrote the frames would: flush_lsn = their end."""
    return peer_pb2.PeerAppendResponse(term=request.term, ok=True, flush_lsn=request.start_lsn + len(request.frames))


@asynccontextmanager
async def serving(answer: Answer = echo_flush, max_bytes: int = 1 << 20) -> AsyncIterator[tuple[PeerStreamServer, int]]:
    server = PeerStreamServer(answer, event_logger("walservice"), max_bytes)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.close()


def request(start_lsn: int, frames: bytes = b"", term: int = 2) -> peer_pb2.PeerAppendRequest:
    return peer_pb2.PeerAppendRequest(tenant_id="a" * 32, timeline_id="b" * 32, term=term, leader_id=1,
                                      start_lsn=start_lsn, frames=frames)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes on a new connection; return all the server sent until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        received = await reader.read()
    writer.close()
    return received


def test_requests_are_answered_in_order_on_one_connection() -> None:
    async def body() -> None:
        async with serving() as (_, port):
            conn = await PeerAppendConnection.open("127.0.0.1", port)
            start = 0
            for i in range(50):
                frames = bytes([i]) * (i * 37)
                answer = await conn.exchange(request(start, frames))
                assert answer.ok and answer.flush_lsn == start + len(frames)
                start = answer.flush_lsn
            big = b"x" * (512 * 1024)  # several TCP segments
            assert (await conn.exchange(request(start, big))).flush_lsn == start + len(big)
            conn.close()

    asyncio.run(body())


def test_an_error_answer_names_its_code_and_ends_the_connection() -> None:
    async def lacks_timeline(req: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        raise NotFound(f"tenant_id={req.tenant_id} timeline_id={req.timeline_id}: no such timeline")

    async def body() -> None:
        async with serving(lacks_timeline) as (_, port):
            conn = await PeerAppendConnection.open("127.0.0.1", port)
            with pytest.raises(PeerStreamRefused) as info:
                await conn.exchange(request(0))
            assert info.value.code == grpc.StatusCode.NOT_FOUND
            assert "no such timeline" in str(info.value)
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await conn.exchange(request(0))  # the follower closed it
            conn.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a Strata peer connection"),
        (MAGIC + bytes([9]), "version 9"),
        (PREAMBLE + HEADER.pack(KIND_REQUEST, 3, 12345) + b"abc", "checksum mismatch"),
        (PREAMBLE + HEADER.pack(KIND_REQUEST, 2 << 20, 0), "over the limit"),
        (PREAMBLE + HEADER.pack(7, 0, 0), "unknown message kind 7"),
        (PREAMBLE + encode_message(KIND_REQUEST, b"\xff\xff\xff"), "undecodable PeerAppendRequest"),
    ],
)
def test_a_bad_connection_is_refused_and_logged(garbage: bytes, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    answered: list[peer_pb2.PeerAppendRequest] = []

    async def record(req: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        answered.append(req)
        return await echo_flush(req)

    async def body() -> None:
        async with serving(record) as (_, port):
            received = await raw_exchange(port, garbage)
            assert b"ok" not in received and len(received) <= len(PREAMBLE)  # no answer, then closed
            # The server goes on taking good connections.
            conn = await PeerAppendConnection.open("127.0.0.1", port)
            assert (await conn.exchange(request(5, b"abc"))).flush_lsn == 8
            conn.close()

    with caplog.at_level(logging.WARNING, logger="strata.walservice"):
        asyncio.run(body())
    assert len(answered) == 1
    lines = [r.getMessage() for r in caplog.records if "event=peer_stream_refused" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], lines


def test_a_client_reading_a_garbled_answer_fails_clearly() -> None:
    """A follower whose answer fails its checksum: the leader's exchange raises
    (its Replicator then closes the connection and resends on a new one)."""

    async def body() -> None:
        async def bad_follower(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(len(PREAMBLE))
            writer.write(PREAMBLE + HEADER.pack(2, 4, 1) + b"oops")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(bad_follower, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await PeerAppendConnection.open("127.0.0.1", port)
        with pytest.raises(Exception, match="checksum mismatch"):
            await conn.exchange(request(0))
        conn.close()
        server.close()
        await server.wait_closed()

    asyncio.run(body())


def test_end_streams_closes_idle_connections_and_finishes_a_busy_answer() -> None:
    """Shutdown: a connection waiting for its next request ends at once; one whose
    request is being answered gets that answer, then ends; no new connection is taken."""
    release = asyncio.Event()

    async def slow(req: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        if req.frames == b"slow":
            await release.wait()
        return await echo_flush(req)

    async def body() -> None:
        async with serving(slow) as (server, port):
            idle = await PeerAppendConnection.open("127.0.0.1", port)
            await idle.exchange(request(0, b"a"))
            busy = await PeerAppendConnection.open("127.0.0.1", port)
            pending = asyncio.ensure_future(busy.exchange(request(0, b"slow")))
            await asyncio.sleep(0.1)
            server.end_streams()
            async with asyncio.timeout(5):
                assert await idle.reader.read() == b""  # closed by the server, unanswered
            release.set()
            async with asyncio.timeout(5):
                assert (await pending).flush_lsn == 4
                assert await busy.reader.read() == b""
            with pytest.raises(OSError):
                await PeerAppendConnection.open("127.0.0.1", port)
            idle.close()
            busy.close()

    asyncio.run(body())


def test_header_layout_is_as_documented() -> None:
    """kind u8 | length u32 | xxh64 u64, little-endian, as the module docstring states."""
    import xxhash

    message = encode_message(KIND_REQUEST, b"hello")
    assert message == struct.pack("<BIQ", 1, 5, xxhash.xxh64_intdigest(b"hello")) + b"hello"
    assert PREAMBLE == b"STRATAPEER\x01"


def test_a_host_name_with_several_addresses_listens_on_one_port() -> None:
    """`localhost` may be both ::1 and 127.0.0.1: with port 0 each address would get
    its own free port, and a leader told one of them could dial the other address."""

    async def body() -> None:
        server = PeerStreamServer(echo_flush, event_logger("walservice"), 1 << 20)
        port = await server.start("localhost", 0)
        try:
            assert {sock.getsockname()[1] for sock in server._server.sockets} == {port}  # type: ignore[union-attr]
            conn = await PeerAppendConnection.open("localhost", port)
            assert (await conn.exchange(request(0, b"ab"))).flush_lsn == 2
            conn.close()
        finally:
            await server.close()

    asyncio.run(body())
