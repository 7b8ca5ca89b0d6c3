"""The PeerAppend connection: a leader's Replicator sends frames to one follower
over a plain TCP connection, read and written by each process's event loop.

Why not a gRPC stream: PeerAppend is on every commit's path in a cluster. In Python
grpc.aio, each stream message crosses from gRPC's poller thread to the event loop
and back, which costs both processes context switches and CPU on every append; a
plain asyncio socket is read by the loop itself. The other WalPeer RPCs (votes,
CreateTimeline, DeleteTimeline) are rare and stay gRPC, and so does `PeerStreamPort`,
through which a leader learns where a follower listens (docs/design/0005-replication.md,
"Messages").

Wire format, version 1 (all integers little-endian):

    connection preamble, each side, once:  MAGIC b"STRATAPEER" (10 bytes) | version u8
    then messages:                          kind u8 | length u32 | xxh64(payload) u64 | payload

    kind 1  leader -> follower  payload: a serialized strata.v1.PeerAppendRequest
    kind 2  follower -> leader  payload: a serialized strata.v1.PeerAppendResponse
    kind 3  follower -> leader  payload: gRPC status code u8 | UTF-8 message; the
                                follower then closes the connection

Each request is answered by one message, in order, so the protocol is that of a unary
call. Any failure (a timeout, a closed connection, a bad checksum, an error message)
closes the connection: the pairing of requests and answers is lost, and the leader
opens a new one for its next request. The frames inside a request carry their own
checksums (walservice/segment.py); the message checksum also covers the fields around them.

Concurrency: a `PeerStreamServer` and every `PeerAppendConnection` are owned by the
event loop; one connection carries one exchange at a time (its Replicator's).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import xxhash
from google.protobuf.message import DecodeError

from strata.errors import StrataError
from strata.grpc_server import log_rpc_failure
from strata.logs import EventLogger
from strata.tls import client_ca, client_ssl_context
from strata.v1 import peer_pb2

MAGIC = b"STRATAPEER"
VERSION = 1
PREAMBLE = MAGIC + bytes([VERSION])
HEADER = struct.Struct("<BIQ")  # kind, payload length, xxh64 of the payload
KIND_REQUEST = 1
KIND_RESPONSE = 2
KIND_ERROR = 3
ERROR_HEADER = struct.Struct("<B")  # the gRPC status code's number
MAX_ANSWER_BYTES = 1 << 20  # a follower's answers are small (a few numbers and a reason)

_xxh64 = xxhash.xxh64_intdigest
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class PeerStreamError(Exception):
    """The connection broke or carried something that is not this protocol."""


class PeerStreamRefused(Exception):
    """The follower answered the request with an error (`code`, a gRPC status code)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name} {message}")
        self.code = code


def encode_message(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload), _xxh64(payload)) + payload


async def read_message(reader: asyncio.StreamReader, max_bytes: int) -> tuple[int, bytes]:
    """One message (kind, payload); PeerStreamError on a bad header or checksum,
    asyncio.IncompleteReadError when the connection ends."""
    kind, length, checksum = HEADER.unpack(await reader.readexactly(HEADER.size))
    if kind not in (KIND_REQUEST, KIND_RESPONSE, KIND_ERROR):
        raise PeerStreamError(f"unknown message kind {kind}")
    if length > max_bytes:
        raise PeerStreamError(f"a message of {length} bytes is over the limit of {max_bytes}")
    payload = await reader.readexactly(length)
    if _xxh64(payload) != checksum:
        raise PeerStreamError(f"checksum mismatch in a message of {length} bytes")
    return kind, payload


async def read_preamble(reader: asyncio.StreamReader) -> None:
    preamble = await reader.readexactly(len(PREAMBLE))
    if preamble[: len(MAGIC)] != MAGIC:
        raise PeerStreamError(f"not a Strata peer connection (it starts with {preamble!r})")
    if preamble[-1] != VERSION:
        raise PeerStreamError(f"peer connection version {preamble[-1]}; this node speaks version {VERSION}")


class PeerAppendConnection:
    """The leader's end of one connection to a follower (one Replicator's)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._greeted = False  # the follower's preamble was read

    @classmethod
    async def open(cls, host: str, port: int) -> PeerAppendConnection:
        # TLS when this node dials with a CA (--tls-ca: $STRATA_TLS_CA; strata/tls.py).
        ca = client_ca()
        tls = {"ssl": client_ssl_context(ca), "server_hostname": host} if ca is not None else {}
        reader, writer = await asyncio.open_connection(host, port, **tls)  # (asyncio sets TCP_NODELAY)
        writer.write(PREAMBLE)  # sent with the first request; read back before its answer
        return cls(reader, writer)

    async def exchange(self, request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        """Send one request and read its answer. PeerStreamRefused for the follower's
        error answer, PeerStreamError / OSError / IncompleteReadError when the
        connection fails; either way the connection is done."""
        self.writer.write(encode_message(KIND_REQUEST, request.SerializeToString()))
        await self.writer.drain()
        if not self._greeted:
            await read_preamble(self.reader)
            self._greeted = True
        kind, payload = await read_message(self.reader, MAX_ANSWER_BYTES)
        if kind == KIND_ERROR:
            (number,) = ERROR_HEADER.unpack_from(payload)
            code = _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
            raise PeerStreamRefused(code, payload[ERROR_HEADER.size :].decode("utf-8", "replace"))
        if kind != KIND_RESPONSE:
            raise PeerStreamError(f"expected an answer, got a message of kind {kind}")
        try:
            return peer_pb2.PeerAppendResponse.FromString(payload)
        except DecodeError as exc:
            raise PeerStreamError(f"an undecodable PeerAppendResponse: {exc}") from exc

    def close(self) -> None:
        self.writer.close()


class PeerStreamServer:
    """The follower's end: accepts leaders' connections and answers each request
    with `answer` (PeerServicer.answer_peer_append; a StrataError becomes an error
    message and ends the connection)."""

    def __init__(
        self,
        answer: Callable[[peer_pb2.PeerAppendRequest], Awaitable[peer_pb2.PeerAppendResponse]],
        log: EventLogger,
        max_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: serve TLS (the node's --tls-cert / --tls-key)."""
        self.ssl_context = ssl_context
        self.answer = answer
        self.log = log
        self.max_bytes = max_bytes
        self._server: asyncio.Server | None = None
        # Open connections (each one's task) -> whether it is answering a request now.
        self._connections: dict[asyncio.Task[Any], bool] = {}
        self._ending = False

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); return the port."""
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.ssl_context)
        if len({sock.getsockname()[1] for sock in self._server.sockets}) > 1:
            # A name with several addresses (localhost: ::1 and 127.0.0.1) and port 0
            # got a different free port per address; leaders learn one port, so
            # listen on the first one's number everywhere.
            port = self.port
            self._server.close()
            await self._server.wait_closed()
            self._server = await asyncio.start_server(self._serve, host, port, ssl=self.ssl_context)
        return self.port

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def end_streams(self) -> None:
        """Shutdown: stop accepting, end the connections waiting for their next
        request now, and the ones answering a request once that answer is written."""
        self._ending = True
        if self._server is not None:
            self._server.close()
        for task, busy in self._connections.items():
            if not busy:
                task.cancel()

    async def close(self) -> None:
        self.end_streams()
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        self._connections[task] = False
        try:
            if self._ending:
                return
            await read_preamble(reader)
            writer.write(PREAMBLE)
            while True:
                kind, payload = await read_message(reader, self.max_bytes)
                if kind != KIND_REQUEST:
                    raise PeerStreamError(f"expected a request, got a message of kind {kind}")
                try:
                    request = peer_pb2.PeerAppendRequest.FromString(payload)
                except DecodeError as exc:
                    raise PeerStreamError(f"an undecodable PeerAppendRequest: {exc}") from exc
                self._connections[task] = True
                try:
                    response = await self.answer(request)
                except StrataError as exc:
                    log_rpc_failure(self.log, "PeerAppend", request, exc)
                    body = ERROR_HEADER.pack(exc.code.value[0]) + str(exc).encode()
                    writer.write(encode_message(KIND_ERROR, body))
                    await writer.drain()
                    return
                writer.write(encode_message(KIND_RESPONSE, response.SerializeToString()))
                await writer.drain()
                self._connections[task] = False  # (idle only once the answer is written)
                if self._ending:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the leader went away or gave up on this connection
        except PeerStreamError as exc:
            self.log.warning("peer_stream_refused", peer=peer, error=exc)
        finally:
            del self._connections[task]
            writer.close()
