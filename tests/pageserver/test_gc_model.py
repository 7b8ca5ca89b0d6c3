"""GC never loses a page a retained LSN needs (the model test of issue 4).

A seeded program of random records (tests/pageserver/world.py) on a root
timeline and branches of branches, with a 1 s PITR window (`pitr_seconds=1` on
CreateTenant: a real window, no clock games). Between rounds of writes the test
sleeps past the window and runs Gc on every timeline, then compares with the
reference model (tests/model.py):
- every page and relation size at every retained LSN (each record's LSN and
  the LSN just below it, tests/pageserver/world.py `read_lsns`) at or above
  each timeline's gc_cutoff_lsn, and at each child's branch point (which may lie
  below the parent's cutoff: GC keeps it, and reads there are allowed), equals
  the model: all of them, not a sample;
- reads below the cutoff answer FAILED_PRECONDITION naming it;
- after the last round the local disk is thrown away and the tenant attached
  on a fresh pageserver from remote storage alone: the same holds.
Two layer configurations: compaction writes image layers (GC finds them), or
never does (`--image-threshold 1000`: GC writes its own image at the cutoff).
"""

from __future__ import annotations

import random
import shutil
import time

import grpc
import pytest

from compute_shim import Client
from tests.env import Component, StrataEnv
from tests.pageserver.world import RecordGen, World

PAGE = 512
PITR_S = 1
ROUNDS = 2

LAYERS = {
    "compaction_images": ("--checkpoint-bytes", "2048", "--compaction-threshold", "3", "--image-threshold", "2", "--l1-target-bytes", "8192"),
    "gc_images_only": ("--checkpoint-bytes", "2048", "--compaction-threshold", "3", "--image-threshold", "1000", "--l1-target-bytes", "8192"),
}


def check_retained(world: World, rng: random.Random) -> dict[str, int]:
    """Every timeline at every LSN >= its cutoff and at each child's branch
    point; a read below a cutoff is refused. Returns the cutoffs."""
    client = world.client
    cutoffs = {
        tl: client.get_timeline(tenant_id=world.tenant_id, timeline_id=tl).gc_cutoff_lsn for tl in world.timelines
    }
    for tl, model in world.timelines.items():
        world.wait_ingested(tl)
        world.check(tl, 0, rng)
        branch_points = {m.ancestor_lsn for m in world.timelines.values() if m.ancestor is model}
        retained = [l for l in world.read_lsns(tl) if l >= cutoffs[tl]]
        assert retained, f"timeline {tl}: no LSN at or above its cutoff {cutoffs[tl]}"
        for lsn in sorted({*retained, *branch_points}):
            if lsn:
                world.check(tl, lsn, rng)
        below = [l for l in world.read_lsns(tl) if 0 < l < cutoffs[tl] and l not in branch_points]
        if below:
            lsn = rng.choice(below)
            with pytest.raises(grpc.RpcError) as info:
                client.get_page(tenant_id=world.tenant_id, timeline_id=tl, rel=1, blkno=0, lsn=lsn)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value
            assert f"gc_cutoff_lsn={cutoffs[tl]}" in info.value.details()
    return cutoffs


@pytest.mark.parametrize("layers", sorted(LAYERS))
def test_gc_keeps_every_retained_lsn(strata_env: StrataEnv, layers: str) -> None:
    seed = 20261123 + sorted(LAYERS).index(layers)
    rng = random.Random(seed)
    gen = RecordGen(rng, PAGE)
    remote = strata_env.root / "remote"
    url = f"file://{remote}"
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *LAYERS[layers], "--remote-storage", url, "--gc-interval", "0")
    removed_any = False
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World(client, client.create_tenant(page_size=PAGE, pitr_seconds=PITR_S).tenant_id, PAGE)
        main = world.create_root()
        world.append_random(main, gen, 40)
        for _ in range(ROUNDS):
            # Branches at random past LSNs (soon below the cutoff), then more history everywhere.
            for parent in rng.sample(sorted(world.timelines), min(2, len(world.timelines))):
                lsns = [l for l in world.read_lsns(parent) if l >= client.get_timeline(
                    tenant_id=world.tenant_id, timeline_id=parent).gc_cutoff_lsn]
                if lsns:
                    child = world.branch(parent, rng.choice(lsns))  # rounded down to a commit
                    if child is not None:  # None: inside the first commit, refused
                        world.append_random(child, gen, 10)
            for tl in sorted(world.timelines):
                world.append_random(tl, gen, 30)
                if rng.random() < 0.5:
                    client.compact(tenant_id=world.tenant_id, timeline_id=tl, timeout=60)
            time.sleep(PITR_S + 0.3)  # all of it is now older than the window
            for tl in sorted(world.timelines):
                world.append_random(tl, gen, 3)
            for tl in sorted(world.timelines):
                world.wait_ingested(tl)
                before = client.get_timeline(tenant_id=world.tenant_id, timeline_id=tl).physical_size
                info = client.gc(tenant_id=world.tenant_id, timeline_id=tl, timeout=60)
                assert info.gc_cutoff_lsn > info.ancestor_lsn, info
                removed_any |= info.physical_size < before
            check_retained(world, rng)
        assert removed_any, "GC removed nothing: the test did not exercise layer removal"
        log = ps.log_text()
        if layers == "gc_images_only":
            assert "images=1" in log, "GC never wrote an image at the cutoff"

    # Remote storage alone (the disk is gone) serves every retained LSN.
    ps.kill()
    shutil.rmtree(ps.data_dir)
    fresh: Component = strata_env.pageserver(wal, *LAYERS[layers], "--remote-storage", url, "--gc-interval", "0", name="ps-new")
    with Client(pageserver=fresh.address, walservice=wal.address) as client:
        world.client = client
        client.attach_tenant(tenant_id=world.tenant_id, timeout=60)
        check_retained(world, rng)
