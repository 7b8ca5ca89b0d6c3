"""Replication: majority-acknowledged appends, follower sync and catch-up, and
timelines created and deleted on the whole cluster. The protocol, its invariants
and its timeouts are docs/design/0005-replication.md; the names here match it.

- `TimelineReplica`: one timeline's role on this node (leader / follower): its
  term state and elections (`walservice.election.TimelineElection`, which it
  extends), the PeerAppend handler (`on_peer_append`) and, while leading, one
  `Replicator` task per peer streaming the WAL to it.
- `Cluster`: attaches a TimelineReplica to every timeline; CreateTimeline and
  DeleteTimeline on every node. The peers themselves are `walservice.peers`.

Concurrency: everything here is owned by the process's one event loop. Per
timeline, `state_lock` serializes the handlers that change the term state or the
WAL on behalf of a peer (votes, PeerAppend), `election_lock` lets one election run
at a time, control file writes go through `Timeline.set_control` (its
`_control_lock`) and WAL writes hold `Timeline.wal_lock`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from strata.errors import CorruptionError, InvalidArgument, StrataError, Unavailable
from strata.ids import Term
from strata.logs import EventLogger
from strata.v1 import peer_pb2, wal_pb2
from walservice.control_file import NO_VOTE
from walservice.election import HEARTBEAT_S, LEADER_LEASE_S, VOTE_TIMEOUT_S, TimelineElection
from walservice.peer_stream import PeerAppendConnection, PeerStreamRefused
from walservice.peers import (
    PEER_APPEND_TIMEOUT_S,
    ClusterConfig,
    GrpcPeerTransport,
    PeerClients,
    PeerTransport,
    PeerUnreachable,
)
from walservice.segment import iter_frames
from walservice.sequencer import Timeline
from walservice.term_history import divergence_lsn, history_from_proto, history_to_proto, history_up_to

if TYPE_CHECKING:
    from walservice.timelines import TimelineSet


QUORUM_TIMEOUT_S = 2.0
# How often the Cluster looks for timelines that want a leader and have none.
ELECTION_WATCH_S = HEARTBEAT_S
CREATE_TIMEOUT_S = 2.0
# A follower's ReportPersisted sent on to the leader.
FORWARD_TIMEOUT_S = 5.0
# A replicator sends at most about this much per PeerAppend.
MAX_SEND_BYTES = 4 * 1024 * 1024
# Rounds kept in memory for the replicators (older ones are read back from disk).
MAX_RECENT_BYTES = 32 * 1024 * 1024


class PeerLacksTimeline(Exception):
    """A follower answered a PeerAppend with NOT_FOUND: it lacks the timeline (a wiped disk)."""


def check_frames(data: bytes, start_lsn: int) -> int:
    """Check replicated frames (checksums, whole batches); return their end LSN."""
    end, last_eob = start_lsn, True
    for _, frame in iter_frames(data, 0, start_lsn, 1 << 64):
        end, last_eob = frame.lsn, frame.end_of_batch
    if end - start_lsn != len(data) or not last_eob:
        raise CorruptionError(f"replicated frames at lsn={start_lsn} do not form whole batches")
    return end


@dataclass
class _Round:
    start_lsn: int
    end_lsn: int
    data: bytes
    new_segment: bool  # the round starts a segment on the leader


class Replicator:
    """The leader's sender to one follower, for one term: brings it up to the
    leader's log and keeps it there (frames, or a heartbeat every HEARTBEAT_S)."""

    def __init__(self, replica: TimelineReplica, node_id: int, term: int) -> None:
        self.replica = replica
        self.node_id = node_id
        self.term = term
        self.next_lsn: int | None = None  # the follower's end, once it answered
        self.match_lsn = 0  # what it flushed in this term (0 until it answered)
        self.last_ok = 0.0  # monotonic time of its last answer
        self.wake = asyncio.Event()
        self._connection: PeerAppendConnection | None = None  # open to the follower, or None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        r = self.replica
        tl = r.timeline
        backoff = HEARTBEAT_S / 2
        # Not stopped by the timeline's closing (SIGTERM): rounds in flight still need
        # a majority to be answered; TimelineReplica.close stops it after they drained.
        while r.leader_term == self.term:
            try:
                start, data, new_segment = await self._next_data()
                request = r.append_request(self.term, start, data, new_segment)
                response = await self._exchange(request)
            except PeerUnreachable:
                await asyncio.sleep(backoff * (0.5 + r.rng.random()))
                continue
            except PeerLacksTimeline:  # its disk was wiped
                await r.send_create(self.node_id)
                await asyncio.sleep(backoff)
                continue
            except StrataError as exc:
                r.log.warning("replicate_failed", tenant=tl.tenant_id, timeline=tl.timeline_id, node=self.node_id, error=exc)
                await asyncio.sleep(backoff)
                continue
            if response.term > self.term:
                async with r.state_lock:
                    await r.step_down(response.term, f"node {self.node_id} is at term {response.term}")
                return
            self.last_ok = r.clock()
            self.next_lsn = response.flush_lsn
            if response.ok:
                self.match_lsn = response.flush_lsn
                r.advance_commit()
            if response.remote_consistent_lsn > tl.control.remote_consistent_lsn:
                r.spawn(tl.report_persisted(response.remote_consistent_lsn))

    async def _next_data(self) -> tuple[int, bytes, bool]:
        """What to send next: (start_lsn, frames, starts a segment); empty frames
        are a heartbeat, after waiting up to HEARTBEAT_S for something to send.
        Frames never cross one of the leader's segment starts."""
        r = self.replica
        tl = r.timeline
        if self.next_lsn is None and self.last_ok == 0.0:
            return 0, b"", False  # introduce ourselves at once: learn the follower's end
        if self.next_lsn is not None and self.next_lsn < tl.end_lsn:
            start = self.next_lsn
            recent = r.recent_from(start)
            if recent is not None:
                return start, recent[0], recent[1]
            if start < tl.flush_lsn:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, tl.wal.read_batches, start, tl.flush_lsn, MAX_SEND_BYTES
                )
                if data:
                    return start, data, tl.wal.starts_segment(start)
        self.wake.clear()
        try:
            async with asyncio.timeout(HEARTBEAT_S):  # (no extra task per wait, unlike wait_for)
                await self.wake.wait()
            if self.next_lsn is not None and self.next_lsn < tl.end_lsn:
                return await self._next_data()
        except TimeoutError:
            pass
        return self.next_lsn or 0, b"", False

    async def _exchange(self, request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        """Send one PeerAppend on this replicator's connection (opened on first use)
        and read its answer. Any failure closes the connection (its request/answer
        pairing is lost) and raises PeerUnreachable, or PeerLacksTimeline for a
        follower without the timeline; the next call opens a new connection."""
        peers = self.replica.peers
        try:
            async with asyncio.timeout(PEER_APPEND_TIMEOUT_S):
                if self._connection is None:
                    self._connection = await peers.open_append_connection(self.node_id)
                return await self._connection.exchange(request)
        except Exception as exc:  # (a cancellation passes through; stop() closes the connection)
            self._close_connection()
            if isinstance(exc, PeerStreamRefused):
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    raise PeerLacksTimeline(f"node {self.node_id}: {exc}") from exc
                raise PeerUnreachable(f"node {self.node_id} PeerAppend: {exc}") from exc
            if isinstance(exc, TimeoutError):
                raise PeerUnreachable(f"node {self.node_id} PeerAppend: no answer within {PEER_APPEND_TIMEOUT_S} s") from exc
            if isinstance(exc, PeerUnreachable):
                raise
            if isinstance(exc, asyncio.IncompleteReadError):
                raise PeerUnreachable(f"node {self.node_id} closed the PeerAppend connection") from exc
            # OSError (reset, refused), PeerStreamError (a garbled message), a NOT_FOUND
            # from PeerStreamPort, ...
            raise PeerUnreachable(f"node {self.node_id} PeerAppend: {type(exc).__name__}: {exc}") from exc

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stop(self) -> None:
        self.task.cancel()
        self._close_connection()


class TimelineReplica(TimelineElection):
    """One timeline's replication state on this node (owned by the event loop)."""

    def __init__(
        self,
        timeline: Timeline,
        config: ClusterConfig,
        peers: PeerClients,
        log: EventLogger,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(timeline, config, peers, log, clock, rng)
        self.closed = False
        self.synced_term = 0  # the term whose leader's history this follower adopted
        self.replicators: dict[int, Replicator] = {}
        self.recent: list[_Round] = []
        self.recent_bytes = 0
        self._commit_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        tl = timeline
        # A restarted node serves nothing above what it knew was committed.
        tl.commit_lsn = min(max(tl.control.commit_lsn, tl.wal.segments[0].start_lsn), tl.flush_lsn)
        tl.replica = self

    # -- helpers -------------------------------------------------------------------

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a background step (a control file update); failures are logged."""

        async def guarded() -> None:
            try:
                await coro
            except (StrataError, OSError) as exc:
                self._event(self.log.warning, "replica_task_failed", error=exc)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def check_serving(self) -> None:
        """Raise Unavailable while catching up (Stream: the client goes to another node)."""
        if self.catching_up:
            tl = self.timeline
            raise Unavailable(
                f"tenant={tl.tenant_id} timeline={tl.timeline_id}: node {self.config.node_id} lost WAL and is catching "
                f"up from its peers (at lsn={tl.flush_lsn}, needs lsn>={tl.control.catchup_lsn}); read from another node"
            )

    # -- the leader's side -----------------------------------------------------------

    def _start_leading(self, term: Term) -> None:
        self.recent, self.recent_bytes = [], 0
        self.replicators = {n: Replicator(self, n, term) for n in self.config.others}

    def _stop_leading(self) -> None:
        for rep in self.replicators.values():
            if rep.task is not asyncio.current_task():
                rep.stop()
        self.replicators = {}
        self.recent, self.recent_bytes = [], 0
        self._wake_commit_waiters()

    def _followers_heard(self) -> Iterable[float]:
        return (rep.last_ok for rep in self.replicators.values())

    def round_sequenced(self, start_lsn: int, end_lsn: int, data: bytes, new_segment: bool) -> None:
        """A flush round's bytes: keep them for the replicators and wake them."""
        self.recent.append(_Round(start_lsn, end_lsn, data, new_segment))
        self.recent_bytes += len(data)
        floor = min((rep.next_lsn or 0 for rep in self.replicators.values()), default=end_lsn)
        while self.recent and (self.recent[0].end_lsn <= floor or
                               (self.recent_bytes > MAX_RECENT_BYTES and self.recent[0].end_lsn <= self.timeline.flush_lsn)):
            self.recent_bytes -= len(self.recent.pop(0).data)
        for rep in self.replicators.values():
            rep.wake.set()

    def recent_from(self, start_lsn: int) -> tuple[bytes, bool] | None:
        """Consecutive rounds from `start_lsn`, up to about MAX_SEND_BYTES and never
        across a segment start, and whether they start a segment (None if
        `start_lsn` is not a round start held in memory)."""
        for i, rnd in enumerate(self.recent):
            if rnd.start_lsn == start_lsn:
                parts, size = [], 0
                for nxt in self.recent[i:]:
                    if parts and (size + len(nxt.data) > MAX_SEND_BYTES or nxt.new_segment):
                        break
                    parts.append(nxt.data)
                    size += len(nxt.data)
                return b"".join(parts), rnd.new_segment
        return None

    def advance_commit(self) -> None:
        """commit_lsn = the highest LSN >= epoch_start_lsn flushed by a majority in this term."""
        tl = self.timeline
        if not self.leader_term:
            return
        flushed = sorted([tl.flush_lsn, *(rep.match_lsn for rep in self.replicators.values())], reverse=True)
        candidate = flushed[self.config.majority - 1]
        if candidate >= self.epoch_start_lsn and candidate > tl.commit_lsn:
            tl.commit_lsn = candidate
            tl._wake_streams()
            self._wake_commit_waiters()

    def _wake_commit_waiters(self) -> None:
        self._commit_event.set()
        self._commit_event = asyncio.Event()

    async def wait_committed(self, lsn: int) -> None:
        """Until commit_lsn >= lsn; Unavailable when this node stops leading or no
        majority flushed it within QUORUM_TIMEOUT_S (then it steps down)."""
        tl = self.timeline
        term = self.leader_term
        self.advance_commit()
        deadline = self.clock() + QUORUM_TIMEOUT_S
        while tl.commit_lsn < lsn:
            if self.leader_term != term or not term:
                # Not NotLeader: the batch is written here and its fate is unknown, so
                # the client must not resend it elsewhere as if nothing happened.
                raise Unavailable(
                    f"tenant={tl.tenant_id} timeline={tl.timeline_id}: this node stopped leading term {term} before a "
                    f"majority flushed lsn={lsn}; not acknowledged (the batch may or may not survive)"
                )
            remaining = deadline - self.clock()
            if remaining <= 0:
                async with self.state_lock:
                    await self.step_down(tl.term, "no majority flushed a round in time")
                raise Unavailable(
                    f"tenant={tl.tenant_id} timeline={tl.timeline_id}: no quorum: fewer than {self.config.majority} of "
                    f"{len(self.config.nodes)} nodes flushed lsn={lsn} within {QUORUM_TIMEOUT_S}s; not acknowledged "
                    "(the batch may or may not survive)"
                )
            try:
                async with asyncio.timeout(remaining):
                    await self._commit_event.wait()
            except TimeoutError:
                pass

    def append_request(self, term: int, start_lsn: int, data: bytes, new_segment: bool) -> peer_pb2.PeerAppendRequest:
        tl = self.timeline
        c = tl.control
        return peer_pb2.PeerAppendRequest(
            tenant_id=tl.tenant_id, timeline_id=tl.timeline_id, term=term, leader_id=self.config.node_id,
            term_history=history_to_proto(c.term_history), start_lsn=start_lsn, frames=data,
            commit_lsn=tl.commit_lsn, remote_consistent_lsn=c.remote_consistent_lsn, backup_lsn=c.backup_lsn,
            new_segment=new_segment,
        )

    def create_request(self, term: int) -> peer_pb2.PeerTimeline:
        tl = self.timeline
        c = tl.control
        first = tl.wal.segments[0].start_lsn
        return peer_pb2.PeerTimeline(
            tenant_id=c.tenant_id, timeline_id=c.timeline_id, start_lsn=c.start_lsn, page_size=c.page_size,
            first_lsn=first, term=term, remote_consistent_lsn=c.remote_consistent_lsn, backup_lsn=c.backup_lsn,
            term_history=history_to_proto(history_up_to(c.term_history, first)),
        )

    async def send_create(self, node_id: int) -> None:
        """A follower lacks the timeline (its disk was wiped): create it there."""
        try:
            await self.peers.call(node_id, "PeerCreateTimeline", self.create_request(self.timeline.term), CREATE_TIMEOUT_S)
            self._event(self.log.info, "peer_timeline_created", peer=node_id)
        except (PeerUnreachable, grpc.aio.AioRpcError) as exc:
            self._event(self.log.warning, "peer_timeline_create_failed", peer=node_id, error=exc)

    async def forward_report_persisted(self, request: wal_pb2.PersistedRequest) -> wal_pb2.WalStatus | None:
        """ReportPersisted on a node that does not lead the timeline: sent on to the
        live leader, which checks it against the cluster's commit_lsn and spreads it
        to every node in its PeerAppends (so trimming works whichever node the
        pageserver talks to). None when no leader is known: the caller records it
        here, and this node's PeerAppend answers carry it to the next leader."""
        leader = self.live_leader()
        if not leader or leader == self.config.node_id:
            return None
        try:
            status = await self.peers.report_persisted(leader, request, FORWARD_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"the leader (node {leader}) refused it: {exc.details()}") from exc
            raise Unavailable(
                f"could not forward ReportPersisted to the leader (node {leader}): {exc.code().name} {exc.details()}; retry"
            ) from exc
        except PeerUnreachable as exc:
            raise Unavailable(f"could not forward ReportPersisted to the leader (node {leader}): {exc}; retry") from exc
        self._event(self.log.info, "report_persisted_forwarded", leader=leader, lsn=request.remote_consistent_lsn)
        return status

    # -- the follower's side (the WalPeer PeerAppend handler) ---------------------------

    async def on_peer_append(self, req: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        tl = self.timeline
        async with self.state_lock:
            if req.term < tl.term:
                return self._append_response(False, f"term {req.term} is below this node's term {tl.term}")
            if self.leader_term and req.term == self.leader_term:
                raise CorruptionError(f"two leaders in term {req.term}: node {req.leader_id} and this node")
            if req.term > tl.term or self.leader_term:
                await self.step_down(req.term, f"node {req.leader_id} leads term {req.term}")
            if tl.control.voted_for == NO_VOTE:
                await tl.set_control(voted_for=req.leader_id)  # never vote for another leader of this term
            self.leader_id, self.leader_heard = req.leader_id, self.clock()
            if self.synced_term != req.term:
                await self._sync_with_leader(req)
            ok, why = True, ""
            if req.frames:
                if req.start_lsn != tl.end_lsn:
                    ok, why = False, f"frames start at lsn={req.start_lsn}, this node's WAL ends at lsn={tl.end_lsn}"
                else:
                    end = check_frames(req.frames, req.start_lsn)
                    await tl.write_replicated(req.start_lsn, req.frames, end, req.new_segment)
            commit = min(req.commit_lsn, tl.flush_lsn)
            if commit > tl.commit_lsn:
                tl.commit_lsn = commit
                tl._wake_streams()
            catchup = tl.control.catchup_lsn
            if catchup is not None and self._caught_up(req, catchup):
                await tl.set_control(catchup_lsn=None, commit_lsn=max(tl.control.commit_lsn, tl.commit_lsn))
                self._event(self.log.info, "caught_up", leader=req.leader_id, lsn=tl.flush_lsn)
            if req.remote_consistent_lsn > tl.control.remote_consistent_lsn:
                self.spawn(tl.report_persisted(min(req.remote_consistent_lsn, tl.commit_lsn)))
            # Only the leader offloads (walservice/offload.py, "Replication"): followers
            # learn backup_lsn from it, and trim below it.
            if min(req.backup_lsn, tl.commit_lsn) > tl.control.backup_lsn:
                self.spawn(tl.record_backup(min(req.backup_lsn, tl.commit_lsn)))
            return self._append_response(ok, why)

    def _caught_up(self, req: peer_pb2.PeerAppendRequest, catchup_lsn: int) -> bool:
        """A catching-up node is done when a heartbeat (no frames) starts at its end:
        a Replicator sends one only once the follower holds the leader's whole
        flushed log, which contains everything committed (invariant 3). A leader's
        commit_lsn alone is not enough (a new leader's may lag what was committed).
        The first message of a Replicator (start_lsn 0, the follower's end not yet
        known) counts only when nothing is committed at all."""
        tl = self.timeline
        if req.frames or req.start_lsn != tl.flush_lsn or tl.flush_lsn < max(catchup_lsn, req.commit_lsn):
            return False
        return req.start_lsn > 0 or req.commit_lsn == 0

    async def _sync_with_leader(self, req: peer_pb2.PeerAppendRequest) -> None:
        """Adopt the leader's term: cut a divergent suffix, then take its history."""
        tl = self.timeline
        theirs = history_from_proto(req.term_history)
        # The leader's log end is unbounded here: records of its own (last) term on
        # this node came from it, so they are a prefix of its log.
        # Under wal_lock: a round this node wrote as a (now deposed) leader may still be
        # in flight; the divergence point must count its bytes, so wait for it.
        async with tl.wal_lock:
            point = divergence_lsn(tl.control.term_history, tl.flush_lsn, theirs, 1 << 64)
            if point < tl.flush_lsn:
                if point < tl.commit_lsn:
                    raise CorruptionError(
                        f"term {req.term}'s leader diverges at lsn={point}, below this node's commit_lsn={tl.commit_lsn}"
                    )
                self._event(self.log.warning, "wal_divergent_suffix_cut", lsn=point, cut_from=tl.flush_lsn)
                await tl.truncate_wal_locked(point)
        # The whole history, (T, epoch_start) included: last_log_term counts an entry
        # only once flush_lsn reaches its start.
        await tl.set_control(term_history=theirs, term=req.term, commit_lsn=max(tl.control.commit_lsn, tl.commit_lsn))
        self.synced_term = req.term
        self._event(self.log.info, "follower_synced", leader=req.leader_id, lsn=tl.flush_lsn)

    def _append_response(self, ok: bool, why: str) -> peer_pb2.PeerAppendResponse:
        tl = self.timeline
        return peer_pb2.PeerAppendResponse(
            # flush_lsn, never end_lsn: the leader counts this answer towards a majority,
            # so it must be what is fsync'd here (a deposed leader's round may be
            # sequenced and not yet durable).
            term=tl.term, ok=ok, flush_lsn=tl.flush_lsn, remote_consistent_lsn=tl.control.remote_consistent_lsn, reason=why
        )

    async def close(self) -> None:
        self.closed = True
        for rep in self.replicators.values():
            rep.stop()
        self.leader_term = 0
        self._wake_commit_waiters()  # a round waiting for a majority fails now, not after QUORUM_TIMEOUT_S
        for task in list(self._tasks):
            task.cancel()
        tl = self.timeline
        if tl.broken is None and tl.commit_lsn > tl.control.commit_lsn:
            try:
                await tl.set_control(commit_lsn=tl.commit_lsn)
            except OSError:
                pass


class Cluster:
    """This node's part of a cluster: attaches a TimelineReplica to every timeline
    and replicates timeline creation (owned by the event loop)."""

    def __init__(
        self,
        config: ClusterConfig,
        log: EventLogger,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        transport: PeerTransport | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.peers = PeerClients(config, transport if transport is not None else GrpcPeerTransport(config))
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        # Every attached timeline's replica (closed ones are dropped by the watch),
        # the background election running for each, and when a lost one may retry.
        self.replicas: set[TimelineReplica] = set()
        self._campaigns: dict[TimelineReplica, asyncio.Task[bool]] = {}
        self._retry_at: dict[TimelineReplica, float] = {}
        self._watch: asyncio.Task[None] | None = None

    def attach(self, timeline: Timeline) -> TimelineReplica:
        replica = timeline.replica or TimelineReplica(timeline, self.config, self.peers, self.log, self.clock, self.rng)
        self.replicas.add(replica)
        return replica

    # -- elections without writes (section "Elections without writes" of 0005) --------

    def start_election_watch(self) -> None:
        """Start the background watch that gets a leader elected for every timeline
        that wants one (TimelineElection.wants_leader) with no client write."""
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_elections())

    async def stop_election_watch(self) -> None:
        tasks = [t for t in (self._watch, *self._campaigns.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watch = None
        self._campaigns.clear()

    async def _watch_elections(self) -> None:
        while True:
            await asyncio.sleep(ELECTION_WATCH_S)
            now = self.clock()
            wanting = []
            for replica in list(self.replicas):
                if replica.closed:
                    self.replicas.discard(replica)
                    self._retry_at.pop(replica, None)
                elif replica not in self._campaigns and now >= self._retry_at.get(replica, 0.0) and replica.wants_leader():
                    wanting.append(replica)
            # A node that cannot reach a majority would only raise terms (and write
            # control files) in vain: one cheap probe of the peers per round decides.
            if wanting and await self._majority_reachable():
                for replica in wanting:
                    self._campaigns[replica] = task = asyncio.create_task(replica.campaign())
                    task.add_done_callback(lambda t, r=replica: self._campaign_done(r, t))

    def _campaign_done(self, replica: TimelineReplica, task: asyncio.Task[bool]) -> None:
        self._campaigns.pop(replica, None)
        won = not task.cancelled() and task.exception() is None and task.result()
        if won:
            self._retry_at.pop(replica, None)
        else:  # lost or deferred: another node may be winning; look again after a lease or two
            self._retry_at[replica] = self.clock() + LEADER_LEASE_S * (1 + self.rng.random())

    async def _majority_reachable(self) -> bool:
        answers = await self.peers.ask_all("PeerStreamPort", peer_pb2.PeerStreamPortRequest(), VOTE_TIMEOUT_S)
        return 1 + len(answers) >= self.config.majority

    async def create_timeline(self, timelines: TimelineSet, tenant_id: str, timeline_id: str, start_lsn: int, page_size: int) -> Timeline:
        """CreateTimeline on a cluster: on every peer and here; answered once a
        majority holds it. A node that lacks a timeline its peers have (a wiped
        disk) takes their highest term and abstains in it."""
        request = peer_pb2.PeerTimeline(tenant_id=tenant_id, timeline_id=timeline_id, start_lsn=start_lsn, page_size=page_size)
        answers = await self.peers.ask_all("PeerCreateTimeline", request, CREATE_TIMEOUT_S)
        held = 1 + len(answers)
        existing_term = max((a.term for _, a in answers if a.existed), default=0)
        tl = await timelines.create(tenant_id, timeline_id, start_lsn, page_size, abstain_term=existing_term)
        if held < self.config.majority:
            raise Unavailable(
                f"tenant_id={tenant_id} timeline_id={timeline_id}: no quorum: only {held} of {len(self.config.nodes)} "
                f"nodes hold the timeline (need {self.config.majority}); retry, CreateTimeline is idempotent"
            )
        return tl

    async def delete_timeline(self, timelines: TimelineSet, tenant_id: str, timeline_id: str) -> tuple[bool, int]:
        """DeleteTimeline on a cluster: here first (so this node's replicators
        stop and cannot re-create it on a peer), then on every peer; answered
        once a majority no longer holds it. Returns (existed here or on a peer,
        nodes that deleted it). A node that was unreachable keeps the timeline
        until DeleteTimeline is retried (it is idempotent)."""
        existed = await timelines.delete(tenant_id, timeline_id)
        request = peer_pb2.PeerDeleteTimelineRequest(tenant_id=tenant_id, timeline_id=timeline_id)
        answers = await self.peers.ask_all("PeerDeleteTimeline", request, CREATE_TIMEOUT_S)
        deleted = 1 + len(answers)
        existed = existed or any(a.existed for _, a in answers)
        if deleted < self.config.majority:
            raise Unavailable(
                f"tenant_id={tenant_id} timeline_id={timeline_id}: deleted on only {deleted} of "
                f"{len(self.config.nodes)} nodes (need {self.config.majority}); retry, DeleteTimeline is idempotent"
            )
        if deleted < len(self.config.nodes):
            self.log.warning(
                "timeline_delete_partial", tenant=tenant_id, timeline=timeline_id, nodes_deleted=deleted,
                nodes=len(self.config.nodes), action="retry DeleteTimeline to delete it on the unreachable nodes",
            )
        return existed, deleted

    async def on_peer_delete(
        self, timelines: TimelineSet, req: peer_pb2.PeerDeleteTimelineRequest
    ) -> peer_pb2.PeerDeleteTimelineResponse:
        return peer_pb2.PeerDeleteTimelineResponse(existed=await timelines.delete(req.tenant_id, req.timeline_id))

    async def on_peer_create(self, timelines: TimelineSet, req: peer_pb2.PeerTimeline) -> peer_pb2.PeerTimelineResponse:
        existed = timelines.holds(req.tenant_id, req.timeline_id)
        tl = await timelines.create(
            req.tenant_id, req.timeline_id, req.start_lsn, req.page_size,
            abstain_term=req.term, first_lsn=req.first_lsn or req.start_lsn,
            term_history=history_from_proto(req.term_history),
            remote_consistent_lsn=req.remote_consistent_lsn, backup_lsn=req.backup_lsn,
        )
        return peer_pb2.PeerTimelineResponse(existed=existed, term=tl.term, flush_lsn=tl.flush_lsn)

    async def close(self) -> None:
        await self.stop_election_watch()
        await self.peers.close()
