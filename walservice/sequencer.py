"""Sequencing appends for one timeline: LSN assignment and group commit.

An Append is sequenced the moment it is submitted: its conditional
`expected_end_lsn` is checked against the end of everything sequenced before it,
its records get their LSNs, and their frames are encoded onto the open `_Round`
(the batches that will share one write). One flush task per timeline writes the
rounds in order, each as one pwrite + fdatasync on a flush thread; appends that
arrive meanwhile are sequenced onto the next round, so concurrent writers share
fsyncs and throughput grows with concurrency. Encoding as appends arrive keeps
it off the critical path: when a write returns, the next round is already
encoded and is handed to the flush thread at once, before the finished round's
callers are acknowledged (the disk does not wait for the event loop).

Concurrency: all attributes are owned by the event loop. The only work off the
loop is `TimelineWal.write_and_sync` on `executor`, at most one call per
timeline at a time (the flush task awaits each before starting the next).

Replication (docs/design/0005-replication.md): with `replica` set (a cluster), an
append first makes sure this node leads the timeline (`replica.ensure_leader`:
redirect or elect), a round is encoded under the term this node leads, its bytes
are handed to the replicators as it is written (`replica.round_sequenced`), and
its callers are acknowledged once a majority flushed it (`replica.wait_committed`,
in a task of its own, so the next round is written meanwhile). Every write to the
WAL files (the leader's rounds, a follower's replicated frames, a follower's cut
of a divergent suffix) holds `wal_lock`, so they never interleave. A round whose
term is no longer led (or whose start is no longer the WAL's end) when its turn
comes is refused whole as NotLeader, and so is every round sequenced after it:
nothing of them was written.

Floor (control_file.floor_lsn): recovery never cuts WAL below it as a torn tail
(walservice/wal_storage.py). A stream sends only WAL below the persisted floor:
when it has committed WAL at or past the floor it first raises the floor to
commit_lsn (`_raise_floor`: one control write at a time, covering every stream
waiting on it), so no reader ever sees WAL that a restart could hand out again.
Each answered round raises it too, in the background (acknowledged WAL is
protected once that write lands, one control write later; streamed WAL always).

Out of disk space (walservice/wal_storage.py, "Out of disk space"): a round
whose write ran out of space was rolled back by `write_and_sync`, so its callers
and those of every round queued behind it (their LSNs follow its) are answered
RESOURCE_EXHAUSTED, `end_lsn` goes back to `flush_lsn`, and the timeline takes
the next append as usual: once space is back it is written, with no restart.
A follower does the same with replicated frames: it refuses them (the leader
counts it as not acked and sends them again, with backoff, until it takes
them). A leader of a cluster whose own write runs out of space has handed the
round to its replicators already, so it cannot take it back: its callers are
answered UNAVAILABLE (the batch may or may not survive: the followers hold it
and may commit it under the next leader), the rounds behind it are refused as
NotLeader, and the node steps down at once (`resign`) and stays out of
elections for two leases and while its disk stays full (election.py:
LEAD_MIN_FREE_BYTES), so that a node with space leads within a couple of
seconds; its appends are redirected there meanwhile. The resigned node follows: its replicated writes are refused while
its disk is full and taken once space is back, with no restart.

Invariants: floor_lsn <= commit_lsn <= flush_lsn <= end_lsn <= the sequenced end (the end of
the last queued round). `end_lsn` counts what is written or being written but
maybe not yet durable; `flush_lsn` what is fsync'd here; `commit_lsn` what is
durable on a majority (on one node, == flush_lsn). Streams and Status never
expose anything above commit_lsn.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from strata.disk_space import DiskSpaceWatch, disk_full_error, is_disk_full
from strata.errors import CorruptionError, DiskFull, EndLsnMismatch, StrataError, Unavailable
from strata.ids import Lsn, TenantId, Term, TimelineId
from strata.logs import EventLogger
from walservice.control_file import TimelineControl, write_control
from walservice.append_codec import native as native_codec
from walservice.segment import FRAME_HEADER_SIZE, Frame, encode_frame
from walservice.wal_storage import ReaderAhead, TimelineWal, WalTrimmed

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
    start_lsn: Lsn
    end_lsn: Lsn
    record_lsns: list[Lsn]
    term: Term


@dataclass(slots=True)
class _Round:
    """Batches sequenced at [start_lsn, end_lsn) under `term`, to be written together:
    `data` their encoded frames, `acks` each batch's caller and result."""

    start_lsn: Lsn
    end_lsn: Lsn
    term: Term
    data: bytearray
    acks: list[tuple[asyncio.Future[AppendResult], AppendResult]]


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class Timeline:
    def __init__(
        self,
        wal: TimelineWal,
        executor: Executor,
        log: EventLogger,
        clock_us: Callable[[], int] = wall_clock_us,
        disk: DiskSpaceWatch | None = None,
    ) -> None:
        self.wal = wal
        # The node's disk-full state (`disk_full` / `disk_space_back` log lines).
        self.disk = disk if disk is not None else DiskSpaceWatch(log, wal.directory)
        self.control: TimelineControl = wal.control
        self.executor = executor
        self.log = log
        self.clock_us = clock_us
        # Sequenced / written and fsync'd here / acknowledged (on a majority).
        self.end_lsn: Lsn = wal.end_lsn
        self.flush_lsn: Lsn = wal.end_lsn
        self.commit_lsn: Lsn = wal.end_lsn
        self.broken: StrataError | None = None
        self.closing = False
        # Streams waiting for commit_lsn to move (a cluster elects a leader for them).
        self.stream_waiters = 0
        # Rounds sequenced and not yet written, oldest first; the last one takes new appends.
        self._rounds: deque[_Round] = deque()
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
        # Written rounds waiting for a majority before their callers are answered (a cluster).
        self._acks: set[asyncio.Future[None]] = set()
        # The control write raising floor_lsn to commit_lsn, while one runs (see "Floor").
        self._floor_task: asyncio.Task[None] | None = None

    @property
    def tenant_id(self) -> TenantId:
        return self.control.tenant_id

    @property
    def timeline_id(self) -> TimelineId:
        return self.control.timeline_id

    @property
    def term(self) -> Term:
        return self.control.term

    def check_usable(self) -> None:
        if self.broken is not None:
            raise self.broken
        if self.closing:
            raise Unavailable(f"tenant={self.tenant_id} timeline={self.timeline_id}: the walservice is shutting down")

    # -- appends ----------------------------------------------------------------

    def submit(self, payloads: list[bytes], expected_end_lsn: Lsn = Lsn(0)) -> asyncio.Future[AppendResult]:
        """Sequence one batch of serialized records onto the open round. The future
        settles once the batch is durable, or with the reason it was refused.
        Callers that stop waiting do not withdraw the batch: it may still be
        written (as with any RPC whose caller gave up)."""
        future, rnd = self._sequence(expected_end_lsn)
        if rnd is None:
            return future
        position = start = rnd.end_lsn
        lsns = []
        buf, term, now_us = rnd.data, rnd.term, self.clock_us()
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            buf += encode_frame(position, payload, term, now_us, i == last)
            position += FRAME_HEADER_SIZE + len(payload)  # frame_lsn, inlined: the hottest loop
            lsns.append(position)
        return self._sequenced(rnd, future, AppendResult(start, position, lsns, term))

    def submit_spans(self, message: bytes, spans: bytes, expected_end_lsn: Lsn = Lsn(0)) -> asyncio.Future[AppendResult]:
        """`submit` for records still in their wire bytes: each (offset, length)
        pair of `spans` is one serialized Record in `message`, already validated
        (walservice/append_codec.py; the C codec encodes the frames)."""
        future, rnd = self._sequence(expected_end_lsn)
        if rnd is None:
            return future
        start = rnd.end_lsn
        lsns = native_codec.encode_frames(rnd.data, message, spans, start, rnd.term, self.clock_us())  # type: ignore[union-attr]
        return self._sequenced(rnd, future, AppendResult(start, lsns[-1], lsns, rnd.term))

    def _sequence(self, expected_end_lsn: Lsn) -> tuple[asyncio.Future[AppendResult], _Round | None]:
        """A new append's future and the open round it goes on (a new one when there
        is none or it is full); no round when the append is refused already (the
        future holds why: not the leader, or `expected_end_lsn` is not the end)."""
        self.check_usable()
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        rounds = self._rounds
        rnd = rounds[-1] if rounds else None
        position = rnd.end_lsn if rnd is not None else self.end_lsn
        if expected_end_lsn and expected_end_lsn != position:
            future.set_exception(EndLsnMismatch(expected_end_lsn, position))
            return future, None
        if rnd is None or len(rnd.data) >= MAX_GROUP_BYTES:
            if self.replica is None:
                term = self.term
            else:
                try:
                    term = self.replica.leader_term_or_raise()
                except Unavailable as exc:
                    future.set_exception(exc)
                    return future, None
            rnd = _Round(position, position, term, bytearray(), [])
            rounds.append(rnd)
        return future, rnd

    def _sequenced(self, rnd: _Round, future: asyncio.Future[AppendResult], result: AppendResult) -> asyncio.Future[AppendResult]:
        rnd.end_lsn = result.end_lsn
        rnd.acks.append((future, result))
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

    async def append(self, payloads: list[bytes], expected_end_lsn: Lsn = Lsn(0)) -> AppendResult:
        """Sequence and durably store one batch of serialized records."""
        await self.ready_for_appends()
        return await self.submit(payloads, expected_end_lsn)

    async def _flush_loop(self) -> None:
        """Write the queued rounds in order. Round N+1 is handed to the flush thread
        as soon as round N's write returned, and only then are round N's callers
        acknowledged."""
        try:
            # One loop turn first: requests already parsed and waiting to run (other
            # RPC handlers, the rest of a stream message) join the first round.
            await asyncio.sleep(0)
            written: _Round | None = None
            while self._rounds or written is not None:
                write = await self._start_write(self._rounds.popleft()) if self._rounds else None
                if written is not None:
                    self._acknowledge(written)
                    written = None
                if write is not None:
                    written = await self._finish_write(*write)
        finally:
            self._flush_task = None

    async def _start_write(self, rnd: _Round) -> tuple[_Round, asyncio.Future[None], int | None] | None:
        """Take `wal_lock` and hand the round to the flush thread (None: refused)."""
        await self.wal_lock.acquire()
        # Leadership is checked under wal_lock: since the round was sequenced, a
        # PeerAppend of a higher term (or a lost quorum) may have deposed this node,
        # and a deposed leader must not write under its old term (a follower's cut of
        # a divergent suffix could otherwise interleave with it). Nothing of this
        # round or of those behind it is written then, so each is a NotLeader.
        term = rnd.term
        if self.replica is not None and (self.replica.leader_term != term or self.term != term or self.end_lsn != rnd.start_lsn):
            self.wal_lock.release()
            refused = self.replica.not_leader(f"it stopped leading term {term} before the round was written")
            self._refuse_queued(rnd, refused)
            return None
        # Only this flush task writes while the node leads, so the segment decision
        # made here holds; followers cut segments at the same LSNs.
        new_segment_at = rnd.start_lsn if self.wal.needs_new_segment() else None
        data = bytes(rnd.data)
        if self.replica is not None:
            self.replica.round_sequenced(rnd.start_lsn, rnd.end_lsn, data, new_segment_at is not None)
        self.end_lsn = rnd.end_lsn
        write = asyncio.get_running_loop().run_in_executor(self.executor, self.wal.write_and_sync, data, new_segment_at)
        return rnd, write, new_segment_at

    async def _finish_write(self, rnd: _Round, write: asyncio.Future[None], new_segment_at: int | None) -> _Round | None:
        """Wait for the round's write, then release `wal_lock` (None: it failed)."""
        try:
            await write
        except DiskFull as exc:
            if self.replica is not None:
                self._resign_after_disk_full(exc, rnd)  # sent to the followers already (see the docstring)
            else:
                self._refuse_after_disk_full(exc, rnd)
            return None
        except OSError as exc:
            self._stop_after_write_error(exc, rnd)
            return None
        finally:
            self.wal_lock.release()
        self.disk.succeeded()
        self.wal.committed(rnd.end_lsn, new_segment_at)
        self.flush_lsn = rnd.end_lsn
        if new_segment_at is not None:
            self._persist_commit_floor()
        return rnd

    def _acknowledge(self, rnd: _Round) -> None:
        """Answer a written round's callers: at once on a single node, once a
        majority flushed it in a cluster."""
        if self.replica is not None:
            task = asyncio.ensure_future(self._acknowledge_when_committed(rnd))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
            return
        self.commit_lsn = rnd.end_lsn
        self._answer(rnd)

    async def _acknowledge_when_committed(self, rnd: _Round) -> None:
        assert self.replica is not None
        try:
            await self.replica.wait_committed(rnd.end_lsn)
        except Unavailable as exc:
            for future, _ in rnd.acks:
                _settle(future, exc=exc)
            return
        self._answer(rnd)

    def _answer(self, rnd: _Round) -> None:
        for future, result in rnd.acks:
            if not future.done():
                future.set_result(result)
        self._raise_floor()
        self._wake_streams()
        self.log.debug(
            "group_commit",
            tenant=self.tenant_id,
            timeline=self.timeline_id,
            lsn=rnd.end_lsn,
            batches=len(rnd.acks),
            bytes=len(rnd.data),
        )

    def _refuse_queued(self, rnd: _Round, exc: StrataError) -> None:
        """Refuse `rnd` and every round queued behind it (their LSNs follow its)."""
        for queued in (rnd, *self._rounds):
            for future, _ in queued.acks:
                _settle(future, exc=exc)
        self._rounds.clear()

    def _refuse_after_disk_full(self, exc: DiskFull, rnd: _Round) -> None:
        """The round's write ran out of space and was rolled back: refuse it and
        every round behind it, and sequence the next append where the WAL ends."""
        self.end_lsn = self.flush_lsn
        self.disk.failed("wal_append", exc, tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn)
        self.log.info(
            "wal_append_refused", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn,
            reason="disk_full", batches=len(rnd.acks) + sum(len(r.acks) for r in self._rounds),
        )
        self._refuse_queued(rnd, exc)

    def _resign_after_disk_full(self, exc: DiskFull, rnd: _Round) -> None:
        """A cluster leader's write ran out of space and was rolled back here, but the
        round went to the followers already: its fate is theirs now (they may commit
        it under the next leader), so its callers are told it may or may not survive,
        the rounds behind it (sent to nobody) are refused as NotLeader, and this node
        steps down so that a node with space leads (see the module docstring)."""
        assert self.replica is not None
        self.end_lsn = self.flush_lsn
        self.disk.failed("wal_append", exc, tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn)
        self.log.warning(
            "wal_append_refused", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn,
            reason="disk_full", role="leader", batches=len(rnd.acks) + sum(len(r.acks) for r in self._rounds),
        )
        unknown = Unavailable(
            f"tenant={self.tenant_id} timeline={self.timeline_id}: the leader ran out of disk space writing "
            f"lsn={rnd.start_lsn}..{rnd.end_lsn} ({exc}); it stepped down; not acknowledged (the batch may or may "
            "not survive: the followers it was sent to may commit it under the next leader)"
        )
        for future, _ in rnd.acks:
            _settle(future, exc=unknown)
        self.replica.resign("its disk is full")
        queued = list(self._rounds)
        self._rounds.clear()
        refused = self.replica.not_leader("it ran out of disk space and stepped down")
        for behind in queued:
            for future, _ in behind.acks:
                _settle(future, exc=refused)

    def _stop_after_write_error(self, exc: OSError | StrataError, rnd: _Round | None) -> None:
        """A failed write or fsync leaves the file's state unknown: stop the timeline
        (a restart recovers the tail) and acknowledge nothing."""
        self.broken = StrataError(
            f"tenant={self.tenant_id} timeline={self.timeline_id}: WAL write failed at lsn={self.flush_lsn}: {exc}; "
            "the timeline is stopped until the walservice restarts and recovers it"
        )
        self.log.error("wal_write_failed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn, error=exc)
        if rnd is not None:
            self._refuse_queued(rnd, self.broken)
        self._wake_streams()

    # -- streams -----------------------------------------------------------------

    def _wake_streams(self) -> None:
        self._commit_event.set()
        self._commit_event = asyncio.Event()

    async def stream(self, after_lsn: Lsn) -> AsyncIterator[list[Frame]]:
        """Committed frames with LSN > after_lsn, then new commits as they happen.
        Ends when the timeline closes."""
        self.check_usable()
        if self.replica is not None:
            self.replica.check_serving()
        elif after_lsn > self.flush_lsn:
            # One node: everything it ever served is in its WAL (below the floor), so a
            # reader past the end holds WAL this node does not (a cluster node may lag).
            raise ReaderAhead(
                f"tenant={self.tenant_id} timeline={self.timeline_id}: start_lsn={after_lsn} is past the end of this "
                f"walservice's WAL (lsn={self.flush_lsn}): the reader holds WAL this walservice does not"
            )
        loop = asyncio.get_running_loop()
        try:
            cursor = self.wal.cursor(after_lsn)
        except WalTrimmed:
            offloaded = self.wal.offloaded
            if offloaded is None:
                raise
            # Trimmed once offloaded: serve it from the offloaded copy (walservice/wal_restore.py).
            below = self.wal.segments[0].start_lsn
            segments = await loop.run_in_executor(None, offloaded.covering, self.tenant_id, self.timeline_id, after_lsn, below)
            self.log.info("wal_stream_from_remote", tenant=self.tenant_id, timeline=self.timeline_id, lsn=after_lsn, until=below)
            for seg in segments:
                frames = await loop.run_in_executor(None, offloaded.frames, seg, self.tenant_id, self.timeline_id, after_lsn)
                for chunk in _chunks(frames, STREAM_CHUNK_BYTES):
                    yield chunk
            after_lsn = max(after_lsn, below)
            cursor = self.wal.cursor(after_lsn)
        while True:
            if self.broken is not None:
                raise self.broken
            if cursor.position < self.commit_lsn:
                if cursor.position >= self.control.floor_lsn:
                    await asyncio.shield(self._raise_floor())
                    if cursor.position >= self.control.floor_lsn:
                        if self.disk.full:
                            raise disk_full_error(
                                "walservice", self.wal.directory,
                                f"floor_lsn was not recorded in the control file, so no WAL past lsn={self.control.floor_lsn} is served",
                                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                            )
                        raise Unavailable(
                            f"tenant={self.tenant_id} timeline={self.timeline_id}: cannot record floor_lsn in the "
                            "control file, so no WAL past it is served (see the control_write_failed log line)"
                        )
                    continue
                limit = min(self.commit_lsn, self.control.floor_lsn)
                try:
                    frames = await loop.run_in_executor(None, cursor.read, limit, STREAM_CHUNK_BYTES)
                except CorruptionError as exc:
                    self.log.error("wal_read_corrupt", tenant=self.tenant_id, timeline=self.timeline_id, error=exc)
                    raise
                if frames:
                    yield frames
                continue
            if self.closing:
                return
            self.stream_waiters += 1
            try:
                await self._commit_event.wait()
            finally:
                self.stream_waiters -= 1

    # -- state -------------------------------------------------------------------

    async def report_persisted(self, remote_consistent_lsn: Lsn) -> None:
        """Record the pageserver's remote_consistent_lsn (it only moves forward);
        RESOURCE_EXHAUSTED when the control file cannot be written for want of space."""
        self.check_usable()
        try:
            await self._advance_control("remote_consistent_lsn", remote_consistent_lsn)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.disk.failed("control_file", exc, tenant=self.tenant_id, timeline=self.timeline_id)
            raise disk_full_error(
                "walservice", self.wal.directory, f"remote_consistent_lsn={remote_consistent_lsn} was not recorded", exc
            ) from exc

    async def record_backup(self, backup_lsn: Lsn) -> None:
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

    async def write_replicated(self, start_lsn: Lsn, data: bytes, end_lsn: Lsn, new_segment: bool) -> None:
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
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.wal.write_and_sync, data, new_segment_at,
                    "the replicated frames were not written (the leader sends them again)",
                )
            except DiskFull as exc:
                # Rolled back: refused whole, end_lsn unchanged; the leader retries.
                self.disk.failed("wal_replicated_write", exc, tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.flush_lsn)
                raise
            except OSError as exc:
                self._stop_after_write_error(exc, None)
                raise self.broken from exc  # type: ignore[misc]
            self.disk.succeeded()
            self.wal.committed(end_lsn, new_segment_at)
            self.end_lsn = self.flush_lsn = end_lsn
        if new_segment_at is not None:
            self._persist_commit_floor()

    async def truncate_wal_locked(self, lsn: Lsn) -> None:
        """Cut the WAL back to `lsn` (a divergent suffix from an older term; never
        below commit_lsn, which the caller checked). The caller holds `wal_lock` and
        must not be cancelled midway (PeerAppend runs shielded)."""
        if lsn >= self.end_lsn:
            return
        self.end_lsn = self.flush_lsn = lsn
        await asyncio.get_running_loop().run_in_executor(self.executor, self.wal.truncate_to, lsn)

    async def _advance_control(self, field_name: str, lsn: Lsn) -> None:
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

    def _raise_floor(self) -> asyncio.Task[None]:
        """The control write raising floor_lsn to commit_lsn: the one running, or a
        new one (in `_background`, so `close` waits for it)."""
        if self._floor_task is None or self._floor_task.done():
            self._floor_task = asyncio.ensure_future(self._write_floor())
            self._background.add(self._floor_task)
            self._floor_task.add_done_callback(self._background.discard)
        return self._floor_task

    async def _write_floor(self) -> None:
        while self.broken is None and self.control.floor_lsn < self.commit_lsn:
            lsn = self.commit_lsn
            try:
                await self._advance_control("floor_lsn", lsn)
            except OSError as exc:
                if is_disk_full(exc):
                    self.disk.failed("control_file", exc, tenant=self.tenant_id, timeline=self.timeline_id)
                self.log.warning("control_write_failed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=lsn, error=exc)
                return
            self.disk.succeeded()

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
        refuses new ones): the flush rounds in flight and queued run to the end,
        and written rounds wait for their majority (a cluster)."""
        while self._flush_task is not None or self._acks:
            if self._flush_task is not None:
                await asyncio.shield(self._flush_task)
            if self._acks:
                await asyncio.shield(asyncio.gather(*self._acks, return_exceptions=True))

    async def close(self) -> None:
        """Finish the flush in flight, end streams, close files."""
        self.begin_close()
        await self.drain()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.broken is None and self.replica is None and self.flush_lsn > self.control.commit_lsn:
            try:
                await self._advance_control("commit_lsn", self.flush_lsn)  # the floor "Lost WAL" checks
            except OSError:
                pass
        self.wal.close()


def _chunks(frames: list[Frame], max_bytes: int) -> list[list[Frame]]:
    """`frames` cut into runs of about `max_bytes` of payload (at least one frame each)."""
    out: list[list[Frame]] = []
    size = max_bytes
    for frame in frames:
        if size >= max_bytes:
            out.append([])
            size = 0
        out[-1].append(frame)
        size += FRAME_HEADER_SIZE + len(frame.payload)
    return out


def _settle(future: asyncio.Future[AppendResult], *, result: AppendResult | None = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
