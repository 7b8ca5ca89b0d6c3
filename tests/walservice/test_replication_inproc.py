"""Replication races driven in one process (docs/design/0005-replication.md):
one node of a 3-node cluster whose peers are unreachable, with the test playing
the other nodes' part by calling the WalPeer handlers directly. Each test pins
down one ordering that real processes hit only by chance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from strata.errors import Unavailable
from strata.logs import event_logger
from strata.remote_storage.local_fs import LocalFsStorage
from strata.v1 import peer_pb2
from walservice.election import NotLeader
from walservice.offload import WalOffloader
from walservice.peers import ClusterConfig
from walservice.replication import Cluster
from walservice.sequencer import Timeline
from walservice.term_history import history, history_to_proto
from walservice.timelines import TimelineSet

T, TL = "a" * 32, "b" * 32
# Nothing listens on port 1: every peer RPC fails at once (connection refused).
NODES = ["127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1"]


@asynccontextmanager
async def cluster_node(data_dir: Path, node_id: int = 1) -> AsyncIterator[tuple[TimelineSet, Timeline]]:
    log = event_logger("walservice")
    with ThreadPoolExecutor(max_workers=2) as executor:
        timelines = TimelineSet(data_dir, executor, log)
        cluster = Cluster(ClusterConfig(node_id, NODES), log)
        timelines.cluster = cluster
        timelines.load()
        tl = await timelines.create(T, TL, 0, 8192)
        try:
            yield timelines, tl
        finally:
            await timelines.close()
            await cluster.close()


async def lead(tl: Timeline, term: int) -> None:
    """Make this node the leader of `term` as an election it won would."""
    assert tl.replica is not None
    await tl.set_control(term=term, voted_for=tl.replica.config.node_id)
    async with tl.replica.state_lock:
        await tl.replica._become_leader(term)


def run(fn: Callable[[Path], Awaitable[None]], tmp_path: Path) -> None:
    asyncio.run(fn(tmp_path))


def test_a_deposed_leader_does_not_write_a_waiting_round(tmp_path: Path) -> None:
    """R1: a round that waited for wal_lock while its node lost the term is not written."""

    async def body(data_dir: Path) -> None:
        async with cluster_node(data_dir) as (_, tl):
            await lead(tl, 2)
            assert tl.replica is not None
            async with tl.wal_lock:  # e.g. a write still in flight
                future = tl.submit([b"record"])
                await asyncio.sleep(0.05)  # the round took the batch and waits for the lock
                async with tl.replica.state_lock:
                    await tl.replica.step_down(3, "node 2 leads term 3")
            with pytest.raises(NotLeader):  # not applied: safe to send to the new leader
                await future
            assert (tl.end_lsn, tl.flush_lsn) == (0, 0)
            assert tl.wal.end_lsn == 0

    run(body, tmp_path)


def test_a_follower_answers_its_durable_flush_lsn(tmp_path: Path) -> None:
    """R1: PeerAppend answers carry flush_lsn (fsync'd), not end_lsn (sequenced)."""

    async def body(data_dir: Path) -> None:
        async with cluster_node(data_dir) as (_, tl):
            assert tl.replica is not None
            tl.end_lsn = 500  # sequenced by this node as a leader, not yet durable
            response = await tl.replica.on_peer_append(
                peer_pb2.PeerAppendRequest(
                    tenant_id=T, timeline_id=TL, term=2, leader_id=2,
                    term_history=history_to_proto(history((1, 0), (2, 0))), start_lsn=0, commit_lsn=0,
                )
            )
            assert response.flush_lsn == tl.flush_lsn == 0
            tl.end_lsn = 0

    run(body, tmp_path)


def test_no_quorum_is_unavailable_not_not_leader(tmp_path: Path) -> None:
    """A written round that no majority flushed fails with plain Unavailable: its
    fate is unknown, so it must not look like a NotLeader refusal."""

    async def body(data_dir: Path) -> None:
        async with cluster_node(data_dir) as (_, tl):
            await lead(tl, 2)
            future = tl.submit([b"record"])
            with pytest.raises(Unavailable) as info:
                await future
            assert not isinstance(info.value, NotLeader)
            assert tl.flush_lsn > 0

    run(body, tmp_path)


def test_only_the_leader_offloads_and_only_committed_segments(tmp_path: Path) -> None:
    """R9: a follower uploads nothing; a leader uploads a sealed segment only once
    commit_lsn reaches its end (never bytes a new leader might cut)."""

    async def body(root: Path) -> None:
        log = event_logger("walservice")
        remote = root / "remote"
        with ThreadPoolExecutor(max_workers=2) as executor:
            single = TimelineSet(root / "node", executor, log, segment_bytes=4096)
            single.load()
            tl = await single.create(T, TL, 0, 8192)
            for _ in range(40):
                await tl.append([b"x" * 200])
            await single.close()
            timelines = TimelineSet(root / "node", executor, log, segment_bytes=4096)
            cluster = Cluster(ClusterConfig(1, NODES), log)
            timelines.cluster = cluster
            timelines.load()
            tl = timelines.get(T, TL)
            assert len(tl.wal.segments) >= 3
            tl.commit_lsn = 0  # as if no majority had confirmed any of it yet
            offloader = WalOffloader(LocalFsStorage(remote), f"file://{remote}", timelines, log, interval_s=0.05)
            st = offloader._state_of(tl)

            def uploaded() -> list[str]:
                return sorted(p.name for p in remote.glob("**/*.wal*") if not p.name.startswith("."))

            await offloader._offload_timeline(st)  # a follower
            assert uploaded() == []
            await lead(tl, 2)
            await offloader._offload_timeline(st)  # leads, nothing committed in its term yet
            assert uploaded() == []
            tl.commit_lsn = tl.wal.segments[1].end_lsn  # a majority flushed two segments
            await offloader._offload_timeline(st)
            assert uploaded() == [tl.wal.segments[0].path.name, tl.wal.segments[1].path.name]
            assert tl.control.backup_lsn == tl.commit_lsn
            offloader._executor.shutdown()
            await timelines.close()
            await cluster.close()

    run(body, tmp_path)


def test_a_catching_up_node_neither_votes_nor_leads_nor_serves(tmp_path: Path) -> None:
    """R3: a timeline recreated from a peer (a node that lost its WAL) abstains from
    votes, refuses to lead and to stream until a leader's heartbeat finds it holding
    the leader's whole log; then it votes again. The state survives a restart."""

    async def body(data_dir: Path) -> None:
        log = event_logger("walservice")
        with ThreadPoolExecutor(max_workers=2) as executor:
            timelines = TimelineSet(data_dir, executor, log)
            cluster = Cluster(ClusterConfig(3, NODES), log)
            timelines.cluster = cluster
            timelines.load()
            await cluster.on_peer_create(
                timelines, peer_pb2.PeerTimeline(tenant_id=T, timeline_id=TL, start_lsn=0, page_size=8192, first_lsn=0, term=4,
                                                 term_history=history_to_proto(history((1, 0), (4, 0))))
            )
            tl = timelines.get(T, TL)
            replica = tl.replica
            assert replica is not None and tl.control.catchup_lsn == 0 and replica.catching_up
            vote = await replica.on_vote_request(
                peer_pb2.VoteRequest(tenant_id=T, timeline_id=TL, term=9, candidate_id=1, last_log_term=4, flush_lsn=1000)
            )
            assert not vote.granted and vote.catching_up
            with pytest.raises(NotLeader):
                await replica.ensure_leader()
            with pytest.raises(Unavailable, match="catching up"):
                await anext(tl.stream(0))
            # The leader of term 5 sends its log: the frames, then (nothing more to
            # send) a heartbeat at this node's end, carrying the commit_lsn.
            leader = await _leader_frames(data_dir / "leader")
            entries = history_to_proto(history((1, 0), (5, 0)))
            base = dict(tenant_id=T, timeline_id=TL, term=5, leader_id=1, term_history=entries)
            r = await replica.on_peer_append(peer_pb2.PeerAppendRequest(**base, start_lsn=0, commit_lsn=leader[0]))
            assert r.ok and replica.catching_up  # the first message: the leader committed more
            r = await replica.on_peer_append(peer_pb2.PeerAppendRequest(**base, start_lsn=0, frames=leader[1], commit_lsn=leader[0]))
            assert r.ok and r.flush_lsn == leader[0] and replica.catching_up  # frames alone do not end it
            r = await replica.on_peer_append(peer_pb2.PeerAppendRequest(**base, start_lsn=leader[0], commit_lsn=leader[0]))
            assert r.ok and not replica.catching_up and tl.control.catchup_lsn is None
            vote = await replica.on_vote_request(
                peer_pb2.VoteRequest(tenant_id=T, timeline_id=TL, term=9, candidate_id=1, last_log_term=5, flush_lsn=leader[0])
            )
            assert vote.granted and not vote.catching_up
            await timelines.close()
            await cluster.close()

    run(body, tmp_path)


async def _leader_frames(data_dir: Path) -> tuple[int, bytes]:
    """Frames as a leader of term 5 would send them: (end_lsn, bytes)."""
    log = event_logger("walservice")
    with ThreadPoolExecutor(max_workers=1) as executor:
        timelines = TimelineSet(data_dir, executor, log)
        timelines.load()
        tl = await timelines.create(T, TL, 0, 8192)
        await tl.set_control(term=5)
        for _ in range(3):
            await tl.append([b"record" * 10])
        data = tl.wal.read_batches(0, tl.flush_lsn, 1 << 20)
        end = tl.flush_lsn
        await timelines.close()
        return end, data
