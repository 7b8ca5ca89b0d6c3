"""`WalWriter`: a compute node's WAL writer, many writers over one AppendStream.

    async with WalWriter("127.0.0.1:7676") as wal:
        response = await wal.append(tenant_id=t, timeline_id=tl, records=[...])

Each `append` is one atomic, durable batch with exactly unary `Append`'s
semantics (its own LSNs, its own `expected_end_lsn` check, its own error); what
changes is the transport. Appends from concurrent tasks are packed into
`AppendStreamRequest` messages on one bidi stream, with up to
`max_in_flight` messages unanswered: while the walservice fsyncs one message's
appends, the appends arriving meanwhile gather into the next. A unary call
costs the server about as much CPU as the fsync it waits for; a stream message
carrying tens of appends costs a fraction of that per append. This is how a
compute with many sessions ships its WAL (Neon's walproposer, too, streams WAL
over one connection per safekeeper).

Failure: a refused append raises `AppendFailed` with the contract's code and
message, and nothing of it was applied. If the stream itself breaks (the node
restarts, the connection drops), every append sent and not yet answered fails
with `AppendFailed(UNAVAILABLE)` and may or may not have been applied, as with
a unary Append whose connection broke; the next `append` opens a new stream,
following a `strata-leader` hint if the node gave one.

Concurrency: one asyncio loop owns everything; `_pending`, `_in_flight`,
`_call` and `_address` are touched only from it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from compute_shim.client import LEADER_METADATA_KEY, status_code_of
from strata.protowire import length_delimited
from strata.v1 import records_pb2, wal_pb2

APPEND_STREAM_METHOD = "/strata.v1.WalService/AppendStream"
DEFAULT_MAX_IN_FLIGHT = 4
# A message stops taking appends past either limit (the server's message limit is larger).
MAX_MESSAGE_APPENDS = 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.max_send_message_length", 256 * 1024 * 1024)]


@dataclass
class AppendFailed(Exception):
    """One append was refused (or its stream broke before it was answered)."""

    code: grpc.StatusCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class WalWriter:
    def __init__(self, address: str, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: at least 1 message must be allowed in flight")
        self._nodes = [a for a in address.split(",") if a]
        if not self._nodes:
            raise ValueError("WalWriter needs a walservice address: 'HOST:PORT[,HOST:PORT...]'")
        self._address = self._nodes[0]
        self.max_in_flight = max_in_flight
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._pending: deque[tuple[bytes, asyncio.Future[wal_pb2.AppendResponse]]] = deque()
        self._in_flight: deque[list[asyncio.Future[wal_pb2.AppendResponse]]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def __aenter__(self) -> WalWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- appends ------------------------------------------------------------------

    async def append(
        self,
        *,
        tenant_id: str,
        timeline_id: str,
        records: Iterable[records_pb2.Record],
        expected_end_lsn: int = 0,
    ) -> wal_pb2.AppendResponse:
        request = wal_pb2.AppendRequest(
            tenant_id=tenant_id, timeline_id=timeline_id, records=records, expected_end_lsn=expected_end_lsn
        )
        return await self.append_serialized(request.SerializeToString())

    async def append_serialized(self, request: bytes) -> wal_pb2.AppendResponse:
        """`append` of an already serialized `AppendRequest` (callers that send
        the same shapes over and over skip re-encoding)."""
        if self._closed:
            raise RuntimeError("this WalWriter is closed")
        future: asyncio.Future[wal_pb2.AppendResponse] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if not self._tasks:
            self._open()
        self._wake.set()
        return await future

    # -- the stream -----------------------------------------------------------------

    def _open(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._address, options=_CHANNEL_OPTIONS)
        method = self._channel.stream_stream(
            APPEND_STREAM_METHOD, request_serializer=None, response_deserializer=wal_pb2.AppendStreamResponse.FromString
        )
        self._call = method()
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._receive_loop())]

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and len(self._in_flight) < self.max_in_flight:
                parts: list[bytes] = []
                futures: list[asyncio.Future[wal_pb2.AppendResponse]] = []
                size = 0
                while self._pending and len(futures) < MAX_MESSAGE_APPENDS and size < MAX_MESSAGE_BYTES:
                    request, future = self._pending.popleft()
                    parts += length_delimited(1, request)  # AppendStreamRequest.appends
                    size += len(request)
                    futures.append(future)
                self._in_flight.append(futures)
                await self._call.write(b"".join(parts))

    async def _receive_loop(self) -> None:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    raise AppendFailed(grpc.StatusCode.UNAVAILABLE, "the walservice ended the append stream")
                futures = self._in_flight.popleft()
                for future, outcome in zip(futures, message.outcomes, strict=True):
                    if future.done():
                        continue
                    if outcome.error_code:
                        future.set_exception(AppendFailed(status_code_of(outcome.error_code), outcome.error))
                    else:
                        future.set_result(outcome.response)
                self._wake.set()
        except grpc.RpcError as exc:
            await self._broken(exc)
        except AppendFailed as exc:
            await self._broken(exc)

    async def _broken(self, exc: grpc.RpcError | AppendFailed) -> None:
        """Fail what was sent and not answered; unsent appends go on a new stream."""
        if isinstance(exc, grpc.RpcError):
            for key, value in (await self._call.trailing_metadata()) or ():
                if key == LEADER_METADATA_KEY and value:
                    self._address = value
            error = AppendFailed(exc.code(), f"the append stream broke before this append was answered: {exc.details()}")
        else:
            error = exc
        while self._in_flight:
            for future in self._in_flight.popleft():
                if not future.done():
                    future.set_exception(error)
        send_task = self._tasks[0]
        self._tasks = []
        send_task.cancel()
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            await channel.close()
        if self._pending and not self._closed:
            self._open()
            self._wake.set()

    async def close(self) -> None:
        """Wait for every append handed in to be answered, then close the stream."""
        self._closed = True
        unanswered = [f for _, f in self._pending] + [f for futures in self._in_flight for f in futures]
        await asyncio.gather(*unanswered, return_exceptions=True)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
