"""`WalWriter`: a compute node's WAL writer, many writers over one AppendStream.

    async with WalWriter("127.0.0.1:7676") as wal:
        response = await wal.append(tenant_id=t, timeline_id=tl, records=[...])

Each `append` is one atomic, durable batch with exactly unary `Append`'s
semantics (its own LSNs, its own `expected_end_lsn` check, its own error); what
changes is the transport. Appends from concurrent tasks are packed into
`AppendStreamRequest` messages on one bidi stream, with up to
`max_in_flight` messages unanswered: while the walservice fsyncs one message's
appends, the appends arriving meanwhile gather into the next (a large backlog
goes out as several messages of about 64 KiB, see MESSAGE_TARGET_BYTES). A unary call
costs the server about as much CPU as the fsync it waits for; a stream message
carrying tens of appends costs a fraction of that per append. This is how a
compute with many sessions ships its WAL (Neon's walproposer, too, streams WAL
over one connection per safekeeper).

Failure: a refused append raises `AppendFailed` with the contract's code and
message. `AppendFailed.outcome_unknown` says whether it may have been applied
anyway: True for an UNAVAILABLE that is not a not-leader refusal (a quorum lost
mid-round, a leader deposed after writing), for appends in flight when the stream
breaks (the node restarts, the connection drops), and for an append not answered
within `append_timeout` (default 30 s; DEADLINE_EXCEEDED), as with a unary
Append whose connection broke. The caller resolves those (e.g. by reading the
WAL, or resending with `expected_end_lsn`); the writer never resends them, since
a blind resend could apply a batch twice. A stream the walservice ends cleanly (its
graceful stop, once it answered every message it read) is not a break: the appends
it left unanswered were never read, so they go on like appends not yet sent (to
another node of a cluster, or failed as not applied). The next `append` after a
break opens a new stream.

A cluster (`"A,B,C"`): leadership is per timeline, so the writer keeps one
stream per node it talks to and remembers each timeline's leader. A node that
does not lead a timeline answers its appends UNAVAILABLE with
`AppendOutcome.not_leader` set (and the leader's address in
`AppendOutcome.leader` when it knows it), having applied nothing, so only then
does the writer resend them there (a few hops at most), or, no leader named, to
the next node.

Concurrency: one asyncio loop owns everything; the writer's maps and each
stream's queues are touched only from it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import grpc

from compute_shim.client import CHANNEL_OPTIONS, status_code_of
from strata.grpc_channels import open_channel
from strata.protowire import length_delimited
from strata.v1 import records_pb2, wal_pb2

APPEND_STREAM_METHOD = "/strata.v1.WalService/AppendStream"
DEFAULT_MAX_IN_FLIGHT = 64
# What is pending is sent in messages of about MESSAGE_TARGET_BYTES, split evenly: the
# walservice then answers one message's appends while it still validates the next
# one's, and the writer works on those answers meanwhile. (64 appends of 16 records
# in one message took the walservice 1.5 ms to validate before their round could
# start; in four messages, 64 writers commit about 15% more per second.) Small
# appends still go together: below this size a message's own costs outweigh the overlap.
MESSAGE_TARGET_BYTES = 64 * 1024
# A message stops taking appends past either limit (the server's message limit is larger).
MAX_MESSAGE_APPENDS = 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


DEFAULT_APPEND_TIMEOUT_S = 30.0


@dataclass
class AppendFailed(Exception):
    """One append was refused, or its answer was lost. `outcome_unknown`: it may
    have been applied all the same (see the module docstring); False means it
    definitely was not."""

    code: grpc.StatusCode
    message: str
    outcome_unknown: bool = False

    def __str__(self) -> str:
        unknown = " (outcome unknown: the append may or may not have been applied)" if self.outcome_unknown else ""
        return f"{self.code.name}: {self.message}{unknown}"


# An append a node did not apply (not the leader, or not reached) hops at most this often,
# pausing REDIRECT_PAUSE_S x hops (at most MAX_REDIRECT_PAUSE_S) before each hop that names
# no leader: about 2 s in all, which covers a leader lease and an election (0005).
MAX_REDIRECTS = 10
REDIRECT_PAUSE_S = 0.05
MAX_REDIRECT_PAUSE_S = 0.3


@dataclass
class _Append:
    request: bytes
    route: tuple[str, str]  # (tenant_id, timeline_id): which timeline's leader to send it to
    future: asyncio.Future[wal_pb2.AppendResponse]
    redirects: int = 0


class _NodeStream:
    """One AppendStream to one node: appends packed into messages, up to
    `max_in_flight` messages unanswered, answers matched in order."""

    def __init__(self, writer: WalWriter, address: str) -> None:
        self.writer = writer
        self.address = address
        self.channel = open_channel(address, CHANNEL_OPTIONS, tls_ca=writer.tls_ca, aio=True)
        method = self.channel.stream_stream(
            APPEND_STREAM_METHOD, request_serializer=None, response_deserializer=wal_pb2.AppendStreamResponse.FromString
        )
        self.call: Any = method()
        self.pending: deque[_Append] = deque()
        self.pending_bytes = 0  # the serialized size of what `pending` holds
        self.in_flight: deque[list[_Append]] = deque()
        self.wake = asyncio.Event()
        self.tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._receive_loop())]

    def send(self, item: _Append) -> None:
        self.pending.append(item)
        self.pending_bytes += len(item.request)
        self.wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending and len(self.in_flight) < self.writer.max_in_flight:
                parts: list[bytes] = []
                items: list[_Append] = []
                size = 0
                messages = -(-self.pending_bytes // MESSAGE_TARGET_BYTES)  # ceil: at least 1
                take = min(MAX_MESSAGE_APPENDS, -(-len(self.pending) // messages))
                while self.pending and len(items) < take and size < MAX_MESSAGE_BYTES:
                    item = self.pending.popleft()
                    self.pending_bytes -= len(item.request)
                    if item.future.done():  # its caller's deadline passed: never send it
                        continue
                    parts += length_delimited(1, item.request)  # AppendStreamRequest.appends
                    size += len(item.request)
                    items.append(item)
                if not items:
                    continue
                self.in_flight.append(items)
                await self.call.write(b"".join(parts))

    async def _receive_loop(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    # A walservice ends a stream cleanly (status OK) only once it has
                    # answered every message it read (a graceful stop): the messages
                    # still unanswered were never read, so none of them was applied.
                    await self._broken(
                        AppendFailed(grpc.StatusCode.UNAVAILABLE, f"{self.address} ended the append stream"), unread=True
                    )
                    return
                items = self.in_flight.popleft()
                for item, outcome in zip(items, message.outcomes, strict=True):
                    self.writer._answered(self, item, outcome)
                self.wake.set()
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.INTERNAL:
                # gRPC's own report of a connection cut mid-stream ("Internal error from
                # Core", e.g. the node was killed): to the caller, the node was unavailable.
                code = grpc.StatusCode.UNAVAILABLE
            await self._broken(
                AppendFailed(code, f"the append stream to {self.address} broke before this append was answered: {exc.code().name} {exc.details()}")
            )
        except AppendFailed as exc:
            await self._broken(exc)

    async def _broken(self, error: AppendFailed, *, unread: bool = False) -> None:
        """Fail what was sent and not answered (it may or may not be durable);
        appends not yet sent go to another node of a cluster, or fail as not sent.
        `unread`: the node ended the stream cleanly, so what it left unanswered
        was not applied and goes on as if never sent. The next append to this
        address opens a new stream."""
        if self.writer._streams.get(self.address) is self:
            del self.writer._streams[self.address]
        if unread:
            while self.in_flight:
                for item in reversed(self.in_flight.pop()):
                    self.pending.appendleft(item)
                    self.pending_bytes += len(item.request)
        while self.in_flight:
            for item in self.in_flight.popleft():
                if not item.future.done():
                    item.future.set_exception(AppendFailed(error.code, error.message, outcome_unknown=True))
        self.tasks[0].cancel()
        await self.channel.close()
        while self.pending:  # never sent: not applied, so they may go elsewhere
            item = self.pending.popleft()
            self.pending_bytes -= len(item.request)
            if item.future.done():
                continue
            if not self.writer._redirect(item, self.address, ""):
                item.future.set_exception(AppendFailed(error.code, f"not sent: {error.message}"))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.channel.close()


class WalWriter:
    def __init__(
        self, address: str, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, append_timeout: float = DEFAULT_APPEND_TIMEOUT_S,
        tls_ca: str | Path | None = None,
    ) -> None:
        """`tls_ca`: dial over TLS trusting this PEM CA (default $STRATA_TLS_CA; strata/tls.py)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}: at least 1 message must be allowed in flight")
        if append_timeout <= 0:
            raise ValueError(f"append_timeout={append_timeout}: must be a positive number of seconds")
        self.append_timeout = append_timeout
        self.tls_ca = tls_ca
        self._nodes = [a for a in address.split(",") if a]
        if not self._nodes:
            raise ValueError("WalWriter needs a walservice address: 'HOST:PORT[,HOST:PORT...]'")
        self.max_in_flight = max_in_flight
        self._streams: dict[str, _NodeStream] = {}
        self._leaders: dict[tuple[str, str], str] = {}  # timeline -> the node it was last sent to successfully
        self._unanswered: set[asyncio.Future[wal_pb2.AppendResponse]] = set()
        # (deadline on the loop's clock, future) per append, oldest first; one timer
        # (`_deadline_timer`, for the oldest) enforces `append_timeout` for all.
        self._deadlines: deque[tuple[float, asyncio.Future[wal_pb2.AppendResponse]]] = deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
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
        return await self.append_serialized(request.SerializeToString(), tenant_id=tenant_id, timeline_id=timeline_id)

    async def append_serialized(self, request: bytes, *, tenant_id: str = "", timeline_id: str = "") -> wal_pb2.AppendResponse:
        """`append` of an already serialized `AppendRequest` (callers that send
        the same shapes over and over skip re-encoding). `tenant_id` and
        `timeline_id` route it to the timeline's leader in a cluster.

        A caller cancelled while it waits stops waiting, nothing more: an append
        not sent yet is then never sent, one in flight is answered and the answer
        dropped (the batch may be durable all the same)."""
        if self._closed:
            raise RuntimeError("this WalWriter is closed")
        route = (tenant_id, timeline_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[wal_pb2.AppendResponse] = loop.create_future()
        item = _Append(request, route, future)
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        self._send(item, self._leaders.get(route, self._nodes[0]))
        # Deadlines come due in the order appends were handed in (one timeout for
        # all), so one timer, for the oldest, serves every append in flight.
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():
            deadlines.popleft()
        if len(deadlines) > 2 * len(self._unanswered) + 1024:
            # Answers arrive out of order across streams; drop those behind a slow one.
            self._deadlines = deadlines = deque(entry for entry in deadlines if not entry[1].done())
        deadlines.append((loop.time() + self.append_timeout, future))
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(self._deadlines[0][0], self._expire_deadlines)
        return await future

    def _expire_deadlines(self) -> None:
        """Fail every append whose deadline passed unanswered (DEADLINE_EXCEEDED,
        outcome unknown; a late answer or redirect is then ignored), then arm the
        timer for the oldest append still waiting."""
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(
                    AppendFailed(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {self.append_timeout}s", outcome_unknown=True)
                )
        if deadlines:
            self._deadline_timer = loop.call_at(deadlines[0][0], self._expire_deadlines)

    def _send(self, item: _Append, address: str) -> None:
        if item.future.done():  # a delayed redirect whose caller gave up
            return
        stream = self._streams.get(address)
        if stream is None:
            stream = self._streams[address] = _NodeStream(self, address)
        stream.send(item)

    def _answered(self, stream: _NodeStream, item: _Append, outcome: wal_pb2.AppendOutcome) -> None:
        if item.future.done():
            return
        if not outcome.error_code:
            self._leaders[item.route] = stream.address
            item.future.set_result(outcome.response)
            return
        code = status_code_of(outcome.error_code)
        if code == grpc.StatusCode.UNAVAILABLE and outcome.not_leader:
            if self._redirect(item, stream.address, outcome.leader):
                return  # not the leader: nothing was applied; sent on
            item.future.set_exception(AppendFailed(code, outcome.error))
            return
        # Any other UNAVAILABLE (no quorum, a leader deposed mid-round): it may have
        # been written somewhere and survive, so it is never resent blindly.
        item.future.set_exception(AppendFailed(code, outcome.error, outcome_unknown=code == grpc.StatusCode.UNAVAILABLE))

    def _redirect(self, item: _Append, address: str, leader: str) -> bool:
        """Send an append that `address` did not apply to the leader it named, or,
        naming none (an election may be under way), to the next node after a short
        pause. False when there is nowhere else to go (one node) or it hopped enough."""
        if len(self._nodes) < 2 or item.redirects >= MAX_REDIRECTS:
            return False
        item.redirects += 1
        if leader and leader != address:
            self._leaders[item.route] = leader
            self._send(item, leader)
            return True
        at = self._nodes.index(address) if address in self._nodes else -1
        nxt = self._nodes[(at + 1) % len(self._nodes)]
        self._leaders[item.route] = nxt
        pause = min(REDIRECT_PAUSE_S * item.redirects, MAX_REDIRECT_PAUSE_S)
        asyncio.get_running_loop().call_later(pause, self._send, item, nxt)
        return True

    async def close(self) -> None:
        """Wait for every append handed in to be answered, then close the streams."""
        self._closed = True
        await asyncio.gather(*list(self._unanswered), return_exceptions=True)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            await stream.close()
