"""SIGKILL of the pageserver while WAL streams in and layers are written.

With a tiny --checkpoint-bytes the pageserver freezes and flushes layers all
the time (and compacts, and writes images), so a kill at a random moment often
lands inside a layer write or between a layer write and its index update.
After every restart each page at every LSN must equal the model, and nothing
half-written may ever be read: leftovers (`.tmp` files, layer files the index
does not name) are removed on load, never served.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import grpc
import pytest

from compute_shim import Client
from pageserver.index_part import read_index_part
from pageserver.layers.names import LayerName
from tests.env import Component, StrataEnv, wait_until
from tests.pageserver.world import RELS, RecordGen, World

SEED = int(os.environ.get("STRATA_KILL9_SEED", "20261122"))
TINY_LAYERS = (
    "--checkpoint-bytes", "1024",
    "--compaction-threshold", "3",
    "--image-threshold", "2",
    "--l1-target-bytes", "4096",
)


def timeline_dirs(ps: Component) -> list[Path]:
    return sorted(ps.data_dir.glob("tenants/*/timelines/*"))


def assert_only_listed_files(ps: Component) -> None:
    """Every file of every timeline directory is its index, its wal_seen.json
    marker, or a layer the index names."""
    for tl_dir in timeline_dirs(ps):
        listed = {entry.file_name for entry in read_index_part(tl_dir).layers} | {"index_part.json"}
        present = {p.name for p in tl_dir.iterdir()} - {"wal_seen.json"}
        assert present == listed, f"{tl_dir}: unlisted {sorted(present - listed)}, missing {sorted(listed - present)}"


class Appender(threading.Thread):
    """Appends random batches to the world's timelines until stopped; counts them."""

    def __init__(self, world: World, timelines: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.timelines = timelines  # main thread may add branches
        self.rng = random.Random(seed)
        self.gen = RecordGen(self.rng, world.page_size)
        self.count = 0
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                timeline_id = self.rng.choice(self.timelines)
                self.world.append_random(timeline_id, self.gen, 1, max_records=4)
                with self.cond:
                    self.count += 1
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, appends: int) -> None:
        """Block until `appends` more batches were appended."""
        with self.cond:
            target = self.count + appends
            assert self.cond.wait_for(lambda: self.count >= target or self.error is not None, timeout=60)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.stopping.set()
        self.join(60)
        if self.error is not None:
            raise self.error


def kill_rounds(env: StrataEnv, seed: int, rounds: int | None = None, seconds: float | None = None) -> None:
    """SIGKILL the pageserver at random moments while batches stream in (some
    right after making a branch), `rounds` times or for `seconds`; check after
    every restart, and every timeline at many LSNs at the end."""
    rng = random.Random(seed)
    wal = env.walservice()
    ps = env.pageserver(wal, *TINY_LAYERS)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        appender = Appender(world, [main], rng.randrange(1 << 32))
        appender.start()
        deadline = time.monotonic() + (seconds or 0)
        round_no = 0
        try:
            while round_no < rounds if rounds is not None else time.monotonic() < deadline:
                round_no += 1
                appender.wait_for(rng.randint(2, 12))
                if round_no % 2 == 0 and len(appender.timelines) < 8:
                    # A branch at the parent's latest LSN, likely still only in
                    # memory: after the kill, the parent must re-ingest up to the
                    # branch point before the branch can be read.
                    parent = rng.choice(appender.timelines)
                    appender.timelines.append(world.branch(parent, 0))
                    appender.wait_for(rng.randint(0, 3))
                ps.kill()
                appender.wait_for(rng.randint(0, 3))  # WAL keeps coming while it is down
                ps.start()
                # Reads right after the restart (ingest still catching up).
                for timeline_id in list(appender.timelines):
                    world.wait_ingested(timeline_id)
                    world.check(timeline_id, world.timelines[timeline_id].last_lsn, rng)
        finally:
            appender.finish()
        assert "event=layer_flushed" in ps.log_text()
        world.check_all(rng, limit=25)
        ps.kill()
        ps.start()
        world.check_all(rng, limit=25)
        assert ps.stop() == 0
        assert_only_listed_files(ps)


def test_kill9_during_ingest_and_layer_writes(strata_env: StrataEnv) -> None:
    kill_rounds(strata_env, SEED, rounds=6)


@pytest.mark.slow
def test_kill9_soak(strata_env: StrataEnv) -> None:
    """The same for STRATA_SOAK_SECONDS (default 10), with a fresh seed each run
    unless STRATA_KILL9_SEED is set (it is printed on failure)."""
    seed = int(os.environ.get("STRATA_KILL9_SEED", random.randrange(1 << 32)))
    print(f"STRATA_KILL9_SEED={seed}")
    kill_rounds(strata_env, seed, seconds=float(os.environ.get("STRATA_SOAK_SECONDS", "10")))


def test_leftovers_of_a_crashed_write_are_removed_not_read(strata_env: StrataEnv) -> None:
    """Files a crash can leave (a layer's .tmp, a whole layer the index does not
    name, a timeline directory being created) are deleted on load; garbage in
    them is never read."""
    rng = random.Random(SEED + 1)
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *TINY_LAYERS)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        world.append_random(main, RecordGen(rng, 512), 20)
        world.wait_ingested(main)
        # Layers are flushed in the background after ingest: wait for one to be indexed.
        wait_until("a flushed layer in the index", lambda: bool(timeline_dirs(ps) and read_index_part(timeline_dirs(ps)[0]).layers))
        ps.kill()

        tl_dir = timeline_dirs(ps)[0]
        index = read_index_part(tl_dir)
        assert index.layers, "no layer was flushed: the test needs a smaller --checkpoint-bytes"
        last = world.timelines[main].last_lsn
        # Garbage under names a reader would take seriously if it looked: an
        # unlisted delta over every key and every later LSN, its .tmp, and an
        # unlisted image layer at the latest LSN. (Another generation than the
        # pageserver's, so its own re-flush after the restart cannot recreate
        # the same names.)
        # (Everything may be flushed already: then the delta covers just the last LSN.)
        delta = LayerName("delta", 0, 1 << 64, min(index.disk_consistent_lsn + 1, last), last + 1, generation=7).file_name
        planted = [delta, delta + ".tmp", LayerName.image(0, 1 << 64, last, generation=7).file_name]
        for name in planted:
            (tl_dir / name).write_bytes(b"\xff" * 4096)
        half_made = tl_dir.parent / f".{'0' * 32}.tmp"
        half_made.mkdir()
        (half_made / "index_part.json").write_bytes(b"{not json")

        ps.start()
        world.check_all(rng, limit=None)
        for name in planted:
            assert not (tl_dir / name).exists(), f"{name} was not removed on load"
        assert not half_made.exists()
        assert_only_listed_files(ps)
        client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        world.check_all(rng, limit=None)


def test_branch_waits_for_its_ancestor_after_a_crash(strata_env: StrataEnv) -> None:
    """A branch made at an LSN its ancestor held only in memory: after SIGKILL
    the ancestor must re-ingest up to the branch point before the branch serves
    a page. With the walservice down that cannot happen, so a read of the branch
    waits (DEADLINE_EXCEEDED), and never answers with the ancestor's older state."""
    rng = random.Random(SEED + 2)
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)  # default tunables: everything stays in memory
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        world.append_random(main, RecordGen(rng, 512), 5)
        world.wait_ingested(main)
        branch = world.branch(main, 0)
        branch_lsn = world.timelines[branch].ancestor_lsn
        assert client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).disk_consistent_lsn < branch_lsn
        ps.kill()
        wal.stop()
        ps.start()
        state = world.timelines[branch].state(branch_lsn)
        rel = next(r for r in RELS if r in state and state[r].nblocks)
        for lsn in (branch_lsn, 0):
            try:
                page = client.get_page(
                    tenant_id=world.tenant_id, timeline_id=branch, rel=rel, blkno=0, lsn=lsn, timeout=1.0
                ).page
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
            else:
                assert page == bytes(state[rel].pages.get(0, bytes(512))), "the branch served its ancestor's older state"
        wal.start()
        world.check_all(rng, limit=None)
