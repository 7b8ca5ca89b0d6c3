"""WalReceiver: streams one timeline's WAL from the walservice and applies it.

It opens `Stream(start_lsn = last_record_lsn)`: after a restart that is
disk_consistent_lsn, so every record not yet in a layer file is applied once,
in LSN order. A broken stream is reopened with backoff (logged once per
outage, and when it recovers). The receiver reports what is persisted to the
walservice (ReportPersisted), which may then trim WAL below it: with remote
storage that is remote_consistent_lsn (reported after each index upload),
without it disk_consistent_lsn (after each flushed layer).

With a walservice cluster (`--walservice A,B,C`, `WalNodes`) every (re)connect
asks each node's Status and streams from the reachable node with the highest
commit_lsn (any node serves what is committed); unary calls (CreateTimeline,
ReportPersisted) go to the node that last answered, moving on to the next one
when a node is unreachable.

A Stream answered FAILED_PRECONDITION means the walservice holds less WAL than
this timeline ingested (`ReaderAhead`: it lost WAL it had served): the timeline
is stopped (`event=timeline_ahead_of_wal`, level=error; its reads answer
DATA_LOSS) and its receiver ends, rather than ingest other records at LSNs it
already applied.

A Stream answered NOT_FOUND: the walservice does not know the timeline. If this
timeline holds nothing past its start (`last_record_lsn == start_lsn`: a crash
between the two halves of CreateTimeline, before any WAL), it is registered
again at its start, which loses nothing. Otherwise the walservice lost a
timeline whose WAL this pageserver ingested (deleted there, or its disk gone):
registering it again would re-create it empty, hand the LSNs already applied
here to new records and make the database read as it was at its start. Once
every walservice node says NOT_FOUND, the timeline is stopped instead
(`event=timeline_lost_by_walservice`, level=error; its reads answer DATA_LOSS
with a message saying what is gone: the walservice's WAL, and every commit past
what this pageserver ingested). A pageserver killed before its first flush comes back
with `last_record_lsn == start_lsn` too: the durable `wal_seen.json` marker,
written before the first record is applied (wal_seen_marker.py), tells it that
it took WAL, so it is stopped as well rather than registered again.

Idle timelines hold no stream: once the open stream has brought no record for
`wal_idle_s` (TimelineConfig, default 10 s) while no read waits for WAL, it is
cancelled and the receiver parks (`event=wal_stream_parked`), so a thousand idle
databases cost no gRPC call state here or on the walservice. A parked receiver
streams again at once when a read waits for an LSN past what it ingested
(`Timeline.wal_wanted`, called by `wait_for_lsn`: a compute reads at the LSN it
committed or the walservice's end, so its read unparks the timeline), or when a
branch is made at the latest LSN (`catch_up`), or when a poll (Status, about every
`wal_poll_s`, jittered) finds committed WAL past it: WAL appended while nobody
reads reaches the layers within a poll.

Concurrency: one asyncio task per timeline, on the pageserver's event loop (plus,
while it streams, the idle watchdog task).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from strata.background_tasks import cancel_and_wait
from strata.errors import CorruptionError
from strata.grpc_channels import open_channel
from strata.ids import Lsn
from strata.logs import EventLogger
from strata.v1 import records_pb2, wal_pb2, wal_pb2_grpc

from pageserver.wal_seen_marker import mark_wal_seen

if TYPE_CHECKING:
    from pageserver.timeline import Timeline

MAX_BACKOFF_S = 5.0
PICK_TIMEOUT_S = 1.0
_RETRY_ELSEWHERE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class WalNodes:
    """The walservice node(s) (`--walservice A[,B,C]`); stands in for a
    WalServiceStub (CreateTimeline, ReportPersisted, DeleteTimeline, Stream). Owned by the loop."""

    def __init__(self, addresses: list[str], options: list[tuple[str, int]]) -> None:
        self.addresses = addresses
        # TLS when the pageserver was started with --tls-ca ($STRATA_TLS_CA; strata/tls.py).
        self.channels = [open_channel(a, options, aio=True) for a in addresses]
        self.stubs = [wal_pb2_grpc.WalServiceStub(ch) for ch in self.channels]
        self.preferred = 0  # the node that last answered a unary call

    async def _unary(self, method: str, request: object, timeout: float) -> object:
        last: grpc.aio.AioRpcError | None = None
        for i in range(len(self.stubs)):
            index = (self.preferred + i) % len(self.stubs)
            try:
                response = await getattr(self.stubs[index], method)(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRY_ELSEWHERE or len(self.stubs) == 1:
                    raise
                last = exc
                continue
            self.preferred = index
            return response
        assert last is not None
        raise last

    async def CreateTimeline(self, request: wal_pb2.WalTimeline, timeout: float) -> wal_pb2.WalStatus:  # noqa: N802 - a stub's name
        return await self._unary("CreateTimeline", request, timeout)  # type: ignore[return-value]

    async def ReportPersisted(self, request: wal_pb2.PersistedRequest, timeout: float) -> wal_pb2.WalStatus:  # noqa: N802
        return await self._unary("ReportPersisted", request, timeout)  # type: ignore[return-value]

    async def DeleteTimeline(  # noqa: N802 - a stub's name
        self, request: wal_pb2.WalDeleteTimelineRequest, timeout: float
    ) -> wal_pb2.WalDeleteTimelineResponse:
        return await self._unary("DeleteTimeline", request, timeout)  # type: ignore[return-value]

    async def stream_stub(self, tenant_id: str, timeline_id: str, after_failure: int | None) -> tuple[int, wal_pb2_grpc.WalServiceStub]:
        """The node to stream from: the reachable one with the highest commit_lsn
        (after a failure, another node wins ties)."""
        if len(self.stubs) == 1:
            return 0, self.stubs[0]
        commits = [-1 if lsn is None else lsn for lsn in await self.commit_lsns(tenant_id, timeline_id)]
        order = sorted(range(len(self.stubs)), key=lambda i: (commits[i], i != after_failure), reverse=True)
        best = order[0] if commits[order[0]] >= 0 else ((after_failure or 0) + 1) % len(self.stubs)
        return best, self.stubs[best]

    async def statuses(self, tenant_id: str, timeline_id: str) -> list[wal_pb2.WalStatus | None]:
        """Each node's Status of the timeline (None: it did not answer)."""
        ref = records_pb2.TimelineRef(tenant_id=tenant_id, timeline_id=timeline_id)

        async def status(stub: wal_pb2_grpc.WalServiceStub) -> wal_pb2.WalStatus | None:
            try:
                return await stub.Status(ref, timeout=PICK_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                return None

        return list(await asyncio.gather(*(status(stub) for stub in self.stubs)))

    async def commit_lsns(self, tenant_id: str, timeline_id: str) -> list[int | None]:
        """Each node's commit_lsn of the timeline (None: it did not answer Status)."""
        return [None if s is None else s.commit_lsn for s in await self.statuses(tenant_id, timeline_id)]

    async def has_wal_past(self, tenant_id: str, timeline_id: str, lsn: int) -> bool:
        """Whether a node holds WAL past `lsn` for the timeline (committed, or flushed
        and on its way to commit); also True when one cannot say (unreachable,
        NOT_FOUND): streaming then meets that error and handles it as every stream does."""
        return any(s is None or max(s.commit_lsn, s.flush_lsn) > lsn for s in await self.statuses(tenant_id, timeline_id))

    async def lost_everywhere(self, tenant_id: str, timeline_id: str) -> bool:
        """Whether every node answers NOT_FOUND for the timeline (one that cannot be
        reached, or has it, may still hold its WAL)."""
        ref = records_pb2.TimelineRef(tenant_id=tenant_id, timeline_id=timeline_id)

        async def not_found(stub: wal_pb2_grpc.WalServiceStub) -> bool:
            try:
                await stub.Status(ref, timeout=PICK_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.NOT_FOUND
            return False

        return all(await asyncio.gather(*(not_found(stub) for stub in self.stubs)))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class WalReceiver:
    def __init__(
        self,
        timeline: Timeline,
        wal_stub: WalNodes,
        log: EventLogger,
        backpressure: Callable[[Timeline], Awaitable[None]],
    ) -> None:
        self.timeline = timeline
        self.stub = wal_stub
        self.log = log
        self.backpressure = backpressure
        self._task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Idle streams (see _close_when_idle and _park); all owned by the loop.
        self._wanted = asyncio.Event()  # set when a read waits for WAL (Timeline.wal_wanted)
        self._last_records = time.monotonic()  # when the open stream last brought records
        self._idle_closed = False  # the watchdog cancelled the open stream
        self.parked = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._task, self._report_task):
            await cancel_and_wait(task)

    async def _run(self) -> None:
        tl = self.timeline
        backoff = 0.1
        failing = False
        failed_node: int | None = None
        tl.wal_wanted = self._wanted.set
        while not self._stopping:
            request = wal_pb2.StreamRequest(tenant_id=tl.tenant_id, timeline_id=tl.timeline_id, start_lsn=tl.last_record_lsn)
            node = 0
            try:
                node, stub = await self.stub.stream_stub(tl.tenant_id, tl.timeline_id, failed_node)
                call = stub.Stream(request)
                self._last_records, self._idle_closed = time.monotonic(), False
                watchdog = asyncio.create_task(self._close_when_idle(call))
                try:
                    async for batch in call:
                        if failing:
                            self.log.info("wal_stream_recovered", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.last_record_lsn)
                            failing = False
                        backoff = 0.1
                        if not tl.wal_seen and batch.records:
                            await self._mark_wal_seen(batch.records[0].lsn)
                        commit_time = 0
                        for rec in batch.records:
                            if rec.lsn <= tl.last_record_lsn:
                                continue
                            record_bytes = rec.record.SerializeToString() if rec.record.HasField("patch") else b""
                            tl.ingest(
                                rec.lsn, rec.record, record_bytes, payload_bytes=rec.record.ByteSize(),
                                end_of_batch=rec.end_of_batch, commit_time_us=rec.commit_time_us,
                            )
                            commit_time = rec.commit_time_us
                        tl.ingested(commit_time)
                        await self.backpressure(tl)
                        if batch.records:
                            self._last_records = time.monotonic()
                finally:
                    await cancel_and_wait(watchdog)
                # The walservice ended the stream (it is shutting down): reconnect.
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not self._idle_closed or self._stopping or (task is not None and task.cancelling()):
                    raise
                await self._park()  # the watchdog closed the idle stream
                continue
            except grpc.aio.AioRpcError as exc:
                failed_node = node
                if not failing:
                    self.log.warning(
                        "wal_stream_failed", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.last_record_lsn,
                        code=exc.code().name, error=exc.details(), node=self.stub.addresses[node],
                    )
                    failing = True
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    if tl.last_record_lsn == tl.start_lsn and not tl.wal_seen:
                        await self._register()
                    elif await self.stub.lost_everywhere(tl.tenant_id, tl.timeline_id):
                        self._stop_lost()
                        return
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    self._stop_ahead(exc)
                    return
            except Exception as exc:  # noqa: BLE001 - a bug or corrupt record: say so loudly, keep retrying
                self.log.error("wal_ingest_failed", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.last_record_lsn, error=repr(exc))
                failing = True
            if self._stopping:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def catch_up(self, timeout: float | None) -> None:
        """If parked: ingest what the walservice has committed now (a branch at the latest
        LSN must not miss WAL that came while nobody read). A streaming receiver is
        already on its way to the end, as before parking existed."""
        if not self.parked:
            return
        tl = self.timeline
        committed = [c for c in await self.stub.commit_lsns(tl.tenant_id, tl.timeline_id) if c is not None]
        if committed and max(committed) > tl.last_record_lsn:
            await tl.wait_for_lsn(Lsn(max(committed)), timeout)

    async def _close_when_idle(self, call: grpc.aio.UnaryStreamCall) -> None:
        """Cancel `call` once it has brought no record for `wal_idle_s` while no read
        waits for WAL: the receiver then parks (`_park`)."""
        tl = self.timeline
        while True:
            left = tl.config.wal_idle_s - (time.monotonic() - self._last_records)
            if left <= 0:
                if tl.lsn_waiters == 0:
                    self._idle_closed = True
                    call.cancel()
                    return
                left = tl.config.wal_idle_s
            await asyncio.sleep(left)

    async def _park(self) -> None:
        """Hold no WAL stream (no connection state here or on the walservice) until a
        read waits for WAL this timeline lacks, or a poll (about every `wal_poll_s`)
        finds committed WAL past what it ingested."""
        tl = self.timeline
        self.parked = True
        self.log.info("wal_stream_parked", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.last_record_lsn)
        try:
            while not self._stopping:
                self._wanted.clear()
                if tl.lsn_waiters:
                    return
                try:
                    await asyncio.wait_for(self._wanted.wait(), tl.config.wal_poll_s * (0.5 + random.random()))
                    return
                except TimeoutError:
                    pass
                if await self.stub.has_wal_past(tl.tenant_id, tl.timeline_id, tl.last_record_lsn):
                    return
        finally:
            self.parked = False

    def _stop_ahead(self, exc: grpc.aio.AioRpcError) -> None:
        """The walservice holds less WAL than this timeline ingested (it lost WAL it
        served): going on would apply other records at LSNs already applied. Stop the
        timeline, loudly; its reads answer DATA_LOSS."""
        tl = self.timeline
        error = CorruptionError(
            f"tenant_id={tl.tenant_id} timeline_id={tl.timeline_id} is stopped: it ingested WAL up to "
            f"lsn={tl.last_record_lsn} but the walservice no longer holds it ({exc.details()}); "
            "it is not served, since the walservice may hand those LSNs to other records"
        )
        tl.stop(error)
        self.log.error("timeline_ahead_of_wal", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.last_record_lsn, error=exc.details())

    def _stop_lost(self) -> None:
        """The walservice lost this timeline after this pageserver ingested its WAL
        (the module docstring): stop it loudly rather than re-create it empty."""
        tl = self.timeline
        error = CorruptionError(
            f"tenant_id={tl.tenant_id} timeline_id={tl.timeline_id} is stopped: the walservice no longer has this "
            f"timeline, whose WAL this pageserver ingested up to lsn={tl.last_record_lsn} (durable here: "
            f"lsn={tl.disk_consistent_lsn}). Gone: the walservice's WAL of it, and every commit it acknowledged past "
            f"lsn={tl.last_record_lsn}; it is not registered again, since an empty WAL would hand the LSNs already "
            "applied here to other records"
        )
        tl.stop(error)
        self.log.error(
            "timeline_lost_by_walservice", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.last_record_lsn,
            disk_consistent_lsn=tl.disk_consistent_lsn, start_lsn=tl.start_lsn,
        )

    async def _mark_wal_seen(self, first_lsn: int) -> None:
        """Before the first record past the start is applied: note durably that
        this timeline takes WAL (wal_seen_marker.py), once."""
        tl = self.timeline
        await asyncio.get_running_loop().run_in_executor(tl.executor, mark_wal_seen, tl.directory, Lsn(first_lsn))
        tl.wal_seen = True

    async def _register(self) -> None:
        """The walservice does not know this timeline (a crash between the two
        halves of CreateTimeline): register it, idempotently, at its start."""
        tl = self.timeline
        request = wal_pb2.WalTimeline(
            tenant_id=tl.tenant_id, timeline_id=tl.timeline_id, start_lsn=tl.start_lsn, page_size=tl.page_size
        )
        try:
            await self.stub.CreateTimeline(request, timeout=10)
            self.log.info("wal_timeline_registered", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=tl.start_lsn)
        except grpc.aio.AioRpcError as exc:
            self.log.warning("wal_timeline_register_failed", tenant=tl.tenant_id, timeline=tl.timeline_id, code=exc.code().name)

    def report_persisted(self) -> None:
        """Tell the walservice what is durable here (coalesced: one report in flight)."""
        if self._report_task is None or self._report_task.done():
            self._report_task = asyncio.create_task(self._report())

    async def _report(self) -> None:
        tl = self.timeline
        sent = 0
        while (lsn := tl.persisted_lsn()) > sent:  # it may advance while a report is in flight
            request = wal_pb2.PersistedRequest(tenant_id=tl.tenant_id, timeline_id=tl.timeline_id, remote_consistent_lsn=lsn)
            try:
                await self.stub.ReportPersisted(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                self.log.warning("report_persisted_failed", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=lsn, code=exc.code().name)
                return
            sent = lsn
