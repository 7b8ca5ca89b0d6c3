"""The WalService gRPC servicer: request validation and error mapping.

Every handler validates its whole request before touching any state, so bad
input changes nothing, and maps StrataError onto the contract's status codes
through strata.errors.abort_with (the one place; unary handlers reach it through
strata.grpc_server.unary_rpc). Stream responses are encoded by hand from the stored
frames (`encode_wal_batch`): a frame's payload already is a serialized Record,
so streaming never re-parses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from strata import ids
from strata.errors import InvalidArgument, StrataError, Unavailable, abort_with
from strata.grpc_server import decode_request, log_rpc_failure, stream_handler, unary_handler, unary_rpc
from strata.logs import EventLogger
from strata.protowire import varint
from strata.redo import validate_record
from strata.v1 import records_pb2, wal_pb2
from walservice.append_codec import ParsedAppend, summary_passes
from walservice.append_codec import native as native_codec
from walservice.election import NotLeader
from walservice.replication import Cluster
from walservice.segment import Frame
from walservice.sequencer import AppendResult, Timeline
from walservice.timelines import TimelineSet

SERVICE_NAME = "strata.v1.WalService"
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024
# A stopping node ends an AppendStream once it has answered every message and heard
# nothing on it for this long: by then its writer has moved on (the node refuses new
# appends as not_leader, and a cluster's followers elect a new leader after one
# lease, LEADER_LEASE_S), so no append is left in flight on it.
STREAM_QUIET_END_S = 1.0



def encode_sequenced_record(frame: Frame) -> bytes:
    """strata.v1.SequencedRecord{lsn=1, record=2, commit_time_us=3, term=4,
    end_of_batch=5} in wire format (end_of_batch only when set, as proto3 does)."""
    return b"".join(
        (
            b"\x08", varint(frame.lsn),
            b"\x12", varint(len(frame.payload)), frame.payload,
            b"\x18", varint(frame.commit_time_us),
            b"\x20", varint(frame.term),
            b"\x28\x01" if frame.end_of_batch else b"",
        )
    )


def encode_wal_batch(frames: list[Frame], commit_lsn: int) -> bytes:
    """strata.v1.WalBatch{records=1, commit_lsn=2} in wire format."""
    parts = []
    for frame in frames:
        rec = encode_sequenced_record(frame)
        parts += (b"\x0a", varint(len(rec)), rec)
    parts += (b"\x10", varint(commit_lsn))
    return b"".join(parts)


@dataclass(frozen=True)
class _Refused:
    """An append refused before it was queued: nothing of it was applied."""

    error: StrataError


# One AppendStream message's appends: each queued (its future) or refused up front.
# (An append is a protobuf AppendRequest, or a `ParsedAppend` tuple from the C codec.)
_QueuedAppends = list[tuple["wal_pb2.AppendRequest | tuple", "asyncio.Future[AppendResult] | _Refused"]]
# Put in an AppendStream's answer queue to end it (shutdown; WalServicer.end_streams).
_END_OF_STREAM: _QueuedAppends = []


@dataclass(eq=False)
class _OpenAppendStream:
    """One AppendStream RPC: its answer queue (messages in order; None once the
    client's side ended), when it last received a message (the loop's clock), how
    many messages it read and has not answered yet, and whether shutdown ended it."""

    answers: asyncio.Queue[_QueuedAppends | None]
    last_message: float
    unanswered: int = 0
    ended: bool = False


def _append_response(result: AppendResult) -> wal_pb2.AppendResponse:
    return wal_pb2.AppendResponse(start_lsn=result.start_lsn, end_lsn=result.end_lsn, record_lsns=result.record_lsns, term=result.term)


class WalServicer:
    def __init__(
        self,
        timelines: TimelineSet,
        log: EventLogger,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        cluster: Cluster | None = None,
    ) -> None:
        self.timelines = timelines
        self.cluster = cluster  # None on a single node
        self.log = log
        self.max_batch_bytes = max_batch_bytes
        # The open AppendStreams. Owned by the event loop; see `end_streams`.
        self._append_streams: set[_OpenAppendStream] = set()
        self._ending = False
        self._ender: asyncio.Task[None] | None = None

    def end_streams(self) -> None:
        """Shutdown, once the appends taken are answered (`Timeline.drain`): end the
        clients' AppendStreams, so a graceful stop does not wait out its whole grace
        for writers that keep their streams open. Each stream ends (status OK) once
        every message read on it is answered and it has been quiet for
        STREAM_QUIET_END_S. A message that arrives after that is never answered;
        like any append arriving during the stop it was not applied, and the
        writer (compute_shim.WalWriter) sends it on as not applied. (Ending means
        returning from the handler: cancelling its task would leave the RPC open
        until the grace ran out.)"""
        self._ending = True
        if self._ender is None:
            self._ender = asyncio.create_task(self._end_quiet_streams())

    async def _end_quiet_streams(self) -> None:
        loop = asyncio.get_running_loop()
        while self._append_streams:
            now = loop.time()
            for stream in self._append_streams:
                if not stream.ended and not stream.unanswered and now - stream.last_message >= STREAM_QUIET_END_S:
                    stream.ended = True
                    stream.answers.put_nowait(_END_OF_STREAM)
            await asyncio.sleep(STREAM_QUIET_END_S / 10)

    def _status(self, tl: Timeline) -> wal_pb2.WalStatus:
        c = tl.control
        return wal_pb2.WalStatus(
            start_lsn=c.start_lsn,
            flush_lsn=tl.flush_lsn,
            commit_lsn=tl.commit_lsn,
            backup_lsn=c.backup_lsn,
            remote_consistent_lsn=c.remote_consistent_lsn,
            term=c.term,
            page_size=c.page_size,
            tenant_id=c.tenant_id,
            timeline_id=c.timeline_id,
            leader_node_id=(tl.replica.live_leader() if tl.replica is not None else 1),
        )

    @unary_rpc
    async def CreateTimeline(self, request: wal_pb2.WalTimeline, context: grpc.aio.ServicerContext) -> wal_pb2.WalStatus:
        ids.start_lsn(request.start_lsn)  # before anything is written, on this node or its peers
        if self.cluster is not None:
            tl = await self.cluster.create_timeline(
                self.timelines, request.tenant_id, request.timeline_id, request.start_lsn, request.page_size
            )
        else:
            tl = await self.timelines.create(request.tenant_id, request.timeline_id, request.start_lsn, request.page_size)
        tl.check_usable()
        return self._status(tl)

    def _batch_payloads(self, request: wal_pb2.AppendRequest, page_size: int) -> list[bytes]:
        """Each record validated, then serialized (the frame payloads). Per record
        this is the Python path's hottest code: keep it lean."""
        records = request.records
        if not records:
            raise InvalidArgument("records is empty: an Append needs at least one record")
        payloads = []
        total = 0
        for i, record in enumerate(records):
            validate_record(record, page_size, "records", i)
            payload = record.SerializeToString()
            total += len(payload)
            if total > self.max_batch_bytes:
                raise InvalidArgument(
                    f"records: the batch exceeds the {self.max_batch_bytes}-byte limit at records[{i}]; "
                    "split it into several Appends"
                )
            payloads.append(payload)
        return payloads

    async def _queue(self, request: wal_pb2.AppendRequest) -> asyncio.Future[AppendResult]:
        """Validate one append whole, then queue it (nothing is queued if it is bad,
        or if this node does not lead the timeline)."""
        tl = self.timelines.get(request.tenant_id, request.timeline_id)
        await tl.ready_for_appends()
        return tl.submit(self._batch_payloads(request, tl.control.page_size), request.expected_end_lsn)

    async def _queue_parsed(self, message: bytes, append: tuple) -> asyncio.Future[AppendResult]:
        """`_queue` for an append the C codec parsed (a `ParsedAppend` tuple): its
        summary settles validity here; anything it cannot vouch for goes through
        protobuf and `_batch_payloads`, whose errors name the field."""
        tenant_id, timeline_id, expected_end_lsn, start, end, spans, payload_bytes, max_splice_end, image_len, suspect = append
        tl = self.timelines.get(tenant_id, timeline_id)
        await tl.ready_for_appends()
        page_size = tl.control.page_size
        if not summary_passes(suspect, payload_bytes, max_splice_end, image_len, page_size, self.max_batch_bytes):
            request = wal_pb2.AppendRequest.FromString(message[start:end])
            return tl.submit(self._batch_payloads(request, page_size), request.expected_end_lsn)
        return tl.submit_spans(message, spans, expected_end_lsn)

    def _parse_stream_message(self, message: bytes) -> Sequence[tuple | wal_pb2.AppendRequest]:
        """An AppendStream message's appends: `ParsedAppend` tuples from the C codec,
        or protobuf AppendRequests where it is not built or declines the message."""
        if native_codec is not None:
            parsed = native_codec.parse_append_stream(message)
            if parsed is not None:
                return parsed
        try:
            return wal_pb2.AppendStreamRequest.FromString(message).appends
        except DecodeError as exc:
            raise InvalidArgument(f"an AppendStream message is not a valid AppendStreamRequest: {exc}") from exc

    @unary_rpc
    async def Append(self, request: wal_pb2.AppendRequest, context: grpc.aio.ServicerContext) -> wal_pb2.AppendResponse:
        return _append_response(await (await self._queue(request)))

    async def AppendStream(
        self, requests: AsyncIterator[wal_pb2.AppendStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[wal_pb2.AppendStreamResponse]:
        """Appends pipelined over one stream. A reader task queues each message's
        appends as soon as it arrives (so messages behind it join the same or the
        next flush round); this generator answers the messages in order. Appends
        are sequenced FIFO, so message i's appends are durable no later than
        message i+1's and waiting in order costs nothing."""
        if self._ending:
            return
        loop = asyncio.get_running_loop()
        stream = _OpenAppendStream(asyncio.Queue(), loop.time())
        answers = stream.answers
        self._append_streams.add(stream)

        async def read() -> None:
            try:
                async for message in requests:
                    stream.unanswered += 1
                    stream.last_message = loop.time()
                    queued: _QueuedAppends = []
                    for request in self._parse_stream_message(message):
                        try:
                            if type(request) is tuple:
                                queued.append((request, await self._queue_parsed(message, request)))
                            else:
                                queued.append((request, await self._queue(request)))
                        except StrataError as exc:
                            queued.append((request, _Refused(exc)))
                    answers.put_nowait(queued)
            finally:
                answers.put_nowait(None)

        def failed(request: wal_pb2.AppendRequest | tuple, exc: StrataError, queued: bool) -> wal_pb2.AppendOutcome:
            if type(request) is tuple:
                request = ParsedAppend(*request)
            log_rpc_failure(self.log, "AppendStream", request, exc)
            # A node that does not lead the timeline names the leader (replication).
            leader = getattr(exc, "leader_address", None) or ""
            # not_leader: this node does not (or no longer: shutting down, no quorum
            # for an election) take appends, and refused this one before anything was
            # applied, so the writer may send it elsewhere. Any other UNAVAILABLE (a
            # round that lost its quorum) leaves the append's fate unknown.
            not_leader = isinstance(exc, NotLeader) or (not queued and exc.code == grpc.StatusCode.UNAVAILABLE)
            return wal_pb2.AppendOutcome(error_code=exc.code.value[0], error=str(exc), leader=leader, not_leader=not_leader)

        reader = asyncio.create_task(read())
        try:
            while (queued := await answers.get()) is not None:
                if queued is _END_OF_STREAM:
                    return  # shutting down, every message read answered (end_streams)
                outcomes = []
                for request, item in queued:
                    if isinstance(item, _Refused):
                        outcomes.append(failed(request, item.error, queued=False))
                        continue
                    try:
                        result = await item
                    except StrataError as exc:
                        outcomes.append(failed(request, exc, queued=True))
                        continue
                    # Filled in place: constructing an AppendResponse and then an
                    # outcome around it would copy it.
                    outcome = wal_pb2.AppendOutcome()
                    response = outcome.response
                    response.start_lsn = result.start_lsn
                    response.end_lsn = result.end_lsn
                    response.record_lsns.extend(result.record_lsns)
                    response.term = result.term
                    outcomes.append(outcome)
                yield wal_pb2.AppendStreamResponse(outcomes=outcomes)
                stream.unanswered -= 1
            try:
                await reader  # surfaces a broken request stream
            except InvalidArgument as exc:
                log_rpc_failure(self.log, "AppendStream", None, exc)
                await abort_with(context, exc)
        finally:
            reader.cancel()
            self._append_streams.discard(stream)

    @unary_rpc
    async def Status(self, request: records_pb2.TimelineRef, context: grpc.aio.ServicerContext) -> wal_pb2.WalStatus:
        tl = self.timelines.get(request.tenant_id, request.timeline_id)
        tl.check_usable()
        return self._status(tl)

    @unary_rpc
    async def ReportPersisted(self, request: wal_pb2.PersistedRequest, context: grpc.aio.ServicerContext) -> wal_pb2.WalStatus:
        tl = self.timelines.get(request.tenant_id, request.timeline_id)
        tl.check_usable()
        if tl.replica is not None and not tl.replica.leader_term:
            # A follower: the leader checks it against the cluster's commit_lsn (this
            # node's may lag) and spreads it; this node records what it can now.
            forwarded = await tl.replica.forward_report_persisted(request)
            if forwarded is not None:
                local = min(request.remote_consistent_lsn, tl.commit_lsn)
                if local > tl.control.remote_consistent_lsn:
                    await tl.report_persisted(local)
                return forwarded
            if request.remote_consistent_lsn > tl.commit_lsn:
                raise Unavailable(
                    f"remote_consistent_lsn={request.remote_consistent_lsn} is past this node's commit_lsn={tl.commit_lsn} "
                    "and no leader is known to check it against the cluster's; retry"
                )
        if request.remote_consistent_lsn > tl.commit_lsn:
            raise InvalidArgument(
                f"remote_consistent_lsn={request.remote_consistent_lsn} is past the timeline's commit_lsn={tl.commit_lsn}"
            )
        await tl.report_persisted(request.remote_consistent_lsn)
        return self._status(tl)

    @unary_rpc
    async def DeleteTimeline(
        self, request: wal_pb2.WalDeleteTimelineRequest, context: grpc.aio.ServicerContext
    ) -> wal_pb2.WalDeleteTimelineResponse:
        if self.cluster is not None:
            existed, nodes = await self.cluster.delete_timeline(self.timelines, request.tenant_id, request.timeline_id)
        else:
            existed, nodes = await self.timelines.delete(request.tenant_id, request.timeline_id), 1
        return wal_pb2.WalDeleteTimelineResponse(existed=existed, nodes_deleted=nodes)

    async def Stream(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        request = await decode_request(wal_pb2.StreamRequest, data, context, self.log, "Stream")
        try:
            tl = self.timelines.get(request.tenant_id, request.timeline_id)
            self.log.info("stream_opened", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=request.start_lsn, peer=context.peer())
            async for frames in tl.stream(request.start_lsn):
                yield encode_wal_batch(frames, tl.commit_lsn)
        except StrataError as exc:
            log_rpc_failure(self.log, "Stream", request, exc)
            await abort_with(context, exc)

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {
            "CreateTimeline": unary_handler(self.CreateTimeline, wal_pb2.WalTimeline, wal_pb2.WalStatus),
            "Append": unary_handler(self.Append, wal_pb2.AppendRequest, wal_pb2.AppendResponse),
            # Messages arrive as bytes: the C codec parses them (`_parse_stream_message`).
            "AppendStream": stream_handler(self.AppendStream, None, wal_pb2.AppendStreamResponse),
            "Status": unary_handler(self.Status, records_pb2.TimelineRef, wal_pb2.WalStatus),
            "ReportPersisted": unary_handler(self.ReportPersisted, wal_pb2.PersistedRequest, wal_pb2.WalStatus),
            "DeleteTimeline": unary_handler(
                self.DeleteTimeline, wal_pb2.WalDeleteTimelineRequest, wal_pb2.WalDeleteTimelineResponse
            ),
            "Stream": grpc.unary_stream_rpc_method_handler(
                self.Stream, request_deserializer=None, response_serializer=bytes
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        return [SERVICE_NAME]
