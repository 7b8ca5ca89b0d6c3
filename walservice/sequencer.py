"""Sequencing appends for one timeline: LSN assignment and group commit.

Every Append for a timeline joins `_pending`; one flush task per timeline takes
everything pending, checks each conditional append against the end LSN as it
stands after the appends before it in the group, encodes the accepted batches as
consecutive frames into one buffer, and hands it to a flush thread for one
pwrite + fdatasync. Appends arriving meanwhile wait for the next round, so
concurrent writers share fsyncs and throughput grows with concurrency.

Concurrency: all attributes are owned by the event loop. The only work off the
loop is `TimelineWal.write_and_sync` on `executor`, at most one call per
timeline at a time (while `_flush_task` runs).

Replication (docs/design/0005-replication.md): with `replica` set (a cluster), an
append first makes sure this node leads the timeline (`replica.ensure_leader`:
redirect or elect), a round's bytes are handed to the replicators as soon as they
are encoded (`replica.round_sequenced`), and callers are acknowledged once a
majority flushed the round (`replica.wait_committed`). Every write to the WAL
files (the leader's rounds, a follower's replicated frames, a follower's cut of a
divergent suffix) holds `wal_lock`, so they never interleave.

Invariants: commit_lsn <= flush_lsn <= end_lsn. `end_lsn` counts batches that
are sequenced but maybe not yet durable; `flush_lsn` what is fsync'd here;
`commit_lsn` what is durable on a majority (on one node, == flush_lsn). Streams
and Status never expose anything above commit_lsn.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from strata.errors import CorruptionError, EndLsnMismatch, StrataError, Unavailable
from strata.logs import EventLogger
from walservice.control_file import TimelineControl, write_control
from walservice.segment import FRAME_HEADER_SIZE, Frame, encode_frame
from walservice.wal_storage import TimelineWal

if TYPE_CHECKING:
    from walservice.replication import TimelineReplica

# A flush round stops taking pending batches once its buffer passes this.
MAX_GROUP_BYTES = 16 * 1024 * 1024
# Stream reads hand out about this many bytes of frames per message.
STREAM_CHUNK_BYTES = 1024 * 1024


# Both are made once per append on the event loop: plain slotted dataclasses
# (a frozen one costs about four times as much to construct).
@dataclass(slots=True)
class AppendResult:
    start_lsn: int
    end_lsn: int
    record_lsns: list[int]
    term: int


@dataclass(slots=True)
class _PendingAppend:
    payloads: list[bytes]
    expected_end_lsn: int
    future: asyncio.Future[AppendResult]
    size: int  # the payloads' bytes


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class Timeline:
    def __init__(
        self,
        wal: TimelineWal,
        executor: Executor,
        log: EventLogger,
        clock_us: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.wal = wal
        self.control: TimelineControl = wal.control
        self.executor = executor
        self.log = log
        self.clock_us = clock_us
        self.end_lsn = wal.end_lsn
        self.flush_lsn = wal.end_lsn
        self.commit_lsn = wal.end_lsn
        self.broken: StrataError | None = None
        self.closing = False
        self._pending: deque[_PendingAppend] = deque()
        self._flush_task: asyncio.Task[None] | None = None
        self._commit_event = asyncio.Event()
        # Serializes control file rewrites (guards `control` against lost updates).
        self._control_lock = asyncio.Lock()
        # Held by every write to the WAL files (see the module docstring).
        self.wal_lock = asyncio.Lock()
        # Set by walservice.replication for a node of a cluster; None on a single node.
        self.replica: TimelineReplica | None = None
        # Control file writes started in the background (commit_lsn at a segment roll).
        self._background: set[asyncio.Task[None]] = set()

    @property
    def tenant_id(self) -> str:
        return self.control.tenant_id

    @property
    def timeline_id(self) -> str:
        return self.control.timeline_id

    @property
    def term(self) -> int:
        return self.control.term

    def check_usable(self) -> None:
        if self.broken is not None:
            raise self.broken
        if self.closing:
            raise Unavailable(f"tenant={self.tenant_id} timeline={self.timeline_id}: the walservice is shutting down")

    # -- appends ----------------------------------------------------------------

    def submit(self, payloads: list[bytes], expected_end_lsn: int = 0, size: int | None = None) -> asyncio.Future[AppendResult]:
        """Queue one batch of serialized records for the next flush round (`size`:
        their bytes, when the caller already counted them). The future settles
        once the batch is durable, or with the reason it was refused. Callers that
        stop waiting do not withdraw the batch: it may still be written (as with
        any RPC whose caller gave up)."""
        self.check_usable()
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        if size is None:
            size = sum(map(len, payloads))
        self._pending.append(_PendingAppend(payloads, expected_end_lsn, future, size))
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_loop())
        return future

    async def ready_for_appends(self) -> None:
        """Raise unless appends can be taken here now: the timeline is usable and,
        in a cluster, this node leads it (this may run an election; a node that
        does not lead raises NotLeader naming the leader). Call before `submit`."""
        self.check_usable()
        if self.replica is not None:
            await self.replica.ensure_leader()

    async def append(self, payloads: list[bytes], expected_end_lsn: int = 0) -> AppendResult:
        """Sequence and durably store one batch of serialized records."""
        await self.ready_for_appends()
        return await self.submit(payloads, expected_end_lsn)

    async def _flush_loop(self) -> None:
        try:
            while self._pending:
                # One loop turn first: requests already parsed and waiting to run
                # (other RPC handlers, the rest of a stream message) join this round.
                await asyncio.sleep(0)
                await self._flush_round()
        finally:
            self._flush_task = None

    def _take_group(self) -> list[_PendingAppend]:
        group, size = [], 0
        pending = self._pending
        while pending and (not group or size < MAX_GROUP_BYTES):
            item = pending.popleft()
            group.append(item)
            size += item.size
        return group

    async def _flush_round(self) -> None:
        group = self._take_group()
        now_us = self.clock_us()
        term = self.term
        if self.replica is not None:
            try:
                term = self.replica.leader_term_or_raise()
            except Unavailable as exc:
                for item in group:
                    _settle(item.future, exc=exc)
                return
        position = self.end_lsn
        buf = bytearray()
        accepted: list[tuple[_PendingAppend, AppendResult]] = []
        for item in group:
            if item.expected_end_lsn and item.expected_end_lsn != position:
                _settle(item.future, exc=EndLsnMismatch(item.expected_end_lsn, position))
                continue
            start, lsns = position, []
            last = len(item.payloads) - 1
            for i, payload in enumerate(item.payloads):
                buf += encode_frame(position, payload, term, now_us, i == last)
                position += FRAME_HEADER_SIZE + len(payload)  # frame_lsn, inlined: the hottest loop
                lsns.append(position)
            accepted.append((item, AppendResult(start, position, lsns, term)))
        if not accepted:
            return
        data = bytes(buf)
        start_lsn = self.end_lsn
        async with self.wal_lock:
            # Leadership is re-checked under wal_lock: while this round waited for the
            # lock, a PeerAppend of a higher term (or a lost quorum) may have deposed
            # this node, and a deposed leader must not write under its old term (a
            # follower's cut of a divergent suffix could otherwise interleave with it).
            # Nothing of the round is written then, so the refusal is a NotLeader.
            if self.replica is not None and (self.replica.leader_term != term or self.term != term or self.end_lsn != start_lsn):
                refused = self.replica.not_leader(f"it stopped leading term {term} before the round was written")
                for item, _ in accepted:
                    _settle(item.future, exc=refused)
                return
            # Only this flush loop writes while the node leads, so the segment decision
            # made here holds; followers cut segments at the same LSNs.
            new_segment_at = start_lsn if self.wal.needs_new_segment() else None
            if self.replica is not None:
                self.replica.round_sequenced(start_lsn, position, data, new_segment_at is not None)
            self.end_lsn = position
            try:
                await asyncio.get_running_loop().run_in_executor(self.executor, self.wal.write_and_sync, data, new_segment_at)
            except OSError as exc:
                self._stop_after_write_error(exc, accepted)
                return
            self.wal.committed(position, new_segment_at)
            self.flush_lsn = position
        if new_segment_at is not None:
            self._persist_commit_floor()
        if self.replica is None:
            self.commit_lsn = position
        else:
            try:
                await self.replica.wait_committed(position)
            except Unavailable as exc:
                for item, _ in accepted:
                    _settle(item.future, exc=exc)
                return
        for item, result in accepted:
            if not item.future.done():
                item.future.set_result(result)
        self._wake_streams()
        self.log.debug(
            "group_commit",
            tenant=self.tenant_id,
            timeline=self.timeline_id,
            lsn=position,
            batches=len(accepted),
            bytes=len(buf),
        )

    def _stop_after_write_error(self, exc: OSError, accepted: list[tuple[_PendingAppend, AppendResult]]) -> None:
        """A failed write or fsync leaves the file's state unknown: stop the timeline
        (a restart recovers the tail) and acknowledge nothing."""
        self.broken = StrataError(
            f"tenant={self.tenant_id} timeline={self.timeline_id}: WAL write failed at lsn={self.flush_lsn}: {exc}; "
            "the timeline is stopped until the walservice restarts and recovers it"
        )
        self.log.error("wal_write_failed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn, error=exc)
        for item, _ in accepted:
            _settle(item.future, exc=self.broken)
        for item in self._pending:
            _settle(item.future, exc=self.broken)
        self._pending.clear()
        self._wake_streams()

    # -- streams -----------------------------------------------------------------

    def _wake_streams(self) -> None:
        self._commit_event.set()
        self._commit_event = asyncio.Event()

    async def stream(self, after_lsn: int) -> AsyncIterator[list[Frame]]:
        """Committed frames with LSN > after_lsn, then new commits as they happen.
        Ends when the timeline closes."""
        self.check_usable()
        if self.replica is not None:
            self.replica.check_serving()
        cursor = self.wal.cursor(after_lsn)
        loop = asyncio.get_running_loop()
        while True:
            if self.broken is not None:
                raise self.broken
            if cursor.position < self.commit_lsn:
                try:
                    frames = await loop.run_in_executor(None, cursor.read, self.commit_lsn, STREAM_CHUNK_BYTES)
                except CorruptionError as exc:
                    self.log.error("wal_read_corrupt", tenant=self.tenant_id, timeline=self.timeline_id, error=exc)
                    raise
                if frames:
                    yield frames
                continue
            if self.closing:
                return
            await self._commit_event.wait()

    # -- state -------------------------------------------------------------------

    async def report_persisted(self, remote_consistent_lsn: int) -> None:
        """Record the pageserver's remote_consistent_lsn (it only moves forward)."""
        self.check_usable()
        await self._advance_control("remote_consistent_lsn", remote_consistent_lsn)

    async def record_backup(self, backup_lsn: int) -> None:
        """Record that remote storage durably holds this timeline's WAL up to
        `backup_lsn` (walservice/offload.py; it only moves forward)."""
        await self._advance_control("backup_lsn", backup_lsn)

    async def set_control(self, **changes: Any) -> None:
        """Durably rewrite control file fields (replication's term state), under
        `_control_lock` like every control write. Shielded: a cancelled caller (an
        RPC whose client went away) never leaves the file ahead of `control`."""

        async def write() -> None:
            async with self._control_lock:
                await self._write_control_locked(**changes)

        await asyncio.shield(write())

    # -- replicated writes (a follower; walservice/replication.py) ------------------

    async def write_replicated(self, start_lsn: int, data: bytes, end_lsn: int, new_segment: bool) -> None:
        """Append frames received from the leader (whole batches, already checked)
        at `start_lsn` == end_lsn and fsync, in a new segment when the leader started
        one there (so segment files match the leader's); flush_lsn follows.
        The caller must not be cancelled midway (the file would be ahead of
        end_lsn): walservice/peer_service.py runs PeerAppend shielded."""
        async with self.wal_lock:
            if start_lsn != self.end_lsn:
                raise Unavailable(f"replicated frames start at lsn={start_lsn}, but this node's WAL ends at lsn={self.end_lsn}")
            # (An empty segment already starting there, e.g. a rejoining node's first one, is used as it is.)
            new_segment_at = start_lsn if new_segment and self.wal.segments[-1].start_lsn != start_lsn else None
            try:
                await asyncio.get_running_loop().run_in_executor(self.executor, self.wal.write_and_sync, data, new_segment_at)
            except OSError as exc:
                self._stop_after_write_error(exc, [])
                raise self.broken from exc  # type: ignore[misc]
            self.wal.committed(end_lsn, new_segment_at)
            self.end_lsn = self.flush_lsn = end_lsn
        if new_segment_at is not None:
            self._persist_commit_floor()

    async def truncate_wal_locked(self, lsn: int) -> None:
        """Cut the WAL back to `lsn` (a divergent suffix from an older term; never
        below commit_lsn, which the caller checked). The caller holds `wal_lock` and
        must not be cancelled midway (PeerAppend runs shielded)."""
        if lsn >= self.end_lsn:
            return
        self.end_lsn = self.flush_lsn = lsn
        await asyncio.get_running_loop().run_in_executor(self.executor, self.wal.truncate_to, lsn)

    async def _advance_control(self, field_name: str, lsn: int) -> None:
        """Durably raise one LSN field of the control file; `_control_lock` makes
        concurrent rewrites (ReportPersisted, offload) serial, so none is lost."""
        async with self._control_lock:
            if lsn > getattr(self.control, field_name):
                await self._write_control_locked(**{field_name: lsn})

    async def _write_control_locked(self, **changes: Any) -> None:
        """Write the control file with `changes`, then publish it (caller holds `_control_lock`)."""
        control = replace(self.control, **changes)
        await asyncio.get_running_loop().run_in_executor(self.executor, write_control, self.wal.directory, control)
        self.control = self.wal.control = control

    def _persist_commit_floor(self) -> None:
        """At each new segment, record commit_lsn in the control file (in the
        background): WAL recovered short of it at the next start was lost
        (walservice/timelines.py, "Lost WAL"), not merely unsynced."""
        lsn = self.commit_lsn if self.replica is not None else self.flush_lsn

        async def write() -> None:
            try:
                await self._advance_control("commit_lsn", lsn)
            except OSError as exc:
                self.log.warning("control_write_failed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=lsn, error=exc)

        task = asyncio.ensure_future(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def begin_close(self) -> None:
        """Refuse new appends and end open streams (the first step of shutdown)."""
        self.closing = True
        self._wake_streams()

    async def drain(self) -> None:
        """Until every append taken so far is answered (after `begin_close`, which
        refuses new ones): the flush rounds in flight and queued run to the end."""
        while self._flush_task is not None:
            await asyncio.shield(self._flush_task)

    async def close(self) -> None:
        """Finish the flush in flight, end streams, close files."""
        self.begin_close()
        if self._flush_task is not None:
            await self._flush_task
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.broken is None and self.replica is None and self.flush_lsn > self.control.commit_lsn:
            try:
                await self._advance_control("commit_lsn", self.flush_lsn)  # the floor "Lost WAL" checks
            except OSError:
                pass
        self.wal.close()


def _settle(future: asyncio.Future[AppendResult], *, result: AppendResult | None = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
