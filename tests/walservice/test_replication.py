"""A 3-node walservice cluster (docs/design/0005-replication.md) under faults.

Real processes on loopback. The fault schedule is a seeded loop: kill -9 and
restart one node at a time (never more than a minority down), with the peer RPC
fault layer (`STRATA_PEER_FAULTS`) dropping and delaying messages between nodes.
Once, a majority is down for a while: no append sent then may be acknowledged.
At the end every acknowledged batch must be present, whole and identical on every
node, and no term may have had two leaders.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from compute_shim import AppendFailed, Client, WalWriter
from strata import ids
from strata.v1 import peer_pb2, peer_pb2_grpc, records_pb2, wal_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv, free_port
from tests.walservice.harness import TimelineKey, read_stream, record_tag, streamed, tagged_batch

SEED = int(os.environ.get("STRATA_REPL_SEED", "20261123"))
# Bounded: the fault loop runs this long (a soak run sets more).
FAULT_SECONDS = float(os.environ.get("STRATA_REPL_FAULT_SECONDS", "15"))
FAULTS = "drop=0.05,delay_ms=30,seed={seed}"
CONVERGE_TIMEOUT_S = 30.0


def cluster_client(nodes: list[Component], timeout: float = 10.0) -> Client:
    return Client(walservice=",".join(n.address for n in nodes), timeout=timeout)


def node_status(node: Component, key: TimelineKey) -> wal_pb2.WalStatus:
    return wal_pb2_grpc.WalServiceStub(node.channel()).Status(key.ref(), timeout=5)


def create(client: Client) -> TimelineKey:
    key = TimelineKey(ids.new_id(), ids.new_id())
    client.wal_create_timeline(tenant_id=key.tenant_id, timeline_id=key.timeline_id, start_lsn=0, page_size=8192)
    return key


def leaders_by_term(nodes: list[Component]) -> dict[int, set[str]]:
    """term -> the nodes that logged winning it (from every start of every node)."""
    out: dict[int, set[str]] = defaultdict(set)
    for node in nodes:
        for line in node.log_text().splitlines():
            if "event=leader_elected" in line:
                term = int(re.search(r" term=(\d+)", line).group(1))  # type: ignore[union-attr]
                out[term].add(node.name)
    return out


def catching_up(node: Component) -> bool:
    """The node recreated a timeline it had lost and has not caught up yet (it
    serves no Stream until then; docs/design/0005-replication.md, Catch-up)."""
    text = node.log_text()
    return text.count("event=caught_up") < text.count("catching_up=True")


def wait_converged(nodes: list[Component], key: TimelineKey, lsn: int) -> None:
    """Until every node's commit_lsn reaches `lsn` and none is catching up."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        commits = []
        for node in nodes:
            try:
                commits.append(node_status(node, key).commit_lsn)
            except grpc.RpcError as exc:
                commits.append(f"{exc.code().name}")
        if all(isinstance(c, int) and c >= lsn for c in commits) and not any(catching_up(n) for n in nodes):
            return
        assert time.monotonic() < deadline, f"nodes did not reach commit_lsn={lsn}: {commits}"
        time.sleep(0.1)


@dataclass(frozen=True)
class Acked:
    writer: int
    batch: int
    records: list[tuple[int, bytes]]
    term: int
    sent: float  # time.monotonic() when the append was handed to the client
    done: float  # ... and when it was acknowledged


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[Acked] = field(default_factory=list)
    failed: int = 0


class Writer(threading.Thread):
    """Appends tagged batches through a cluster Client until stopped."""

    def __init__(self, nodes: list[Component], key: TimelineKey, writer: int, ledger: Ledger, seed: int) -> None:
        super().__init__(daemon=True)
        self.client = cluster_client(nodes, timeout=5.0)
        self.key, self.writer, self.ledger = key, writer, ledger
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None  # what ended run(), re-raised by join_checked

    def run(self) -> None:
        try:
            self._append_until_stopped()
        except BaseException as exc:  # an assertion here must fail the test, not warn
            self.failure = exc
        finally:
            self.client.close()

    def join_checked(self, timeout: float) -> None:
        """Join; raise what failed inside the thread, or that it did not stop."""
        self.join(timeout)
        assert not self.is_alive(), f"writer {self.writer} did not stop within {timeout}s"
        if self.failure is not None:
            raise AssertionError(f"writer {self.writer} failed: {self.failure!r}") from self.failure

    def _append_until_stopped(self) -> None:
        batch = 0
        while not self.stopping.is_set():
            batch += 1
            records = tagged_batch(self.writer, batch, self.rng.randint(1, 6))
            sent = time.monotonic()
            try:
                r = self.client.append(tenant_id=self.key.tenant_id, timeline_id=self.key.timeline_id, records=records)
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                with self.ledger.lock:
                    self.ledger.failed += 1
                time.sleep(0.05)
                continue
            acked = Acked(
                self.writer, batch, [(lsn, rec.SerializeToString()) for lsn, rec in zip(r.record_lsns, records, strict=True)],
                r.term, sent, time.monotonic(),
            )
            with self.ledger.lock:
                self.ledger.acked.append(acked)


def check_cluster(nodes: list[Component], key: TimelineKey, acked: list[Acked]) -> int:
    """A final append, convergence, then: every node streams the same records and
    every acked batch is there at its LSNs. Returns the end LSN."""
    client = cluster_client(nodes, timeout=30.0)
    final = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(99, 1, 2))
    client.close()
    wait_converged(nodes, key, final.end_lsn)
    streams = [streamed(read_stream(wal_pb2_grpc.WalServiceStub(n.channel()), key, final.end_lsn)) for n in nodes]
    for node, stream in zip(nodes[1:], streams[1:]):
        assert stream == streams[0], f"{node.name} streams other records than {nodes[0].name}"
    # Every acknowledged batch, on every node: all of its records, at its LSNs, unchanged.
    for node, stream in zip(nodes, streams):
        present = dict(stream)
        for batch in acked:
            for lsn, rec in batch.records:
                assert present.get(lsn) == rec, (
                    f"{node.name}: acked writer={batch.writer} batch={batch.batch} lost or changed at lsn={lsn}"
                )
    return final.end_lsn


def assert_whole_batches(nodes: list[Component], key: TimelineKey, end_lsn: int) -> None:
    """On every node, every batch in the log (acknowledged or not) is whole: all
    its records, consecutive, in order."""
    for node in nodes:
        records = read_stream(wal_pb2_grpc.WalServiceStub(node.channel()), key, end_lsn)
        seen: dict[tuple[int, int], list[int]] = defaultdict(list)
        counts: dict[tuple[int, int], int] = {}
        for rec in records:
            tag = record_tag(rec.record)
            seen[(tag.writer, tag.batch)].append(tag.index)
            counts[(tag.writer, tag.batch)] = tag.count
        for batch, indexes in seen.items():
            assert indexes == list(range(counts[batch])), (
                f"{node.name}: batch writer={batch[0]} batch={batch[1]} is not whole: {indexes}"
            )


def assert_one_leader_per_term(nodes: list[Component]) -> None:
    leaders = leaders_by_term(nodes)
    assert leaders, "no leader was ever elected"
    twice = {term: names for term, names in leaders.items() if len(names) > 1}
    assert not twice, f"terms with two leaders: {twice}"


# -- tests -------------------------------------------------------------------------------


def test_leader_hint_replicated_create_and_follower_stream(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3)
    # CreateTimeline on one node reaches all of them.
    key = create(Client(walservice=nodes[1].address))
    for node in nodes:
        assert node_status(node, key).term >= 1
    client = cluster_client(nodes)
    acked = [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 3)) for b in range(1, 11)]
    leader_id = node_status(nodes[0], key).leader_node_id
    assert leader_id in (1, 2, 3)
    leader = nodes[leader_id - 1]
    follower = next(n for n in nodes if n is not leader)
    # A follower refuses a client append, naming the leader.
    with pytest.raises(grpc.RpcError) as info:
        wal_pb2_grpc.WalServiceStub(follower.channel()).Append(key.append(tagged_batch(2, 1, 1)), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("strata-leader", leader.address) in tuple(info.value.trailing_metadata())
    # Any node streams what is committed, the same bytes.
    end = acked[-1].end_lsn
    wait_converged(nodes, key, end)
    streams = [streamed(read_stream(wal_pb2_grpc.WalServiceStub(n.channel()), key, end)) for n in nodes]
    assert streams[0] == streams[1] == streams[2]
    assert [lsn for lsn, _ in streams[0]] == [lsn for r in acked for lsn in r.record_lsns]
    assert_one_leader_per_term(nodes)


def test_streamed_appends_follow_the_leader(strata_env: StrataEnv) -> None:
    """AppendStream on a follower answers each append UNAVAILABLE naming the
    leader and applies nothing; WalWriter, pointed at a follower first, resends
    there and every append lands once, replicated to every node."""
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    first = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 0, 1))
    leader = nodes[node_status(nodes[0], key).leader_node_id - 1]
    follower = next(n for n in nodes if n is not leader)
    (response,) = list(
        wal_pb2_grpc.WalServiceStub(follower.channel()).AppendStream(
            iter([wal_pb2.AppendStreamRequest(appends=[key.append(tagged_batch(2, 0, 1))])]), timeout=10
        )
    )
    (outcome,) = response.outcomes
    assert outcome.error_code == grpc.StatusCode.UNAVAILABLE.value[0] and outcome.leader == leader.address
    assert node_status(leader, key).commit_lsn == first.end_lsn  # nothing applied

    async def write() -> list[wal_pb2.AppendResponse]:
        order = [follower.address, *(n.address for n in nodes if n is not follower)]
        async with WalWriter(",".join(order)) as wal:
            return await asyncio.gather(
                *(wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(3, b, 2)) for b in range(20))
            )

    acked = sorted(asyncio.run(write()), key=lambda r: r.start_lsn)
    assert acked[0].start_lsn == first.end_lsn
    for a, b in zip(acked, acked[1:]):
        assert b.start_lsn == a.end_lsn
    wait_converged(nodes, key, acked[-1].end_lsn)
    streams = [streamed(read_stream(wal_pb2_grpc.WalServiceStub(n.channel()), key, acked[-1].end_lsn)) for n in nodes]
    assert streams[0] == streams[1] == streams[2]
    assert len(streams[0]) == 1 + 20 * 2


def test_no_ack_without_a_majority(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes, timeout=10.0)
    key = create(client)
    first = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 1, 2))
    nodes[0].kill()
    nodes[1].kill()
    for batch in range(2, 4):
        with pytest.raises(grpc.RpcError) as info:
            client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, batch, 2))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    # One node back: a majority again, appends go on, and the first batch survived.
    nodes[1].start()
    after = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 9, 2))
    assert after.start_lsn >= first.end_lsn
    live = [nodes[1], nodes[2]]
    wait_converged(live, key, after.end_lsn)
    records = read_stream(wal_pb2_grpc.WalServiceStub(nodes[1].channel()), key, after.end_lsn)
    assert [r.lsn for r in records][: len(first.record_lsns)] == list(first.record_lsns)
    nodes[0].start()
    wait_converged(nodes, key, after.end_lsn)
    assert_one_leader_per_term(nodes)


def test_wiped_node_rejoins_and_converges(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3, "--segment-bytes", "4096")
    client = cluster_client(nodes)
    key = create(client)
    acked = [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 4)) for b in range(1, 40)]
    victim = nodes[2]
    victim.kill()
    shutil.rmtree(victim.data_dir)
    victim.data_dir.mkdir()
    victim.start()
    acked += [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(2, b, 4)) for b in range(1, 20)]
    wait_converged(nodes, key, acked[-1].end_lsn)
    want = [lsn for r in acked for lsn in r.record_lsns]
    for node in nodes:
        got = read_stream(wal_pb2_grpc.WalServiceStub(node.channel()), key, acked[-1].end_lsn)
        assert [r.lsn for r in got] == want, f"{node.name} differs"
    # The wiped node rebuilt its files, cut into segments at the same LSNs as the
    # leader's (so offloaded segment objects are the same whichever node uploads them).
    names = [sorted(p.name for p in n.data_dir.glob("timelines/*/*/*.wal")) for n in nodes]
    assert len(names[2]) > 1
    assert names[0] == names[1] == names[2]
    assert "abstains=True" in victim.log_text()


def _fault_run(strata_env: StrataEnv, monkeypatch: pytest.MonkeyPatch, seconds: float, seed: int) -> None:
    monkeypatch.setenv("STRATA_PEER_FAULTS", FAULTS.format(seed=seed))
    nodes = strata_env.walservice_cluster(3, "--segment-bytes", "16384")
    rng = random.Random(seed)
    key = create(cluster_client(nodes))
    ledger = Ledger()
    writers = [Writer(nodes, key, w, ledger, seed + w) for w in range(1, 4)]
    for w in writers:
        w.start()
    deadline = time.monotonic() + seconds
    kills = 0
    # Once, early: a majority down. Appends sent while it is down must all fail.
    time.sleep(rng.uniform(0.5, 1.5))
    down = rng.sample(nodes, 2)
    for victim in down:
        victim.kill()
    majority_down_at = time.monotonic()
    time.sleep(2.5)  # past QUORUM_TIMEOUT_S: rounds already sent fail rather than hang
    majority_back_at = time.monotonic()
    for victim in down:
        victim.start()
    # Then kills of one node at a time, so never more than a minority is down.
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 2.0))
        victim = rng.choice(nodes)
        if rng.random() < 0.5:  # half the time the leader, as far as a node knows it
            try:
                leader_id = node_status(victim, key).leader_node_id
                victim = nodes[leader_id - 1] if leader_id else victim
            except grpc.RpcError:
                pass
        victim.kill()
        kills += 1
        time.sleep(rng.uniform(0.2, 2.0))
        victim.start()
    for w in writers:
        w.stopping.set()
    for w in writers:
        w.join_checked(30)
    acked = list(ledger.acked)
    assert kills > 0 and len(acked) > 20, f"too little happened: {kills} kills, {len(acked)} acked"
    without_majority = [a for a in acked if a.sent >= majority_down_at and a.done <= majority_back_at]
    assert not without_majority, f"appends acknowledged while a majority was down: {without_majority[:3]}"
    assert ledger.failed > 0, "no append failed while a majority was down"
    end = check_cluster(nodes, key, acked)
    assert_whole_batches(nodes, key, end)
    assert_one_leader_per_term(nodes)
    # Acknowledged terms came from elected leaders.
    leaders = leaders_by_term(nodes)
    assert {a.term for a in acked} <= set(leaders)


def test_random_kills_and_message_faults(strata_env: StrataEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    _fault_run(strata_env, monkeypatch, FAULT_SECONDS, SEED)


@pytest.mark.slow
def test_random_kills_and_message_faults_soak(strata_env: StrataEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for STRATA_SOAK_SECONDS (default 10), with a fresh seed each run
    unless STRATA_REPL_SEED is set (it is printed on failure)."""
    seed = int(os.environ.get("STRATA_REPL_SEED", random.randrange(1 << 32)))
    print(f"STRATA_REPL_SEED={seed}")
    _fault_run(strata_env, monkeypatch, float(os.environ.get("STRATA_SOAK_SECONDS", "10")), seed)


def test_offload_and_trimming_on_every_node(strata_env: StrataEnv) -> None:
    """All nodes offload to one remote storage; remote_consistent_lsn reported to
    one node reaches every node, and each trims its sealed segments below it."""
    remote = strata_env.root / "remote"
    nodes = strata_env.walservice_cluster(
        3, "--segment-bytes", "4096", "--remote-storage", f"file://{remote}", "--offload-interval", "0.2"
    )
    client = cluster_client(nodes)
    key = create(client)
    acked = [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 4)) for b in range(1, 40)]
    end = acked[-1].end_lsn
    wait_converged(nodes, key, end)
    before = [len(list(n.data_dir.glob("timelines/*/*/*.wal"))) for n in nodes]
    assert min(before) > 2
    # The pageserver's report reaches one node (a follower); the leader spreads it.
    middle = acked[20].end_lsn
    follower = next(n for n in nodes if node_status(n, key).leader_node_id != nodes.index(n) + 1)
    wal_pb2_grpc.WalServiceStub(follower.channel()).ReportPersisted(
        wal_pb2.PersistedRequest(tenant_id=key.tenant_id, timeline_id=key.timeline_id, remote_consistent_lsn=middle), timeout=5
    )
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        statuses = [node_status(n, key) for n in nodes]
        files = [len(list(n.data_dir.glob("timelines/*/*/*.wal"))) for n in nodes]
        if all(s.remote_consistent_lsn == middle and s.backup_lsn == end for s in statuses) and all(
            f < b for f, b in zip(files, before)
        ):
            break
        assert time.monotonic() < deadline, f"not offloaded/trimmed everywhere: {statuses} files={files} before={before}"
        time.sleep(0.1)
    # Trimmed below the horizon only: everything above it still streams from every node.
    for node in nodes:
        got = read_stream(wal_pb2_grpc.WalServiceStub(node.channel()), key, end, start_lsn=middle)
        assert [r.lsn for r in got] == [lsn for r in acked[21:] for lsn in r.record_lsns]


def test_report_persisted_on_a_follower_reaches_the_leader(strata_env: StrataEnv) -> None:
    """R7: a follower takes ReportPersisted for LSNs its own commit_lsn has not
    reached yet (it learns commits one message late) by forwarding it to the leader."""
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    for attempt in range(5):
        r = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, attempt + 1, 3))
        leader = next(n for i, n in enumerate(nodes) if node_status(n, key).leader_node_id == i + 1)
        follower = next(n for n in nodes if n is not leader)
        status = wal_pb2_grpc.WalServiceStub(follower.channel()).ReportPersisted(
            wal_pb2.PersistedRequest(tenant_id=key.tenant_id, timeline_id=key.timeline_id, remote_consistent_lsn=r.end_lsn),
            timeout=5,
        )
        assert status.remote_consistent_lsn == r.end_lsn
        assert node_status(leader, key).remote_consistent_lsn == r.end_lsn
    client.close()
    assert "event=report_persisted_forwarded" in "".join(n.log_text() for n in nodes)


def test_sigterm_on_a_follower_ends_the_leaders_stream(strata_env: StrataEnv) -> None:
    """A follower's graceful stop ends the leader's PeerAppend stream into it
    instead of waiting out the 5 s grace for a stream that never ends by itself;
    the other two nodes go on acknowledging appends."""
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 1, 2))
    leader = next(n for i, n in enumerate(nodes) if node_status(n, key).leader_node_id == i + 1)
    follower = next(n for n in nodes if n is not leader)
    t0 = time.monotonic()
    assert follower.stop() == 0
    took = time.monotonic() - t0
    assert took < 4.0, f"the follower took {took:.1f}s to stop: it waited for the leader's stream (grace 5 s)"
    end = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 2, 2)).end_lsn
    assert node_status(leader, key).commit_lsn >= end
    client.close()


def test_sigterm_answers_the_appends_in_flight(strata_env: StrataEnv) -> None:
    """R4: SIGTERM on the leader under a burst of streamed appends: every append it
    took is answered (acknowledged once a majority has it) before it exits, the
    rest are refused as not applied (and go to the next leader); none is left with
    an unknown outcome, and every acknowledged one is on the surviving nodes."""
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 1, 2))
    client.close()
    leader = next(n for i, n in enumerate(nodes) if node_status(n, key).leader_node_id == i + 1)
    others = [n for n in nodes if n is not leader]
    assert leader.proc is not None

    results: list[object] = []

    async def burst() -> None:
        async with WalWriter(",".join([leader.address] + [o.address for o in others])) as wal:

            async def worker(w: int) -> None:
                for b in range(1, 41):  # one append at a time: rounds keep coming, and in flight at SIGTERM
                    try:
                        results.append(
                            await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(10 + w, b, 3))
                        )
                    except AppendFailed as exc:
                        results.append(exc)

            workers = [asyncio.create_task(worker(w)) for w in range(16)]
            while len(results) < 80:
                await asyncio.sleep(0.005)
            leader.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.gather(*workers)

    asyncio.run(burst())
    assert leader.stop() == 0
    unknown = [r for r in results if isinstance(r, AppendFailed) and r.outcome_unknown]
    assert not unknown, f"{len(unknown)} appends left with an unknown outcome; first: {unknown[0]}"
    assert not [r for r in results if isinstance(r, BaseException) and not isinstance(r, AppendFailed)]
    acked = [r for r in results if isinstance(r, wal_pb2.AppendResponse)]
    assert acked
    # A new leader (elected on the next append) commits what the old one acknowledged.
    client = cluster_client(others, timeout=30.0)
    end = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(6, 1, 1)).end_lsn
    client.close()
    assert end > max(r.end_lsn for r in acked)
    wait_converged(others, key, end)
    present = {rec.lsn for rec in read_stream(wal_pb2_grpc.WalServiceStub(others[0].channel()), key, end)}
    assert all(lsn in present for r in acked for lsn in r.record_lsns)


def test_delete_timeline_on_every_node(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key, witness = create(client), create(client)
    for b in range(1, 6):
        client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 2))
        client.append(tenant_id=witness.tenant_id, timeline_id=witness.timeline_id, records=tagged_batch(1, b, 2))
    # Asked on any node, the timeline goes on all of them.
    done = Client(walservice=nodes[2].address).wal_delete_timeline(tenant_id=key.tenant_id, timeline_id=key.timeline_id)
    assert done.existed and done.nodes_deleted == 3
    # No replicator or election brings it back: the witness timeline's appends
    # reached every node after the deletion, so the peer streams ran rounds since.
    end = 0
    for b in range(6, 9):
        end = client.append(tenant_id=witness.tenant_id, timeline_id=witness.timeline_id, records=tagged_batch(1, b, 2)).end_lsn
    client.close()
    wait_converged(nodes, witness, end)
    for node in nodes:
        with pytest.raises(grpc.RpcError) as err:
            node_status(node, key)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, node.name
        assert not (node.data_dir / "timelines" / key.tenant_id / key.timeline_id).exists()


def test_fixed_peer_ports_are_used_and_kept_across_a_restart(strata_env: StrataEnv) -> None:
    """`--peer-port`: each node takes the leaders' PeerAppend connections on the
    port it was given (PeerStreamPort says so), also after a restart, and appends
    reach a majority through them."""
    ports = {i: free_port() for i in (1, 2, 3)}
    nodes = strata_env.walservice_cluster(3, node_args=lambda i: ["--peer-port", str(ports[i])])
    for i, node in enumerate(nodes, start=1):
        answer = peer_pb2_grpc.WalPeerStub(node.channel()).PeerStreamPort(peer_pb2.PeerStreamPortRequest(), timeout=5)
        assert (answer.port, answer.version) == (ports[i], 1)
        assert f"event=peer_stream_listening host=127.0.0.1 port={ports[i]}" in node.log_text()
    client = cluster_client(nodes)
    key = create(client)
    client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 1, 2))
    leader_id = node_status(nodes[0], key).leader_node_id
    follower = next(n for i, n in enumerate(nodes, start=1) if i != leader_id)
    follower.kill()
    follower.start()  # the same --peer-port again (it is free: the old process is gone)
    end = 0
    for b in range(2, 6):
        end = client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 2)).end_lsn
    client.close()
    wait_converged(nodes, key, end)  # the restarted follower got the frames over its fixed port again


def test_a_bad_peer_port_is_refused_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "walservice", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
         "--node-id", "1", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--peer-port", "70000"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "--peer-port=70000 must be a TCP port (0 picks a free one)"
