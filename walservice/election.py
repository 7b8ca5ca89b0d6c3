"""Election and terms: one timeline's leader, elected by a majority of votes for a
term (section Election of docs/design/0005-replication.md; the names here match it).

- The term history itself (which term wrote which part of the log, where two logs
  stop agreeing) is walservice/term_history.py.
- `TimelineElection`: one timeline's term state on this node (the leader it knows,
  the term it leads), running for leader (`ensure_leader`, `elect`), stepping down
  (`step_down`) and the RequestVote handler (`on_vote_request`). Its subclass
  `walservice.replication.TimelineReplica` starts and stops the Replicators when
  this node starts or stops leading.

Concurrency: owned by the process's one event loop. Per timeline, `state_lock`
serializes the handlers that change the term state or the WAL on behalf of a peer
(votes, PeerAppend), `election_lock` lets one election run at a time, and control
file writes go through `Timeline.set_control` (its `_control_lock`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable

from strata.errors import StrataError, Unavailable
from strata.ids import Term
from strata.logs import EventLogger
from strata.v1 import peer_pb2
from walservice.control_file import ABSTAIN, NO_VOTE
from walservice.peers import ClusterConfig, PeerClients
from walservice.sequencer import Timeline
from walservice.term_history import TermStart, history_up_to

HEARTBEAT_S = 0.25
LEADER_LEASE_S = 1.0
VOTE_TIMEOUT_S = 0.5
# How long one Append keeps running for leader (lost or split votes) before UNAVAILABLE.
ELECTION_PATIENCE_S = 1.5
LEADER_METADATA_KEY = "strata-leader"
# A node whose last write ran out of space runs for leader again only once this
# much is free (a vote, a term and a round must fit).
LEAD_MIN_FREE_BYTES = 64 * 1024

class NotLeader(Unavailable):
    """This node does not lead the timeline: UNAVAILABLE, with the leader's address
    (when known) in the trailing metadata `strata-leader`."""

    def __init__(self, message: str, leader_address: str | None) -> None:
        super().__init__(message)
        self.leader_address = leader_address

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((LEADER_METADATA_KEY, self.leader_address or ""),)


class TimelineElection:
    """One timeline's term state on this node (owned by the event loop). A
    subclass starts and stops the replicators (`_start_leading`, `_stop_leading`)
    and says when each follower last answered (`_followers_heard`)."""

    def __init__(
        self,
        timeline: Timeline,
        config: ClusterConfig,
        peers: PeerClients,
        log: EventLogger,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.timeline = timeline
        # The seam for simulations: every timeout here reads `clock` (monotonic
        # seconds) and every random choice comes from `rng`.
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.config = config
        self.peers = peers
        self.log = log
        self.leader_term = 0  # the term this node leads, 0 when it does not
        self.epoch_start_lsn = 0
        self.leader_id = 0  # the leader of `timeline.term` as last heard (0: unknown)
        self.leader_heard = 0.0  # monotonic time of the leader's last PeerAppend
        self.better_candidate = 0  # a voter whose log is ahead of ours (last election)
        self.state_lock = asyncio.Lock()
        self.election_lock = asyncio.Lock()
        self.started = clock()
        # When a peer last ran for leader here while this node knew no live leader: a
        # node that wants a leader (and may be unable to win) makes every node want one.
        self.peer_wanted_leader = float("-inf")
        # Until when this node stays out of elections after resigning (`resign`).
        self.resigned_until = float("-inf")

    def _start_leading(self, term: Term) -> None:
        """This node now leads `term` (leader_term and epoch_start_lsn are set)."""
        raise NotImplementedError

    def _stop_leading(self) -> None:
        """This node no longer leads (leader_term is 0 again)."""
        raise NotImplementedError

    def _followers_heard(self) -> Iterable[float]:
        """While leading: the monotonic time of each follower's last answer."""
        raise NotImplementedError

    def _event(self, emit: Callable[..., None], event: str, **fields: object) -> None:
        tl = self.timeline
        emit(event, tenant=tl.tenant_id, timeline=tl.timeline_id, term=tl.term, node=self.config.node_id, **fields)

    def last_log_term(self) -> Term:
        return self.timeline.control.last_log_term(self.timeline.flush_lsn)

    @property
    def catching_up(self) -> bool:
        """This node lost WAL (control file `catchup_lsn`): no votes, no leading, no
        serving until a leader brought it up to what the cluster committed."""
        return self.timeline.control.catchup_lsn is not None

    def live_leader(self) -> int:
        """The leader of the current term if heard from within LEADER_LEASE_S, else 0."""
        if self.leader_term:
            return self.config.node_id
        if self.leader_id and self.clock() - self.leader_heard < LEADER_LEASE_S:
            return self.leader_id
        return 0

    def leading_with_quorum(self) -> bool:
        now = self.clock()
        live = 1 + sum(1 for heard in self._followers_heard() if now - heard < LEADER_LEASE_S)
        return bool(self.leader_term) and live >= self.config.majority

    def not_leader(self, why: str) -> NotLeader:
        tl = self.timeline
        leader = self.live_leader()
        address = self.config.address(leader) if leader and leader != self.config.node_id else None
        where = f"the leader is node {leader} at {address}" if address else "no leader is known"
        return NotLeader(f"tenant={tl.tenant_id} timeline={tl.timeline_id}: this node does not lead term {tl.term} ({why}); {where}", address)

    # -- the leader's side -----------------------------------------------------------

    def leader_term_or_raise(self) -> Term:
        if not self.leader_term or self.leader_term != self.timeline.term:
            raise self.not_leader("it stepped down")
        return self.leader_term

    def wants_leader(self) -> bool:
        """Whether this node should run for leader with no client write: no live
        leader is known, and either its log extends past its known commit_lsn
        (records that may be committed and are served to nobody until a leader
        advances commit_lsn), or a reader is waiting for WAL, or a peer asked for
        its vote within two leases (it wants a leader and, if its log is behind,
        cannot win: a node whose log is ahead must run; section "Elections without
        writes" of docs/design/0005-replication.md)."""
        tl = self.timeline
        if self.leader_term or self.catching_up or tl.closing or tl.broken is not None or self.live_leader():
            return False
        if self.clock() < self.resigned_until or tl.disk.still_full(LEAD_MIN_FREE_BYTES):
            return False
        if self.clock() - self.peer_wanted_leader < 2 * LEADER_LEASE_S:
            return True  # a peer runs and may lose to this node's log: this node must run too
        return tl.flush_lsn > tl.commit_lsn or tl.stream_waiters > 0

    async def campaign(self) -> bool:
        """Run for leader in the background (the Cluster's election watch): after a
        random delay of up to one lease (so nodes seldom run at once), one vote
        round if a leader is still wanted (not ensure_leader's retries: each round
        raises the term, and a node whose log is behind would only depose the
        winner-to-be again). True when this node leads; a loss is logged."""
        await asyncio.sleep(self.rng.random() * LEADER_LEASE_S)
        async with self.election_lock:
            if not self.wants_leader() or self.clock() < self.started + LEADER_LEASE_S:
                return bool(self.leader_term)
            try:
                won = await asyncio.shield(self.elect())
            except (StrataError, OSError) as exc:
                self._event(self.log.info, "election_deferred", lsn=self.timeline.flush_lsn, reason=exc)
                return False
        if not won and self.better_candidate:
            self._event(self.log.info, "election_deferred", lsn=self.timeline.flush_lsn, better_candidate=self.better_candidate)
        return won

    async def ensure_leader(self) -> None:
        """Return when this node leads the timeline; else redirect (NotLeader with
        the live leader) or run for leader until a vote round is lost."""
        if self.leader_term:
            return
        if self.catching_up:
            raise self.not_leader("it lost WAL and is catching up from its peers, so it cannot lead")
        if self.clock() < self.resigned_until:
            raise self.not_leader("it resigned the lead a moment ago (its disk is full)")
        if self.timeline.disk.still_full(LEAD_MIN_FREE_BYTES):
            # It could not even record a vote for itself: send the client on.
            raise self.not_leader(f"its disk is full (under {LEAD_MIN_FREE_BYTES} bytes free), so it does not run for leader")
        # A node that just started first listens for a leader for one lease, so that
        # it does not bump the term under a healthy leader.
        while not self.live_leader() and (wait := self.started + LEADER_LEASE_S - self.clock()) > 0:
            await asyncio.sleep(min(wait, HEARTBEAT_S / 2))
        if self.live_leader():
            raise self.not_leader("a live leader exists")
        async with self.election_lock:
            give_up = self.clock() + ELECTION_PATIENCE_S
            while self.clock() < give_up:
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
                await asyncio.sleep((0.05 + 0.25 * self.rng.random()) * self.config.node_id / len(self.config.nodes))
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
        answers = await self.peers.ask_all("RequestVote", request, VOTE_TIMEOUT_S)
        votes = 1 + sum(1 for _, a in answers if a.granted)
        # A voter whose log is ahead of ours is the one that can win: say so to clients.
        ahead = [(a.last_log_term, a.flush_lsn, n) for n, a in answers
                 if not a.granted and (a.last_log_term, a.flush_lsn) > (llt, flush)]
        self.better_candidate = max(ahead)[2] if ahead else 0
        highest = max((a.term for _, a in answers), default=0)
        async with self.state_lock:
            if highest > tl.term:
                await self.step_down(highest, "a voter is at a higher term")
                return False
            if tl.term != term or tl.control.voted_for != self.config.node_id or votes < self.config.majority:
                self._event(self.log.info, "election_lost", votes=votes, lsn=flush)
                return False
            await self._become_leader(term)
            return True

    async def _become_leader(self, term: Term) -> None:
        tl = self.timeline
        flush = tl.flush_lsn
        history = history_up_to(tl.control.term_history, flush) + (TermStart(term, flush),)
        await tl.set_control(term_history=history)
        self.leader_term, self.leader_id, self.epoch_start_lsn = term, self.config.node_id, flush
        self._start_leading(term)
        self._event(self.log.info, "leader_elected", lsn=flush, epoch_start_lsn=flush)

    async def step_down(self, term: Term, why: str) -> None:
        """Adopt a higher term (persisted) and stop leading. Caller holds state_lock or
        is a Replicator (which must not take it: the handlers may be waiting on it)."""
        tl = self.timeline
        if term > tl.term:
            await tl.set_control(term=term, voted_for=NO_VOTE)
        if self.leader_term:
            self._event(self.log.info, "leader_stepped_down", lsn=tl.commit_lsn, reason=why)
            self.leader_term = 0
            self._stop_leading()

    def resign(self, why: str) -> None:
        """Stop leading at once, in the current term (no control write: the term is
        unchanged), and stay out of elections for two leases so that the followers,
        which may hold WAL this node lacks, elect one of them first. For a leader
        that cannot write (its disk is full); it follows from then on."""
        self.resigned_until = self.clock() + 2 * LEADER_LEASE_S
        if self.leader_term:
            self._event(self.log.warning, "leader_resigned", lsn=self.timeline.commit_lsn, reason=why)
            self.leader_term, self.leader_id = 0, 0
            self._stop_leading()

    # -- the voter's side (the WalPeer RequestVote handler) ------------------------------

    async def on_vote_request(self, req: peer_pb2.VoteRequest) -> peer_pb2.VoteResponse:
        tl = self.timeline
        async with self.state_lock:
            c = tl.control
            mine = (self.last_log_term(), tl.flush_lsn)
            reason = ""
            if not self.live_leader():
                self.peer_wanted_leader = self.clock()
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
            elif self.leader_id and self.leader_id != req.candidate_id and self.clock() - self.leader_heard < LEADER_LEASE_S:
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
                self.leader_id, self.leader_heard = 0, self.clock()
            self._event(self.log.info, "vote", candidate=req.candidate_id, vote_term=req.term, granted=granted, reason=reason or None)
            return peer_pb2.VoteResponse(term=tl.term, granted=granted, flush_lsn=tl.flush_lsn, last_log_term=mine[0], reason=reason)
