"""GC and the PITR window (pageserver/gc.py), GetLsnByTimestamp, and timeline expiry.

The selection rules are checked on layer names alone; the rest on real
walservice and pageserver processes with `--remote-storage file://`:
- GC with a 1 s PITR window frees bytes (locally and remotely, after the new
  index is up), reports and persists gc_cutoff_lsn, keeps every page at and
  above the cutoff and at a child's branch point, and refuses reads and
  branches below it (FAILED_PRECONDITION naming the cutoff);
- GC deletes leaked (unindexed) layer objects and old vector index objects;
- GetLsnByTimestamp before, inside and after the history, across a restart;
- ttl_seconds: an expired timeline goes with its remote objects, after its
  children; DeleteTimeline never touches an ancestor's objects.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import grpc
import pytest

from compute_shim import Client
from compute_shim.client import PageError
from pageserver.gc import (
    covered,
    garbage,
    image_worth_writing,
    image_would_free,
    unindexed_layer_objects,
    vector_objects_to_delete,
)
from pageserver.index_part import IndexPart
from pageserver.keys import KEY_SPACE_END
from pageserver.layers.names import LayerName
from pageserver.remote_timeline import download_index
from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.url import open_remote_storage
from tests.env import Component, StrataEnv
from tests.strata.remote_storage.harness import MotoServer, aws_env, moto_server  # noqa: F401 - fixtures
from tests.pageserver.world import SMALL_LAYERS, World, image, new_id

PAGE = 512
PITR_S = 1


def delta(lo: int, hi: int, keys: tuple[int, int] = (0, KEY_SPACE_END)) -> LayerName:
    return LayerName("delta", keys[0], keys[1], lo, hi, 1)


def img(lsn: int, keys: tuple[int, int] = (0, KEY_SPACE_END), generation: int = 1) -> LayerName:
    return LayerName("image", keys[0], keys[1], lsn, lsn + 1, generation)


# -- the rules, on layer names --------------------------------------------------------


def test_covered() -> None:
    assert covered(0, 10, [(0, 4), (3, 10)])
    assert not covered(0, 10, [(0, 4), (5, 10)])
    assert not covered(0, 10, [])
    assert covered(2, 3, [(0, 100)])


def test_deltas_below_cutoff_need_an_image_to_go() -> None:
    d1, d2, d3 = delta(1, 100), delta(100, 200), delta(200, 300)
    # No image: a read at the cutoff walks every delta down to the start.
    assert garbage([d1, d2, d3], 250, []) == []
    # An image at 199 supersedes d1 and d2 (d2's last LSN is 199) but not d3.
    i = img(199)
    assert set(garbage([d1, d2, d3, i], 250, [])) == {d1, d2}
    # ... unless the image is above the cutoff: reads at the cutoff still walk them.
    assert garbage([d1, d2, d3, img(260)], 250, []) == []
    # An image of half the key space frees only what it covers.
    half = img(199, (0, 1 << 40))
    assert garbage([delta(1, 100, (0, 1 << 40)), delta(1, 100, (1 << 40, 1 << 41)), half], 250, []) == [
        delta(1, 100, (0, 1 << 40))
    ]
    # A layer straddling the cutoff is needed by reads in the window.
    assert garbage([delta(240, 260), img(239)], 250, []) == []


def test_branch_points_below_the_cutoff_keep_what_they_read() -> None:
    d1, d2 = delta(1, 100), delta(100, 200)
    i = img(199)
    # The child branched at 50 reads d1 (no image between 99 and 50).
    assert garbage([d1, d2, i], 250, [50]) == [d2]
    # The child at 150 reads d2 and below it d1.
    assert garbage([d1, d2, i], 250, [150]) == []
    # Branch points at or above the cutoff are inside the window anyway.
    assert set(garbage([d1, d2, i], 250, [260])) == {d1, d2}
    # An older image the branch point reads is kept; a newer one supersedes it for the cutoff only.
    old = img(120)
    assert set(garbage([d1, d2, old, i], 250, [150])) == {d1}
    assert set(garbage([d1, d2, old, i], 250, [])) == {d1, d2, old}


def test_images_at_one_lsn_do_not_remove_each_other() -> None:
    a, b = img(100, generation=1), img(100, generation=2)
    assert garbage([a, b], 200, []) == []


def test_image_would_free() -> None:
    d1, d2 = delta(1, 100), delta(100, 200)
    assert set(image_would_free([d1, d2], 250, [], 1)) == {d1, d2}
    assert image_would_free([d1, d2], 250, [150], 1) == []  # the branch point needs them all
    assert image_would_free([d1, d2, img(250)], 250, [], 1) == []  # already there


def test_image_worth_writing() -> None:
    assert not image_worth_writing(0, 0, 100, 3)
    assert image_worth_writing(3, 1, 1 << 30, 3)  # enough deltas
    assert image_worth_writing(1, 256, 1024, 3)  # enough bytes
    assert not image_worth_writing(2, 100, 1 << 30, 3)  # a big timeline, a little to free


def test_vector_objects_rule() -> None:
    prefix = "tenants/t/timelines/tl/vector_indexes/"
    keys = [prefix + f"{c}/{lsn:016X}.ivf" for c in ("a", "b") for lsn in (10, 20, 30, 40)] + [prefix + "a/notes.txt"]
    doomed = vector_objects_to_delete(prefix, keys, 35)
    # Below 35: 10, 20, 30 per collection; the newest of them (30) stays.
    assert doomed == sorted(prefix + f"{c}/{lsn:016X}.ivf" for c in ("a", "b") for lsn in (10, 20))
    assert vector_objects_to_delete(prefix, keys, 10) == []
    # A child branched at 25 reads (and warm-starts from) the index at 20; one at 5 has none to keep.
    kept_for_child = vector_objects_to_delete(prefix, keys, 35, [25, 5, 50])
    assert kept_for_child == sorted(prefix + f"{c}/{lsn:016X}.ivf" for c in ("a", "b") for lsn in (10,))
    assert vector_objects_to_delete(prefix, keys, 35, [10]) == sorted(prefix + f"{c}/{20:016X}.ivf" for c in ("a", "b"))


def test_unindexed_layer_objects() -> None:
    prefix = "tenants/t/timelines/tl/"
    mine, newer, kept = delta(1, 5), LayerName("delta", 0, KEY_SPACE_END, 1, 5, 9), delta(5, 9)
    keys = [prefix + n.file_name for n in (mine, newer, kept)] + [prefix + "index_part.json", prefix + "wal/x"]
    assert unindexed_layer_objects(prefix, keys, {kept.file_name}, generation=2) == [prefix + mine.file_name]


# -- on real processes -------------------------------------------------------------------


def start(env: StrataEnv, *extra: str) -> tuple[Component, Component, Path]:
    remote = env.root / "remote"
    wal = env.walservice()
    ps = env.pageserver(wal, *SMALL_LAYERS, "--remote-storage", f"file://{remote}", *extra)
    return wal, ps, remote


def remote_layer_bytes(remote: Path, tenant_id: str, timeline_id: str) -> int:
    d = remote / "tenants" / tenant_id / "timelines" / timeline_id
    return sum(p.stat().st_size for p in d.iterdir() if p.suffix in (".delta", ".image"))


def remote_index(remote: Path, tenant_id: str, timeline_id: str) -> IndexPart:
    return download_index(LocalFsStorage(remote), tenant_id, timeline_id)


def wait_until(what: str, cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def synced(client: Client, remote: Path, tenant_id: str, timeline_id: str) -> bool:
    """The remote index names exactly the local layers, and nothing else is there."""
    info = client.get_timeline(tenant_id=tenant_id, timeline_id=timeline_id)
    index = remote_index(remote, tenant_id, timeline_id)
    d = remote / "tenants" / tenant_id / "timelines" / timeline_id
    objects = {p.name for p in d.iterdir() if p.suffix in (".delta", ".image")}
    return (
        index.gc_cutoff_lsn == info.gc_cutoff_lsn
        and objects == {e.file_name for e in index.layers}
        and info.remote_consistent_lsn == info.disk_consistent_lsn
    )


def overwrite_history(world: World, timeline_id: str, rng: random.Random, batches: int) -> int:
    """Batches of page images over the same 4 blocks: lots of history, a small state."""
    lsn = 0
    for _ in range(batches):
        lsn = world.append(timeline_id, [image(1, b, rng.randrange(256), PAGE) for b in range(4)])
    return lsn


def expect_failed_precondition(call, cutoff: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value
    assert f"gc_cutoff_lsn={cutoff}" in info.value.details(), info.value.details()


def test_gc_frees_bytes_keeps_the_window_and_branch_points(strata_env: StrataEnv) -> None:
    rng = random.Random(4)
    wal, ps, remote = start(strata_env, "--gc-interval", "0")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World(client, client.create_tenant(page_size=PAGE, pitr_seconds=PITR_S).tenant_id, PAGE)
        assert client.list_tenants().tenants[0].pitr_seconds == PITR_S
        main = world.create_root()
        early = overwrite_history(world, main, rng, 20)
        child = world.branch(main, early)  # a branch point that will lie below the cutoff
        old = overwrite_history(world, main, rng, 60)
        client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        wait_until("uploads", lambda: synced(client, remote, world.tenant_id, main))
        before_remote = remote_layer_bytes(remote, world.tenant_id, main)
        before_local = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).physical_size
        time.sleep(PITR_S + 0.5)  # everything so far is older than the PITR window
        last = overwrite_history(world, main, rng, 2)
        world.wait_ingested(main)

        info = client.gc(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        cutoff = info.gc_cutoff_lsn
        assert old <= cutoff < last, (old, cutoff, last)
        assert info.physical_size < before_local / 2, (info.physical_size, before_local)
        wait_until("the index without the removed layers", lambda: synced(client, remote, world.tenant_id, main))
        after_remote = remote_layer_bytes(remote, world.tenant_id, main)
        assert after_remote < before_remote / 2, (after_remote, before_remote)
        assert remote_index(remote, world.tenant_id, main).gc_cutoff_lsn == cutoff
        log = ps.log_text()
        assert "event=gc_done" in log and "event=remote_layers_deleted" in log

        # Reads at and above the cutoff, and the child's branch point, are whole.
        for lsn in (cutoff, last, 0):
            world.check(main, lsn, rng)
        world.check(child, 0, rng)
        world.check(main, early, rng)  # the child's branch point: kept, and readable on main too
        # Below the cutoff: refused, naming it, on every read path and for a branch.
        expect_failed_precondition(
            lambda: client.get_page(tenant_id=world.tenant_id, timeline_id=main, rel=1, blkno=0, lsn=cutoff - 1), cutoff
        )
        expect_failed_precondition(
            lambda: client.get_rel_size(tenant_id=world.tenant_id, timeline_id=main, rel=1, lsn=early - 1), cutoff
        )
        # A branch below its branch point reads its ancestor: the ancestor's cutoff counts.
        expect_failed_precondition(
            lambda: client.get_page(tenant_id=world.tenant_id, timeline_id=child, rel=1, blkno=0, lsn=early - 1), cutoff
        )
        [got] = client.read_pages(tenant_id=world.tenant_id, timeline_id=main, keys=[(1, 0)], lsn=early - 1)
        assert isinstance(got, PageError) and got.code == grpc.StatusCode.FAILED_PRECONDITION, got
        expect_failed_precondition(
            lambda: client.create_timeline(
                tenant_id=world.tenant_id, timeline_id=new_id(), ancestor_timeline_id=main, ancestor_lsn=cutoff - 1
            ),
            cutoff,
        )
        # A second GC with nothing new to do keeps the cutoff and the pages.
        assert client.gc(tenant_id=world.tenant_id, timeline_id=main).gc_cutoff_lsn == cutoff

    # The cutoff survives a restart, and so do the pages at it.
    ps.stop()
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world.client = client
        assert client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).gc_cutoff_lsn == cutoff
        world.check(main, cutoff, rng)
        world.check(main, early, rng)
        world.check(child, 0, rng)


def layer_objects(storage: RemoteStorage, tenant_id: str, timeline_id: str) -> dict[str, int]:
    """The timeline's layer objects in remote storage: name -> bytes."""
    prefix = f"tenants/{tenant_id}/timelines/{timeline_id}/"
    return {
        o.key[len(prefix):]: o.size for o in storage.list(prefix)
        if "/" not in o.key[len(prefix):] and o.key.endswith((".delta", ".image"))
    }


def storage_synced(client: Client, storage: RemoteStorage, tenant_id: str, timeline_id: str) -> bool:
    info = client.get_timeline(tenant_id=tenant_id, timeline_id=timeline_id)
    index = download_index(storage, tenant_id, timeline_id)
    return (
        index.gc_cutoff_lsn == info.gc_cutoff_lsn
        and set(layer_objects(storage, tenant_id, timeline_id)) >= {e.file_name for e in index.layers}
        and info.remote_consistent_lsn == info.disk_consistent_lsn
    )


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_gc_frees_remote_bytes_and_deletes_leaked_layers_and_old_vector_indexes(
    strata_env: StrataEnv, request: pytest.FixtureRequest, backend: str
) -> None:
    """On file:// and on S3 (moto_server over HTTP): removed layers leave remote
    storage, leaked layer objects of our generation go, a newer generation's
    stay, and the vector index rule keeps the newest object below the cutoff."""
    rng = random.Random(5)
    if backend == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        env = request.getfixturevalue("aws_env")
        bucket = f"gc-{new_id()[:12]}"
        moto.create_bucket(bucket)
        env.setenv("AWS_ENDPOINT_URL", moto.endpoint)
        url = f"s3://{bucket}/strata"
    else:
        url = f"file://{strata_env.root / 'remote'}"
    storage = open_remote_storage(url)
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *SMALL_LAYERS, "--remote-storage", url, "--gc-interval", "0")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World(client, client.create_tenant(page_size=PAGE, pitr_seconds=PITR_S).tenant_id, PAGE)
        main = world.create_root()
        overwrite_history(world, main, rng, 30)
        world.wait_ingested(main)
        client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        wait_until("uploads", lambda: storage_synced(client, storage, world.tenant_id, main))
        before = sum(layer_objects(storage, world.tenant_id, main).values())
        prefix = f"tenants/{world.tenant_id}/timelines/{main}/"
        generation = download_index(storage, world.tenant_id, main).generation
        # What a crash between a layer upload and its index upload leaves behind.
        leaked = LayerName("delta", 0, KEY_SPACE_END, 1, 2, generation).file_name
        storage.upload_bytes(b"leaked layer bytes", prefix + leaked)
        # A newer generation's object is not ours to delete.
        foreign = LayerName("delta", 0, KEY_SPACE_END, 1, 2, generation + 1).file_name
        storage.upload_bytes(b"a newer attachment's layer", prefix + foreign)
        time.sleep(PITR_S + 0.5)
        overwrite_history(world, main, rng, 1)
        world.wait_ingested(main)
        above = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).last_record_lsn + 1000
        vec = prefix + "vector_indexes/"
        for collection in ("docs", "faq"):
            for lsn in (1, 2, 3, above):
                storage.upload_bytes(b"ivf", vec + f"{collection}/{lsn:016X}.ivf")

        cutoff = client.gc(tenant_id=world.tenant_id, timeline_id=main, timeout=60).gc_cutoff_lsn
        assert 3 < cutoff < above
        assert not storage.exists(prefix + leaked)
        assert storage.exists(prefix + foreign)
        left = sorted(o.key for o in storage.list(vec))
        # Per collection: the newest below the cutoff (3) and the one above it.
        assert left == sorted(vec + f"{c}/{lsn:016X}.ivf" for c in ("docs", "faq") for lsn in (3, above))
        storage.delete([prefix + foreign])
        wait_until("the index without the removed layers", lambda: storage_synced(client, storage, world.tenant_id, main))
        wait_until(
            "removed layers to leave remote storage",
            lambda: set(layer_objects(storage, world.tenant_id, main)) == {
                e.file_name for e in download_index(storage, world.tenant_id, main).layers
            },
        )
        after = sum(layer_objects(storage, world.tenant_id, main).values())
        assert after < before / 2, (after, before)
        log = ps.log_text()
        assert "event=remote_leaked_layer_deleted" in log and "event=vector_indexes_deleted" in log
        world.check(main, 0, rng)
        world.check(main, cutoff, rng)


def test_lsn_by_timestamp_survives_restart(strata_env: StrataEnv) -> None:
    wal, ps, remote = start(strata_env, "--gc-interval", "0")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World(client, client.create_tenant(page_size=PAGE).tenant_id, PAGE)
        main = world.create_root()
        # (time before the append, its LSN, time after it): the commit time lies between.
        marks = []
        for i in range(3):
            before = time.time_ns() // 1000
            lsn = world.append(main, [image(1, 0, i, PAGE)])
            marks.append((before, lsn, time.time_ns() // 1000))
            time.sleep(0.05)
        world.wait_ingested(main)

    def check(client: Client) -> None:
        def ask(ts: int) -> tuple[int, str]:
            resp = client.get_lsn_by_timestamp(tenant_id=world.tenant_id, timeline_id=main, timestamp_us=ts)
            return resp.lsn, resp.kind

        assert ask(marks[0][0] - 10_000_000) == (0, "past")
        for i, (_, lsn, after) in enumerate(marks[:-1]):
            assert ask(after) == (lsn, "present"), i
            assert ask(marks[i + 1][0] - 1) == (lsn, "present"), i
        assert ask(marks[-1][2] + 10_000_000) == (marks[-1][1], "future")
        # Restoring to a time is one branch: it reads what the timeline held then.
        lsn, _ = ask(marks[1][2])
        branch = world.branch(main, lsn)
        world.check(branch, 0)
        # A branch without commits of its own answers from its ancestor, up to its branch point.
        on_branch = client.get_lsn_by_timestamp(tenant_id=world.tenant_id, timeline_id=branch, timestamp_us=marks[0][2])
        assert (on_branch.lsn, on_branch.kind) == (marks[0][1], "present")
        on_branch = client.get_lsn_by_timestamp(tenant_id=world.tenant_id, timeline_id=branch, timestamp_us=marks[2][2])
        assert (on_branch.lsn, on_branch.kind) == (lsn, "future")

    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world.client = client
        check(client)
    ps.stop()  # flushes: the commit times go into index_part.json with the layers
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world.client = client
        check(client)


def test_ttl_expiry_deletes_children_first_and_remote_objects(strata_env: StrataEnv) -> None:
    rng = random.Random(6)
    wal, ps, remote = start(strata_env, "--gc-interval", "0", "--ttl-check-interval", "0.2")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=PAGE).tenant_id
        world = World(client, tenant, PAGE)
        main = world.create_root()
        overwrite_history(world, main, rng, 10)
        world.wait_ingested(main)
        parent_id, child_id, grandchild_id = new_id(), new_id(), new_id()
        t0 = time.time_ns() // 1000
        parent = client.create_timeline(tenant_id=tenant, timeline_id=parent_id, ancestor_timeline_id=main, ttl_seconds=1)
        assert t0 + 1_000_000 <= parent.expires_at_us <= time.time_ns() // 1000 + 1_000_000
        child = client.create_timeline(tenant_id=tenant, timeline_id=child_id, ancestor_timeline_id=parent_id, ttl_seconds=3)
        assert child.expires_at_us > parent.expires_at_us
        # The main timeline never expires; a child of it without a ttl neither.
        assert client.get_timeline(tenant_id=tenant, timeline_id=main).expires_at_us == 0
        client.create_timeline(tenant_id=tenant, timeline_id=grandchild_id, ancestor_timeline_id=main)
        for tl in (parent_id, child_id):
            client.append(tenant_id=tenant, timeline_id=tl, records=[image(2, b, 7, PAGE) for b in range(8)])
            client.compact(tenant_id=tenant, timeline_id=tl, timeout=60)
            wait_until("uploads", lambda tl=tl: synced(client, remote, tenant, tl))
        timelines_dir = remote / "tenants" / tenant / "timelines"
        # A timeline with children is refused by DeleteTimeline.
        with pytest.raises(grpc.RpcError) as info:
            client.delete_timeline(tenant_id=tenant, timeline_id=parent_id)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # The parent expires first but waits for its child; then both go.
        wait_until("the parent's expiry to be deferred", lambda: "event=timeline_expiry_deferred" in ps.log_text(), 10)
        assert {t.timeline_id for t in client.list_timelines(tenant_id=tenant).timelines} >= {parent_id, child_id}

        def gone() -> bool:
            return {t.timeline_id for t in client.list_timelines(tenant_id=tenant).timelines} == {main, grandchild_id}

        wait_until("both expired timelines to be deleted", gone, 20)
        for tl in (parent_id, child_id):
            # Gone from the listing at once; the deletion finishes with its mark, last.
            wait_until(
                "the deletion to finish", lambda tl=tl: not [p for p in (timelines_dir / tl).rglob("*") if p.is_file()], 20
            )
            # The local directory goes after the remote objects, in an executor: wait for it too.
            local = ps.data_dir / "tenants" / tenant / "timelines" / tl
            wait_until("the local directory to be removed", lambda local=local: not local.exists(), 20)
            # The walservice's WAL went too.
            with pytest.raises(grpc.RpcError) as info:
                client.status(tenant_id=tenant, timeline_id=tl)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert not (wal.data_dir / "timelines" / tenant / tl).exists()
        expired = [line for line in ps.log_text().splitlines() if "event=timeline_expired" in line]
        order = [tl for line in expired for tl in (parent_id, child_id) if f"timeline={tl}" in line]
        assert order == [child_id, parent_id], expired
        # The ancestor's objects are untouched: every layer main's index names is still there.
        main_layers = {e.file_name for e in remote_index(remote, tenant, main).layers}
        assert main_layers and main_layers <= set(layer_objects(LocalFsStorage(remote), tenant, main))
        world.check(main, 0, rng)


def test_background_gc_uses_the_server_default_window(strata_env: StrataEnv) -> None:
    """A tenant created with pitr_seconds 0 gets --pitr-seconds; the --gc-interval
    loop raises its cutoff without any Gc call."""
    rng = random.Random(7)
    wal, ps, remote = start(strata_env, "--gc-interval", "0.3", "--pitr-seconds", str(PITR_S))
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=PAGE, pitr_seconds=0)
        assert tenant.pitr_seconds == PITR_S
        world = World(client, tenant.tenant_id, PAGE)
        main = world.create_root()
        old = overwrite_history(world, main, rng, 30)
        world.wait_ingested(main)
        client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)  # in layer files: GC may cut there
        wait_until(
            "the background GC to pass the old history",
            lambda: client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).gc_cutoff_lsn >= old,
        )
        world.check(main, 0, rng)
        assert "event=gc_done" in ps.log_text()


def test_kill9_right_after_gc_then_attach_on_an_empty_disk(strata_env: StrataEnv) -> None:
    """Gc answers once the local index changed; the remote index and the remote
    deletions follow. Killed at once and attached from remote storage alone,
    whichever index made it up is whole: every LSN at or above its cutoff reads
    as the model, and the commit times came along (GetLsnByTimestamp)."""
    rng = random.Random(8)
    wal, ps, remote = start(strata_env, "--gc-interval", "0")
    url = f"file://{remote}"
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World(client, client.create_tenant(page_size=PAGE, pitr_seconds=PITR_S).tenant_id, PAGE)
        main = world.create_root()
        early = overwrite_history(world, main, rng, 20)
        child = world.branch(main, early)
        overwrite_history(world, main, rng, 40)
        world.wait_ingested(main)
        client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        wait_until("uploads", lambda: synced(client, remote, world.tenant_id, main))
        time.sleep(PITR_S + 0.5)
        last = overwrite_history(world, main, rng, 2)
        world.wait_ingested(main)
        stamp = time.time_ns() // 1000
        answer = client.get_lsn_by_timestamp(tenant_id=world.tenant_id, timeline_id=main, timestamp_us=stamp)
        assert (answer.lsn, answer.kind) == (last, "future")
        cutoff = client.gc(tenant_id=world.tenant_id, timeline_id=main, timeout=60).gc_cutoff_lsn
        assert cutoff > early
    ps.kill()
    shutil.rmtree(ps.data_dir)
    fresh = strata_env.pageserver(wal, *SMALL_LAYERS, "--remote-storage", url, "--gc-interval", "0", name="ps-new")
    with Client(pageserver=fresh.address, walservice=wal.address) as client:
        world.client = client
        client.attach_tenant(tenant_id=world.tenant_id, timeout=60)
        remote_cutoff = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).gc_cutoff_lsn
        assert remote_cutoff in (0, cutoff)  # the old index, or the one Gc wrote
        for lsn in [l for l in world.read_lsns(main) if l >= remote_cutoff][::7] + [early, last]:
            world.check(main, lsn, rng)
        world.check(child, 0, rng)
        answer = client.get_lsn_by_timestamp(tenant_id=world.tenant_id, timeline_id=main, timestamp_us=stamp)
        assert (answer.lsn, answer.kind) == (last, "future")


def test_reads_at_the_latest_lsn_never_fail_while_gc_and_eviction_run(strata_env: StrataEnv) -> None:
    """Background GC every 0.2 s with a 1 s window, a local cache too small to
    hold the layers (reads download them), writes and compactions going on:
    every read at the latest LSN succeeds and equals the model at the LSN it
    says it read (a layer GC or compaction removed while a read waited for its
    download is not an error: the read walks the new layer map)."""
    import threading

    rng = random.Random(9)
    wal, ps, remote = start(strata_env, "--gc-interval", "0.2", "--local-cache-bytes", "1", "--page-cache-bytes", "0")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World(client, client.create_tenant(page_size=PAGE, pitr_seconds=PITR_S).tenant_id, PAGE)
        main = world.create_root()
        overwrite_history(world, main, rng, 10)
        world.wait_ingested(main)
        seen: list[tuple[int, int, bytes]] = []
        errors: list[str] = []
        stop = threading.Event()

        def reader() -> None:
            with Client(pageserver=ps.address, walservice=wal.address) as rc:
                r = random.Random(10)
                while not stop.is_set():
                    blkno = r.randrange(4)
                    try:
                        resp = rc.get_page(tenant_id=world.tenant_id, timeline_id=main, rel=1, blkno=blkno, timeout=30)
                        seen.append((resp.lsn, blkno, resp.page))
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code().name}: {exc.details()}")

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                overwrite_history(world, main, rng, 5)
                world.wait_ingested(main)
                client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        finally:
            stop.set()
            thread.join()
        assert not errors, errors[:5]
        assert len(seen) > 20
        model = world.timelines[main]
        for lsn, blkno, page in random.Random(11).sample(seen, min(200, len(seen))):
            assert page == bytes(model.state(lsn)[1].pages[blkno]), (lsn, blkno)
        log = ps.log_text()
        assert "event=layer_downloaded" in log
        assert any("event=gc_done" in l and "removed_layers=0" not in l for l in log.splitlines())
