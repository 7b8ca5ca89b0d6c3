"""Seeded simulations of the election and commit rules (issue 16.8; the harness
is tests/walservice/simulation.py): many schedules of kills, restarts,
partitions, message loss and appends against three real walservice nodes on a
virtual clock. After each schedule the network heals, every node runs, nobody
writes, and then:

- no LSN was acknowledged twice (acknowledged ranges never overlap);
- every acknowledged append is on a majority of nodes, at its LSNs, byte for byte;
- every node's commit_lsn reaches the last acknowledged LSN and its Stream
  delivers every acknowledged record, with no new write (issue 16.1).

`STRATA_SIM_SEEDS` sets how many schedules run (CI: the default); a failure
prints its seed, and `STRATA_SIM_SEED=S` replays that one schedule.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from strata import ids
from strata.errors import StrataError
from tests.walservice.harness import tagged_batch
from tests.walservice.simulation import SimNetwork, SimNode, VirtualTimeLoop, payloads, quiet_logs

NODES = 3
MAJORITY = NODES // 2 + 1
SEEDS = int(os.environ.get("STRATA_SIM_SEEDS", "60"))
STEPS = 40
# Virtual seconds the healed cluster gets before the readers come (no write at all).
SETTLE_S = 5.0
# ... and then, with a reader on every node, this long to stream all of it.
STREAM_WITHIN_S = 15.0
APPEND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Ack:
    start_lsn: int
    end_lsn: int
    records: tuple[tuple[int, bytes], ...]  # (lsn, payload)


@dataclass
class SimCluster:
    seed: int
    root: Path
    rng: random.Random = field(init=False)
    network: SimNetwork = field(init=False)
    nodes: dict[int, SimNode] = field(init=False)
    acks: list[Ack] = field(default_factory=list)
    # What happened, in order: the acknowledged appends' LSNs and the faults.
    trace: list[str] = field(default_factory=list)
    tenant_id: str = field(default_factory=ids.new_id)
    timeline_id: str = field(default_factory=ids.new_id)
    batches: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.network = SimNetwork(random.Random(self.seed + 1))
        self.nodes = {}
        for n in range(1, NODES + 1):
            (self.root / f"node{n}").mkdir(parents=True)
            self.nodes[n] = SimNode(n, NODES, self.root / f"node{n}", self.network, self.seed)

    def up(self) -> list[SimNode]:
        return [self.nodes[n] for n in sorted(self.network.up)]

    async def create_timeline(self) -> None:
        for node in self.nodes.values():
            node.start()
        node = self.nodes[1]
        await node.spawn(node.cluster.create_timeline(node.timelines, self.tenant_id, self.timeline_id, 0, 8192))

    async def append(self, node: SimNode) -> None:
        """One client append through `node`, as the service runs it; recorded only if acknowledged."""
        self.batches += 1
        records = payloads(tagged_batch(1, self.batches, self.rng.randint(1, 4)))

        async def run() -> Ack:
            tl = node.timelines.get(self.tenant_id, self.timeline_id)
            await tl.ready_for_appends()
            result = await tl.submit(records)
            return Ack(result.start_lsn, result.end_lsn, tuple(zip(result.record_lsns, records, strict=True)))

        task = node.spawn(run())
        try:
            async with asyncio.timeout(APPEND_TIMEOUT_S):
                ack = await asyncio.shield(task)
        except (StrataError, OSError, TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not task.cancelled():
                raise
            return
        self.acks.append(ack)
        self.trace.append(f"ack {ack.start_lsn}-{ack.end_lsn} via {node.node_id}")

    async def step(self) -> None:
        r = self.rng.random()
        down = [n for n in self.nodes if n not in self.network.up]
        if r < 0.45 and self.network.up:
            targets = [self.rng.choice(self.up()) for _ in range(self.rng.randint(1, 3))]
            await asyncio.gather(*(self.append(n) for n in targets))
        elif r < 0.6 and self.network.up:
            victim = self.rng.choice(self.up())
            victim.kill()
            self.trace.append(f"kill {victim.node_id}")
        elif r < 0.75 and down:
            node = self.nodes[self.rng.choice(down)]
            node.start()
            self.trace.append(f"start {node.node_id}")
        elif r < 0.85:
            a, b = self.rng.sample(sorted(self.nodes), 2)
            self.network.cut.add(frozenset((a, b)))
            self.trace.append(f"cut {a}-{b}")
        elif r < 0.92:
            self.network.cut.clear()
            self.trace.append("heal")
        else:
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await asyncio.sleep(self.rng.uniform(0.0, 0.5))

    async def settle(self) -> None:
        """Heal everything, start every node, write nothing, let time pass."""
        self.network.cut.clear()
        for n, node in self.nodes.items():
            if n not in self.network.up:
                node.start()
        await asyncio.sleep(SETTLE_S)

    def describe(self) -> str:
        out = []
        for n, node in self.nodes.items():
            tl = node.timelines.get(self.tenant_id, self.timeline_id)
            r = tl.replica
            out.append(
                f"{n}: term={tl.term} flush={tl.flush_lsn} commit={tl.commit_lsn} leads={r.leader_term} "
                f"leader={r.leader_id} catchup={tl.control.catchup_lsn} voted={tl.control.voted_for}"
            )
        return "; ".join(out)

    # -- the checks ------------------------------------------------------------------

    def check_no_lsn_acknowledged_twice(self) -> None:
        ranges = sorted((a.start_lsn, a.end_lsn) for a in self.acks)
        for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
            assert e1 <= s2, f"seed={self.seed}: LSN ranges [{s1}, {e1}) and [{s2}, {e2}) were both acknowledged"

    def wal_records(self, node: SimNode) -> dict[int, bytes]:
        tl = node.timelines.get(self.tenant_id, self.timeline_id)
        cursor = tl.wal.cursor(tl.wal.segments[0].start_lsn)
        out: dict[int, bytes] = {}
        while frames := cursor.read(tl.flush_lsn, 1 << 20):
            out.update((f.lsn, f.payload) for f in frames)
        return out

    def check_acknowledged_on_a_majority(self) -> None:
        held = {n: self.wal_records(node) for n, node in self.nodes.items()}
        for ack in self.acks:
            on = [n for n, recs in held.items() if all(recs.get(lsn) == p for lsn, p in ack.records)]
            assert len(on) >= MAJORITY, f"seed={self.seed}: acknowledged {ack.start_lsn}-{ack.end_lsn} is only on nodes {on}"

    async def check_streamed_with_no_write(self) -> None:
        """A reader on every node at once (as pageservers would be), and no write:
        each must receive every acknowledged record within STREAM_WITHIN_S."""
        if not self.acks:
            return
        last = max(a.end_lsn for a in self.acks)
        want = {lsn: p for a in self.acks for lsn, p in a.records}

        async def read(node: SimNode) -> dict[int, bytes]:
            tl = node.timelines.get(self.tenant_id, self.timeline_id)
            got: dict[int, bytes] = {}
            stream = tl.stream(0)
            try:
                while not got or max(got) < last:
                    frames = await anext(stream)
                    got.update((f.lsn, f.payload) for f in frames)
            finally:
                await stream.aclose()
            return got

        tasks = {n: node.spawn(read(node)) for n, node in self.nodes.items()}
        await asyncio.wait(tasks.values(), timeout=STREAM_WITHIN_S)
        for n, task in tasks.items():
            assert task.done(), (
                f"seed={self.seed}: node {n} streamed nothing past lsn={last} within {STREAM_WITHIN_S}s with no write; "
                f"nodes: {self.describe()}"
            )
            got = task.result()
            missing = [lsn for lsn, p in want.items() if got.get(lsn) != p]
            assert not missing, f"seed={self.seed}: node {n} streamed acknowledged lsns {missing[:5]} wrong or not at all"

    async def run(self) -> None:
        await self.create_timeline()
        for _ in range(STEPS):
            await self.step()
        await self.settle()
        assert not self.network.errors, f"seed={self.seed}: handlers failed: {self.network.errors[:3]}"
        self.check_no_lsn_acknowledged_twice()
        self.check_acknowledged_on_a_majority()
        await self.check_streamed_with_no_write()
        for node in self.nodes.values():
            if node.node_id in self.network.up:
                node.kill()


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def simulate(seed: int, root: Path) -> SimCluster:
    quiet_logs()
    sim = SimCluster(seed, root)
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(sim.run())
    finally:
        loop.run_until_complete(_cancel_the_rest())
        loop.close()
    return sim


def _seeds() -> list[int]:
    if "STRATA_SIM_SEED" in os.environ:
        return [int(os.environ["STRATA_SIM_SEED"])]
    return list(range(1, SEEDS + 1))


@pytest.mark.parametrize("seed", _seeds())
def test_schedule_keeps_every_acknowledged_append(seed: int, tmp_path: Path) -> None:
    sim = simulate(seed, tmp_path / "run")
    print(f"seed={seed}: {len(sim.acks)} acknowledged; " + ", ".join(sim.trace))


def test_a_schedule_is_deterministic(tmp_path: Path) -> None:
    first = simulate(7, tmp_path / "a")
    second = simulate(7, tmp_path / "b")
    assert first.acks, "nothing was acknowledged: the schedule proves nothing"
    assert first.trace == second.trace
