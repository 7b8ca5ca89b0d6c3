"""Replication: per-timeline leaders elected by a majority, majority-acknowledged
appends, follower sync and catch-up. The protocol, its invariants and its timeouts
are docs/design/0005-replication.md; the names here match it.

- `ClusterConfig`: `--node-id N --peers A,B,C` (node N is the Nth address).
- `PeerClients`: the gRPC stubs to the other nodes, with the test-only fault layer
  (`STRATA_PEER_FAULTS`).
- `TimelineReplica`: one timeline's role on this node (leader / follower), its
  elections, the handlers of the WalPeer RPCs (`on_vote_request`, `on_peer_append`)
  and, while leading, one `Replicator` task per peer.

Concurrency: everything here is owned by the process's one event loop. Per
timeline, `state_lock` serializes the handlers that change the term state or the
WAL on behalf of a peer (votes, PeerAppend), `election_lock` lets one election run
at a time, control file writes go through `Timeline.set_control` (its
`_control_lock`) and WAL writes hold `Timeline.wal_lock`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from strata.errors import CorruptionError, InvalidArgument, StrataError, Unavailable
from strata.grpc_channels import channel_options
from strata.logs import EventLogger
from strata.v1 import peer_pb2, peer_pb2_grpc, wal_pb2, wal_pb2_grpc
from walservice.control_file import ABSTAIN, NO_VOTE
from walservice.peer_stream import VERSION as PEER_STREAM_VERSION
from walservice.peer_stream import PeerAppendConnection, PeerStreamRefused
from walservice.segment import iter_frames
from walservice.sequencer import Timeline

if TYPE_CHECKING:
    from walservice.timelines import TimelineSet


HEARTBEAT_S = 0.25
LEADER_LEASE_S = 1.0
VOTE_TIMEOUT_S = 0.5
QUORUM_TIMEOUT_S = 2.0
PEER_APPEND_TIMEOUT_S = 2.0
CREATE_TIMEOUT_S = 2.0
# A follower's ReportPersisted sent on to the leader.
FORWARD_TIMEOUT_S = 5.0
# How long one Append keeps running for leader (lost or split votes) before UNAVAILABLE.
ELECTION_PATIENCE_S = 1.5
# A replicator sends at most about this much per PeerAppend.
MAX_SEND_BYTES = 4 * 1024 * 1024
# Rounds kept in memory for the replicators (older ones are read back from disk).
MAX_RECENT_BYTES = 32 * 1024 * 1024
LEADER_METADATA_KEY = "strata-leader"
FAULTS_ENV = "STRATA_PEER_FAULTS"

TermHistory = list[tuple[int, int]]


class NotLeader(Unavailable):
    """This node does not lead the timeline: UNAVAILABLE, with the leader's address
    (when known) in the trailing metadata `strata-leader`."""

    def __init__(self, message: str, leader_address: str | None) -> None:
        super().__init__(message)
        self.leader_address = leader_address

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((LEADER_METADATA_KEY, self.leader_address or ""),)


class PeerUnreachable(Exception):
    """A peer RPC failed (the peer is down, slow, or the fault layer dropped it)."""


class PeerLacksTimeline(Exception):
    """A follower answered a PeerAppend with NOT_FOUND: it lacks the timeline (a wiped disk)."""


@dataclass(frozen=True)
class ClusterConfig:
    node_id: int
    nodes: list[str]  # every node's address, in node-id order (node id = index + 1)

    @classmethod
    def parse(cls, node_id: int, peers: str) -> ClusterConfig | None:
        """None for a single node (no --peers)."""
        nodes = [a.strip() for a in peers.split(",") if a.strip()]
        if not nodes:
            return None
        if not 1 <= node_id <= len(nodes):
            raise ValueError(f"--node-id={node_id} must be between 1 and the number of --peers ({len(nodes)})")
        return cls(node_id, nodes)

    @property
    def majority(self) -> int:
        return len(self.nodes) // 2 + 1

    @property
    def others(self) -> list[int]:
        return [i for i in range(1, len(self.nodes) + 1) if i != self.node_id]

    def address(self, node_id: int) -> str:
        return self.nodes[node_id - 1]


@dataclass
class PeerFaults:
    """Test-only: drop or delay outgoing peer RPCs (`STRATA_PEER_FAULTS=drop=P,delay_ms=D,seed=S`)."""

    drop: float = 0.0
    delay_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_env(cls) -> PeerFaults | None:
        spec = os.environ.get(FAULTS_ENV, "")
        if not spec:
            return None
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
        return cls(float(fields.get("drop", 0)), float(fields.get("delay_ms", 0)), random.Random(int(fields.get("seed", 0))))


class PeerClients:
    """Stubs to the other nodes, created on the loop."""

    def __init__(self, config: ClusterConfig, log: EventLogger) -> None:
        self.config = config
        self.log = log
        self.faults = PeerFaults.from_env()
        if self.faults is not None:
            log.warning("peer_faults_enabled", drop=self.faults.drop, delay_ms=self.faults.delay_ms)
        self._stubs: dict[int, peer_pb2_grpc.WalPeerStub] = {}
        self._wal_stubs: dict[int, wal_pb2_grpc.WalServiceStub] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}

    def stub(self, node_id: int) -> peer_pb2_grpc.WalPeerStub:
        stub = self._stubs.get(node_id)
        if stub is None:
            stub = self._stubs[node_id] = peer_pb2_grpc.WalPeerStub(self._channel(node_id))
        return stub

    def wal_stub(self, node_id: int) -> wal_pb2_grpc.WalServiceStub:
        """The client-facing service of another node (ReportPersisted forwarded to the leader)."""
        stub = self._wal_stubs.get(node_id)
        if stub is None:
            stub = self._wal_stubs[node_id] = wal_pb2_grpc.WalServiceStub(self._channel(node_id))
        return stub

    def _channel(self, node_id: int) -> grpc.aio.Channel:
        channel = self._channels.get(node_id)
        if channel is None:
            channel = self._channels[node_id] = grpc.aio.insecure_channel(
                self.config.address(node_id),
                options=channel_options(),
            )
        return channel

    async def inject_faults(self, node_id: int) -> None:
        """The test fault layer (STRATA_PEER_FAULTS): maybe drop (PeerUnreachable), maybe delay."""
        if self.faults is not None:
            if self.faults.rng.random() < self.faults.drop:
                raise PeerUnreachable(f"node {node_id}: dropped by the fault layer")
            if self.faults.delay_ms:
                await asyncio.sleep(self.faults.rng.random() * self.faults.delay_ms / 1000)

    async def open_append_connection(self, node_id: int) -> PeerAppendConnection:
        """A new PeerAppend connection to a node: its port is asked over gRPC
        (PeerStreamPort) each time, since a restarted node may listen elsewhere."""
        answer = await self.call(node_id, "PeerStreamPort", peer_pb2.PeerStreamPortRequest(), PEER_APPEND_TIMEOUT_S)
        if answer.version != PEER_STREAM_VERSION:
            raise PeerUnreachable(
                f"node {node_id} speaks PeerAppend connection version {answer.version}, this node {PEER_STREAM_VERSION}"
            )
        host = self.config.address(node_id).rsplit(":", 1)[0].strip("[]")
        try:
            async with asyncio.timeout(PEER_APPEND_TIMEOUT_S):
                return await PeerAppendConnection.open(host, answer.port)
        except (OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"node {node_id}: cannot connect to its PeerAppend port {host}:{answer.port}: {exc}") from exc

    async def call(self, node_id: int, method: str, request: object, timeout: float) -> Any:
        """One unary peer RPC; PeerUnreachable on any transport failure (or injected fault)."""
        await self.inject_faults(node_id)
        try:
            return await getattr(self.stub(node_id), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise
            raise PeerUnreachable(f"node {node_id} {method}: {exc.code().name} {exc.details()}") from exc

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def history_to_proto(history: TermHistory) -> list[peer_pb2.TermEntry]:
    return [peer_pb2.TermEntry(term=t, start_lsn=lsn) for t, lsn in history]


def history_from_proto(entries: object) -> TermHistory:
    return [(e.term, e.start_lsn) for e in entries]  # type: ignore[attr-defined]


def history_up_to(history: TermHistory, lsn: int) -> TermHistory:
    """The entries that start at or below `lsn` (what a log ending at `lsn` holds)."""
    return [(t, start) for t, start in history if start <= lsn]


def divergence_lsn(mine: TermHistory, my_end: int, theirs: TermHistory, their_end: int) -> int:
    """The highest LSN up to which two logs agree, from their term histories: the
    last common entry's term ends (next entry's start, or the log's end) at
    possibly different points in each; the smaller one."""
    a, b = history_up_to(mine, my_end), history_up_to(theirs, their_end)
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    if i == 0:
        return min(a[0][1] if a else my_end, b[0][1] if b else their_end)
    end_a = a[i][1] if i < len(a) else my_end
    end_b = b[i][1] if i < len(b) else their_end
    return min(end_a, end_b)


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
                await asyncio.sleep(backoff * (0.5 + random.random()))
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
            self.last_ok = time.monotonic()
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
            await peers.inject_faults(self.node_id)
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


class TimelineReplica:
    """One timeline's replication state on this node (owned by the event loop)."""

    def __init__(self, timeline: Timeline, config: ClusterConfig, peers: PeerClients, log: EventLogger) -> None:
        self.timeline = timeline
        self.config = config
        self.peers = peers
        self.log = log
        self.leader_term = 0  # the term this node leads, 0 when it does not
        self.epoch_start_lsn = 0
        self.leader_id = 0  # the leader of `timeline.term` as last heard (0: unknown)
        self.leader_heard = 0.0  # monotonic time of the leader's last PeerAppend
        self.synced_term = 0  # the term whose leader's history this follower adopted
        self.better_candidate = 0  # a voter whose log is ahead of ours (last election)
        self.replicators: dict[int, Replicator] = {}
        self.recent: list[_Round] = []
        self.recent_bytes = 0
        self._commit_event = asyncio.Event()
        self.state_lock = asyncio.Lock()
        self.election_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
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

    def _event(self, emit: Callable[..., None], event: str, **fields: object) -> None:
        tl = self.timeline
        emit(event, tenant=tl.tenant_id, timeline=tl.timeline_id, term=tl.term, node=self.config.node_id, **fields)

    def last_log_term(self) -> int:
        return self.timeline.control.last_log_term(self.timeline.flush_lsn)

    @property
    def catching_up(self) -> bool:
        """This node lost WAL (control file `catchup_lsn`): no votes, no leading, no
        serving until a leader brought it up to what the cluster committed."""
        return self.timeline.control.catchup_lsn is not None

    def check_serving(self) -> None:
        """Raise Unavailable while catching up (Stream: the client goes to another node)."""
        if self.catching_up:
            tl = self.timeline
            raise Unavailable(
                f"tenant={tl.tenant_id} timeline={tl.timeline_id}: node {self.config.node_id} lost WAL and is catching "
                f"up from its peers (at lsn={tl.flush_lsn}, needs lsn>={tl.control.catchup_lsn}); read from another node"
            )

    def live_leader(self) -> int:
        """The leader of the current term if heard from within LEADER_LEASE_S, else 0."""
        if self.leader_term:
            return self.config.node_id
        if self.leader_id and time.monotonic() - self.leader_heard < LEADER_LEASE_S:
            return self.leader_id
        return 0

    def leading_with_quorum(self) -> bool:
        now = time.monotonic()
        live = 1 + sum(1 for rep in self.replicators.values() if now - rep.last_ok < LEADER_LEASE_S)
        return bool(self.leader_term) and live >= self.config.majority

    def not_leader(self, why: str) -> NotLeader:
        tl = self.timeline
        leader = self.live_leader()
        address = self.config.address(leader) if leader and leader != self.config.node_id else None
        where = f"the leader is node {leader} at {address}" if address else "no leader is known"
        return NotLeader(f"tenant={tl.tenant_id} timeline={tl.timeline_id}: this node does not lead term {tl.term} ({why}); {where}", address)

    # -- the leader's side -----------------------------------------------------------

    def leader_term_or_raise(self) -> int:
        if not self.leader_term or self.leader_term != self.timeline.term:
            raise self.not_leader("it stepped down")
        return self.leader_term

    async def ensure_leader(self) -> None:
        """Return when this node leads the timeline; else redirect (NotLeader with
        the live leader) or run for leader until a vote round is lost."""
        if self.leader_term:
            return
        if self.catching_up:
            raise self.not_leader("it lost WAL and is catching up from its peers, so it cannot lead")
        # A node that just started first listens for a leader for one lease, so that
        # it does not bump the term under a healthy leader.
        while not self.live_leader() and (wait := self.started + LEADER_LEASE_S - time.monotonic()) > 0:
            await asyncio.sleep(min(wait, HEARTBEAT_S / 2))
        if self.live_leader():
            raise self.not_leader("a live leader exists")
        async with self.election_lock:
            give_up = time.monotonic() + ELECTION_PATIENCE_S
            while time.monotonic() < give_up:
                if self.leader_term:
                    return
                if self.live_leader():
                    raise self.not_leader("a live leader exists")
                # Shielded: a client giving up must not stop a won election halfway.
                if await asyncio.shield(self.elect()):
                    return
                if self.better_candidate:
                    address = self.config.address(self.better_candidate)
                    tl = self.timeline
                    raise NotLeader(
                        f"tenant={tl.tenant_id} timeline={tl.timeline_id}: node {self.config.node_id} cannot lead: node "
                        f"{self.better_candidate} at {address} has a more advanced log and can win the election",
                        address,
                    )
                # Lower node ids retry first: the tie-break between simultaneous candidates.
                await asyncio.sleep((0.05 + 0.25 * random.random()) * self.config.node_id / len(self.config.nodes))
        if self.live_leader():
            raise self.not_leader("another node won the election")
        tl = self.timeline
        raise Unavailable(
            f"tenant={tl.tenant_id} timeline={tl.timeline_id}: no quorum: node {self.config.node_id} could not win "
            f"a majority of {len(self.config.nodes)} nodes' votes (are {self.config.majority} nodes up?)"
        )

    async def elect(self) -> bool:
        """Run for term + 1 (section Election of the design note)."""
        tl = self.timeline
        async with self.state_lock:
            term = tl.term + 1
            await tl.set_control(term=term, voted_for=self.config.node_id)
            self.leader_id = 0
            llt, flush = self.last_log_term(), tl.flush_lsn
        self._event(self.log.info, "election_started", lsn=flush, last_log_term=llt)
        request = peer_pb2.VoteRequest(
            tenant_id=tl.tenant_id, timeline_id=tl.timeline_id, term=term, candidate_id=self.config.node_id,
            last_log_term=llt, flush_lsn=flush,
        )

        async def ask(node: int) -> peer_pb2.VoteResponse | None:
            try:
                return await self.peers.call(node, "RequestVote", request, VOTE_TIMEOUT_S)
            except (PeerUnreachable, grpc.aio.AioRpcError):
                return None

        answers = await asyncio.gather(*(ask(n) for n in self.config.others))
        votes = 1 + sum(1 for a in answers if a is not None and a.granted)
        # A voter whose log is ahead of ours is the one that can win: say so to clients.
        ahead = [(a.last_log_term, a.flush_lsn, n) for n, a in zip(self.config.others, answers)
                 if a is not None and not a.granted and (a.last_log_term, a.flush_lsn) > (llt, flush)]
        self.better_candidate = max(ahead)[2] if ahead else 0
        highest = max((a.term for a in answers if a is not None), default=0)
        async with self.state_lock:
            if highest > tl.term:
                await self.step_down(highest, "a voter is at a higher term")
                return False
            if tl.term != term or tl.control.voted_for != self.config.node_id or votes < self.config.majority:
                self._event(self.log.info, "election_lost", votes=votes, lsn=flush)
                return False
            await self._become_leader(term)
            return True

    async def _become_leader(self, term: int) -> None:
        tl = self.timeline
        flush = tl.flush_lsn
        history = history_up_to(tl.control.term_history, flush) + [(term, flush)]
        await tl.set_control(term_history=history)
        self.leader_term, self.leader_id, self.epoch_start_lsn = term, self.config.node_id, flush
        self.recent, self.recent_bytes = [], 0
        self.replicators = {n: Replicator(self, n, term) for n in self.config.others}
        self._event(self.log.info, "leader_elected", lsn=flush, epoch_start_lsn=flush)

    async def step_down(self, term: int, why: str) -> None:
        """Adopt a higher term (persisted) and stop leading. Caller holds state_lock or
        is a Replicator (which must not take it: the handlers may be waiting on it)."""
        tl = self.timeline
        if term > tl.term:
            await tl.set_control(term=term, voted_for=NO_VOTE)
        if self.leader_term:
            self._event(self.log.info, "leader_stepped_down", lsn=tl.commit_lsn, reason=why)
            self.leader_term = 0
            for rep in self.replicators.values():
                if rep.task is not asyncio.current_task():
                    rep.stop()
            self.replicators = {}
            self.recent, self.recent_bytes = [], 0
            self._wake_commit_waiters()

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
        deadline = time.monotonic() + QUORUM_TIMEOUT_S
        while tl.commit_lsn < lsn:
            if self.leader_term != term or not term:
                # Not NotLeader: the batch is written here and its fate is unknown, so
                # the client must not resend it elsewhere as if nothing happened.
                raise Unavailable(
                    f"tenant={tl.tenant_id} timeline={tl.timeline_id}: this node stopped leading term {term} before a "
                    f"majority flushed lsn={lsn}; not acknowledged (the batch may or may not survive)"
                )
            remaining = deadline - time.monotonic()
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
            status = await self.peers.wal_stub(leader).ReportPersisted(request, timeout=FORWARD_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"the leader (node {leader}) refused it: {exc.details()}") from exc
            raise Unavailable(
                f"could not forward ReportPersisted to the leader (node {leader}): {exc.code().name} {exc.details()}; retry"
            ) from exc
        self._event(self.log.info, "report_persisted_forwarded", leader=leader, lsn=request.remote_consistent_lsn)
        return status

    # -- the follower's side (WalPeer handlers) ------------------------------------------

    async def on_vote_request(self, req: peer_pb2.VoteRequest) -> peer_pb2.VoteResponse:
        tl = self.timeline
        async with self.state_lock:
            c = tl.control
            mine = (self.last_log_term(), tl.flush_lsn)
            reason = ""
            if self.catching_up:
                # Its log lacks records its peers committed: a vote judged on it
                # could elect a leader without them (section Catch-up of 0005).
                reason = f"this node lost WAL and is catching up (at lsn={tl.flush_lsn}, needs lsn>={c.catchup_lsn})"
                self._event(self.log.info, "vote", candidate=req.candidate_id, vote_term=req.term, granted=False, reason=reason)
                return peer_pb2.VoteResponse(
                    term=c.term, granted=False, flush_lsn=tl.flush_lsn, last_log_term=mine[0], reason=reason, catching_up=True
                )
            if req.term < c.term:
                reason = f"term {req.term} is below this node's term {c.term}"
            elif self.leader_term and self.leading_with_quorum():
                reason = "this node leads with a live quorum"
            elif self.leader_id and self.leader_id != req.candidate_id and time.monotonic() - self.leader_heard < LEADER_LEASE_S:
                reason = f"node {self.leader_id} leads and was heard from within {LEADER_LEASE_S}s"
            if reason:
                return peer_pb2.VoteResponse(term=c.term, granted=False, flush_lsn=tl.flush_lsn, last_log_term=mine[0], reason=reason)
            voted = c.voted_for if req.term == c.term else NO_VOTE
            if req.term > c.term:
                await self.step_down(req.term, f"node {req.candidate_id} runs for term {req.term}")
            if voted not in (NO_VOTE, req.candidate_id):
                reason = "already voted in this term" if voted != ABSTAIN else "abstains in this term (its disk was wiped)"
            elif (req.last_log_term, req.flush_lsn) < mine:
                reason = f"the candidate's log (term {req.last_log_term}, lsn {req.flush_lsn}) is behind this node's {mine}"
            granted = not reason
            if granted:
                await tl.set_control(voted_for=req.candidate_id)
                self.leader_id, self.leader_heard = 0, time.monotonic()
            self._event(self.log.info, "vote", candidate=req.candidate_id, vote_term=req.term, granted=granted, reason=reason or None)
            return peer_pb2.VoteResponse(term=tl.term, granted=granted, flush_lsn=tl.flush_lsn, last_log_term=mine[0], reason=reason)

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
            self.leader_id, self.leader_heard = req.leader_id, time.monotonic()
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

    def __init__(self, config: ClusterConfig, log: EventLogger) -> None:
        self.config = config
        self.log = log
        self.peers = PeerClients(config, log)

    def attach(self, timeline: Timeline) -> TimelineReplica:
        return timeline.replica or TimelineReplica(timeline, self.config, self.peers, self.log)

    async def create_timeline(self, timelines: TimelineSet, tenant_id: str, timeline_id: str, start_lsn: int, page_size: int) -> Timeline:
        """CreateTimeline on a cluster: on every peer and here; answered once a
        majority holds it. A node that lacks a timeline its peers have (a wiped
        disk) takes their highest term and abstains in it."""
        request = peer_pb2.PeerTimeline(tenant_id=tenant_id, timeline_id=timeline_id, start_lsn=start_lsn, page_size=page_size)

        async def ask(node: int) -> peer_pb2.PeerTimelineResponse | None:
            try:
                return await self.peers.call(node, "PeerCreateTimeline", request, CREATE_TIMEOUT_S)
            except PeerUnreachable:
                return None

        answers = await asyncio.gather(*(ask(n) for n in self.config.others))
        held = 1 + sum(1 for a in answers if a is not None)
        existing_term = max((a.term for a in answers if a is not None and a.existed), default=0)
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

        async def ask(node: int) -> peer_pb2.PeerDeleteTimelineResponse | None:
            try:
                return await self.peers.call(node, "PeerDeleteTimeline", request, CREATE_TIMEOUT_S)
            except PeerUnreachable:
                return None

        answers = await asyncio.gather(*(ask(n) for n in self.config.others))
        deleted = 1 + sum(1 for a in answers if a is not None)
        existed = existed or any(a is not None and a.existed for a in answers)
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
            term_history=history_from_proto(req.term_history) or None,
            remote_consistent_lsn=req.remote_consistent_lsn, backup_lsn=req.backup_lsn,
        )
        return peer_pb2.PeerTimelineResponse(existed=existed, term=tl.term, flush_lsn=tl.flush_lsn)

    async def close(self) -> None:
        await self.peers.close()
