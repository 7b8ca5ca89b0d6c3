"""gpu.build_index / build_indexes from layer snapshots, and indexed search.

Real walservice and pageserver processes with file:// remote storage and tiny
layers (so snapshots read L0, L1 and image layers). On NumPy (device="cpu").
- recall@10 of indexed search vs exact >= 0.95 at the default nprobe, on
  clustered data;
- freshness: a row upserted after the index LSN is found, a deleted one never
  is, a rewritten one is found at its new place;
- branches: one batched build for two branches; a branch index warm-started
  from its ancestor's centroids assigns only the changed rows;
- warm start keeps the default nlist and counts deleted rows as changed;
- GC of a parent keeps the index its child's branch point uses, and a branch
  builds after the parent's cutoff passed its branch point;
- short results are padded with NO_ID, an id upsert refuses;
- the index object's checksum catches a flipped bit;
- `strata vectors build` end to end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from compute_shim import Client, VectorCollection
from gpu import IndexSpec, IvfIndex, build_index, build_indexes
from gpu.build import default_nlist
from gpu.synthetic import clustered, recall_at_k
from strata.errors import CorruptionError, FailedPrecondition, InvalidArgument
from strata.remote_storage.local_fs import LocalFsStorage
from strata.vectors.ivf_index import find_index_key, list_index_lsns
from strata.vectors.kernels import NO_ID
from tests.env import StrataEnv
from tests.pageserver.test_kill9 import TINY_LAYERS

DIM = 32


@dataclass
class Stack:
    client: Client
    tenant: str
    main: str
    url: str
    storage: LocalFsStorage
    ps_address: str
    wal_address: str


def start_stack(strata_env: StrataEnv, tmp_path: Path, *pageserver_args: str, pitr_seconds: int = 0) -> Iterator[Stack]:
    url = f"file://{tmp_path / 'remote'}"
    wal = strata_env.walservice("--remote-storage", url)
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url, *pageserver_args)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=8192, pitr_seconds=pitr_seconds).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        yield Stack(client, tenant, main, url, LocalFsStorage(tmp_path / "remote"), ps.address, wal.address)


@pytest.fixture
def stack(strata_env: StrataEnv, tmp_path: Path) -> Iterator[Stack]:
    yield from start_stack(strata_env, tmp_path)


@pytest.fixture
def gc_stack(strata_env: StrataEnv, tmp_path: Path) -> Iterator[Stack]:
    """A 1 s PITR window and GC only when asked (Gc)."""
    yield from start_stack(strata_env, tmp_path, "--gc-interval", "0", pitr_seconds=1)


def fill(col: VectorCollection, rows: np.ndarray, first_id: int = 0, per_call: int = 1000) -> int:
    lsn = 0
    for lo in range(0, len(rows), per_call):
        lsn = col.upsert(np.arange(first_id + lo, first_id + min(lo + per_call, len(rows))), rows[lo : lo + per_call])
    return lsn


def test_indexed_search_recall_and_freshness(stack: Stack) -> None:
    rows = clustered(4000, DIM, clusters=40, seed=7)
    queries = clustered(200, DIM, clusters=40, seed=7)[:100] + np.float32(0.05)
    # No remote_storage= anywhere: both sides use the pageserver's (TenantInfo.remote_storage).
    assert stack.client.list_tenants().tenants[0].remote_storage == stack.url
    col = VectorCollection(stack.client, stack.tenant, stack.main, "mem", dim=DIM)
    lsn = fill(col, rows)
    exact_ids, _ = col.search(queries, k=10)  # no index yet: exact
    progress: list[str] = []
    result = build_index(stack.client, stack.tenant, stack.main, "mem", device="cpu",
                         progress=lambda event, fields: progress.append(event))
    assert result.lsn == lsn and result.rows == 4000 and result.key.endswith(f"vector_indexes/mem/{lsn:016X}.ivf")
    assert progress[0] == "index_snapshot_read" and "kmeans_iteration" in progress and progress[-1] == "index_built"
    assert result.max_list < 4 * result.mean_list, "lists are badly unbalanced"
    ivf_ids, ivf_d = col.search(queries, k=10)
    recall = recall_at_k(ivf_ids, exact_ids, 10)
    assert recall >= 0.95, f"recall@10 {recall:.3f} at the default nprobe"
    assert recall_at_k(col.search(queries, k=10, nprobe=1)[0], exact_ids) < recall  # the index is really used
    assert np.all(np.diff(ivf_d, axis=1) >= 0)

    # Freshness after the index LSN: new rows found, deleted never, rewritten at the new place.
    far = np.full((1, DIM), 40.0, np.float32)
    col.upsert([10_000], far)
    col.delete([0, 1])
    col.upsert([2], far + 1)
    got, d = col.search(np.vstack([far, rows[0:3], far + 1]), k=10)
    assert got[0, 0] == 10_000 and d[0, 0] == 0
    assert got[4, 0] == 2 and d[4, 0] == 0  # rewritten: found at its new place
    assert not np.isin(got, [0, 1]).any()  # deleted: never found, though the index holds them
    assert 2 not in got[1:4].tolist() or d[1:4][got[1:4] == 2].min() > 1000  # not at its old place
    # A read at the index LSN itself still sees the old rows, through the index.
    old, _ = col.search(rows[0:2], k=1, lsn=lsn)
    assert old[:, 0].tolist() == [0, 1]


def test_index_object_checksum_catches_a_flipped_bit(stack: Stack) -> None:
    col = VectorCollection(stack.client, stack.tenant, stack.main, "mem", dim=DIM, remote_storage=stack.url)
    fill(col, clustered(500, DIM, clusters=5, seed=1))
    key = build_index(stack.client, stack.tenant, stack.main, "mem", nlist=8, device="cpu", remote_storage=stack.url).key
    data = bytearray(stack.storage.download_bytes(key))
    assert IvfIndex.decode(bytes(data), key).nlist == 8
    for pos in (0, 5, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        with pytest.raises(CorruptionError, match="checksum"):
            IvfIndex.decode(bytes(flipped), key)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x01
    stack.storage.upload_bytes(bytes(flipped), key, overwrite=True)
    with pytest.raises(CorruptionError, match="checksum"):
        VectorCollection(stack.client, stack.tenant, stack.main, "mem", remote_storage=stack.url).search(np.zeros((1, DIM)))


def test_batched_build_for_branches_with_warm_start(stack: Stack) -> None:
    c = stack.client
    rows = clustered(3000, DIM, clusters=30, seed=3)
    main = VectorCollection(c, stack.tenant, stack.main, "mem", dim=DIM, remote_storage=stack.url)
    base_lsn = fill(main, rows)
    base = build_index(c, stack.tenant, stack.main, "mem", nlist=32, device="cpu", remote_storage=stack.url)
    branches = [c.create_timeline(tenant_id=stack.tenant, ancestor_timeline_id=stack.main, ancestor_lsn=base_lsn).timeline_id for _ in range(3)]
    extra = clustered(200, DIM, clusters=30, seed=4)
    cols = [VectorCollection(c, stack.tenant, b, "mem", remote_storage=stack.url) for b in branches]
    cols[0].upsert(np.arange(5000, 5100), extra[:100])          # 100 new rows: warm start
    cols[0].delete(np.arange(0, 10))
    cols[1].upsert(np.arange(0, 3000, 2), clustered(1500, DIM, clusters=30, seed=5) + 1)  # half rewritten: retrain
    cols[2].upsert(np.arange(1, 3000, 2), clustered(1500, DIM, clusters=30, seed=6) - 1)  # also retrained, batched with [1]
    # Before any branch index, a branch finds its ancestor's index (at or below the branch point).
    assert find_index_key(c, stack.storage, stack.tenant, branches[0], "mem", 10**12) == base.key
    batches: list[int] = []
    results = build_indexes(c, [IndexSpec(stack.tenant, b, "mem", nlist=32) for b in branches], device="cpu", remote_storage=stack.url,
                            progress=lambda event, fields: batches.append(fields["collections"]) if event == "kmeans_iteration" else None)
    assert results[0].warm_started_from == base.key and results[0].assigned == 100
    assert [r.warm_started_from for r in results[1:]] == [None, None] and [r.assigned for r in results[1:]] == [3000, 3000]
    assert set(batches) == {2}, "branches 1 and 2 train in one batched pass"
    assert [r.rows for r in results] == [3090, 3000, 3000]
    for col, r in zip(cols, results):
        assert list_index_lsns(stack.storage, stack.tenant, col.timeline_id, "mem") == [r.lsn]
        q = col.get(np.arange(20, 40))
        exact = col.search(q, k=10, nprobe=32)[0]  # nprobe = nlist: every list
        assert recall_at_k(col.search(q, k=10)[0], exact) >= 0.95
        assert col.search(q[:1], k=1)[0][0, 0] == 20
    # The warm-started index equals what a full assignment with those centroids gives.
    idx = IvfIndex.decode(stack.storage.download_bytes(results[0].key), "branch index")
    d = ((idx.rows[:, None, :] - idx.centroids[None]) ** 2).sum(axis=2)
    agree = (d.argmin(axis=1) == idx.labels()).mean()
    assert agree > 0.999, f"only {agree:.4f} of rows sit in their nearest list"
    assert 5050 in cols[0].search(extra[50:51], k=1)[0][0].tolist()
    assert not np.isin(cols[0].search(rows[:10], k=10)[0], np.arange(10)).any()


def test_strata_vectors_build_cli(stack: Stack) -> None:
    col = VectorCollection(stack.client, stack.tenant, stack.main, "notes", dim=8, metric="ip")
    col.upsert(np.arange(300), clustered(300, 8, clusters=4, seed=2))
    argv = [sys.executable, "-m", "strata", "vectors", "build", stack.tenant, stack.main, "notes", "--nlist", "4",
            "--device", "cpu", "--pageserver", stack.ps_address, "--walservice", stack.wal_address]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "built tenants/" in done.stdout and "rows=300 nlist=4" in done.stdout
    assert "event=index_built" in done.stderr and "event=kmeans_iteration" in done.stderr
    # The ip index answers like exact search when every list is probed.
    q = clustered(20, 8, clusters=4, seed=9)
    indexed = VectorCollection(stack.client, stack.tenant, stack.main, "notes", remote_storage=stack.url)
    np.testing.assert_array_equal(indexed.search(q, k=5, nprobe=4)[0], col.search(q, k=5)[0])
    missing = subprocess.run(argv[:7] + ["nope"] + argv[8:], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "'nope' does not exist" in missing.stderr


def test_indexed_search_after_gc_moved_the_cutoff_past_the_index(gc_stack: Stack) -> None:
    """GC keeps the newest index below its cutoff, and search with it never reads
    at the index LSN: after the cutoff passes S (reads at S are refused), indexed
    search is still fresh, and GC removed the older index no LSN can use."""
    import grpc

    client, tenant, main, url, storage = gc_stack.client, gc_stack.tenant, gc_stack.main, gc_stack.url, gc_stack.storage
    rows = clustered(2000, DIM, clusters=20, seed=3)
    col = VectorCollection(client, tenant, main, "mem", dim=DIM, remote_storage=url)
    fill(col, rows)
    older = build_index(client, tenant, main, "mem", device="cpu", remote_storage=url)
    col.upsert([5000], np.full((1, DIM), 30.0, np.float32))
    index = build_index(client, tenant, main, "mem", device="cpu", remote_storage=url)
    assert older.lsn < index.lsn
    col.upsert([5001], np.full((1, DIM), 50.0, np.float32))
    col.delete([7])
    time.sleep(1.5)  # the commits so far fall out of the 1 s PITR window
    last = col.upsert([5002], np.full((1, DIM), 70.0, np.float32))
    cutoff = client.gc(tenant_id=tenant, timeline_id=main).gc_cutoff_lsn
    assert index.lsn < cutoff < last
    with pytest.raises(grpc.RpcError) as refused:
        client.get_page(tenant_id=tenant, timeline_id=main, rel=1, blkno=0, lsn=index.lsn)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert list_index_lsns(storage, tenant, main, "mem") == [index.lsn]  # the older one is gone

    fresh = VectorCollection(client, tenant, main, "mem", remote_storage=url)
    probes = np.vstack([np.full((1, DIM), v, np.float32) for v in (30.0, 50.0, 70.0)] + [rows[7:8], rows[100:101]])
    got, dist = fresh.search(probes, k=3)
    assert got[:3, 0].tolist() == [5000, 5001, 5002] and np.allclose(dist[:3, 0], 0)
    assert 7 not in got[3].tolist()  # deleted after the index: never found
    assert got[4, 0] == 100 and dist[4, 0] == 0  # an indexed row, through the index


def test_warm_start_keeps_the_default_nlist_and_counts_deletions(stack: Stack) -> None:
    c = stack.client
    col = VectorCollection(c, stack.tenant, stack.main, "mem", dim=DIM, remote_storage=stack.url)
    fill(col, clustered(3000, DIM, clusters=30, seed=3))
    base = build_index(c, stack.tenant, stack.main, "mem", device="cpu", remote_storage=stack.url)
    assert base.nlist == default_nlist(3000) and base.warm_started_from is None
    col.upsert(np.arange(5000, 5100), clustered(100, DIM, clusters=30, seed=4))
    assert default_nlist(3100) != base.nlist  # the default drifts with the row count
    grown = build_index(c, stack.tenant, stack.main, "mem", device="cpu", remote_storage=stack.url)
    assert grown.warm_started_from == base.key and grown.nlist == base.nlist and grown.assigned == 100
    # 700 of 3100 rows deleted: nothing new to assign, but over 20% of the lists' rows are gone.
    col.delete(np.arange(0, 700))
    shrunk = build_index(c, stack.tenant, stack.main, "mem", device="cpu", remote_storage=stack.url)
    assert shrunk.warm_started_from is None and shrunk.assigned == shrunk.rows == 2400


def test_branch_index_after_the_parent_gc_passed_the_branch_point(gc_stack: Stack) -> None:
    """GC of the parent keeps the parent's index a branch point still uses, and a
    build on the branch reads the parent at the branch point even though the
    parent's cutoff has passed it."""
    client, tenant, main, url, storage = gc_stack.client, gc_stack.tenant, gc_stack.main, gc_stack.url, gc_stack.storage
    col = VectorCollection(client, tenant, main, "mem", dim=DIM, remote_storage=url)
    rows = clustered(2000, DIM, clusters=20, seed=3)
    fill(col, rows)
    first = build_index(client, tenant, main, "mem", nlist=16, device="cpu", remote_storage=url)
    point = col.upsert([5000], np.full((1, DIM), 30.0, np.float32))
    branch = client.create_timeline(tenant_id=tenant, ancestor_timeline_id=main, ancestor_lsn=point).timeline_id
    col.upsert([5001], np.full((1, DIM), 50.0, np.float32))
    second = build_index(client, tenant, main, "mem", nlist=16, device="cpu", remote_storage=url)
    col.delete([5001])  # the cutoff lands here, above `second`
    time.sleep(1.5)  # everything so far falls out of the 1 s PITR window
    col.upsert([5002], np.full((1, DIM), 70.0, np.float32))
    cutoff = client.gc(tenant_id=tenant, timeline_id=main).gc_cutoff_lsn
    assert first.lsn < point < second.lsn < cutoff
    # `first` is neither the newest below the cutoff nor above it, but the branch point uses it.
    assert list_index_lsns(storage, tenant, main, "mem") == [first.lsn, second.lsn]
    mine = VectorCollection(client, tenant, branch, "mem", remote_storage=url)
    assert find_index_key(client, storage, tenant, branch, "mem", 10**12) == first.key
    got, _ = mine.search(np.vstack([np.full((1, DIM), 30.0, np.float32), rows[5:6]]), k=1)
    assert got[:, 0].tolist() == [5000, 5]
    mine.upsert([6000], np.full((1, DIM), -30.0, np.float32))
    built = build_index(client, tenant, branch, "mem", nlist=16, device="cpu", remote_storage=url)
    assert built.rows == 2002 and built.warm_started_from == first.key and built.assigned == 2
    assert mine.search(np.full((1, DIM), -30.0, np.float32), k=1)[0][0, 0] == 6000


def test_search_pads_with_no_id_and_upsert_refuses_it(stack: Stack) -> None:
    col = VectorCollection(stack.client, stack.tenant, stack.main, "mem", dim=DIM, remote_storage=stack.url)
    fill(col, clustered(500, DIM, clusters=5, seed=1))
    build_index(stack.client, stack.tenant, stack.main, "mem", nlist=8, device="cpu", remote_storage=stack.url)
    ids, d = col.search(clustered(4, DIM, clusters=5, seed=2), k=300, nprobe=1)  # one list holds < 300 rows
    missing = ~np.isfinite(d)
    assert missing.any() and (ids[missing] == NO_ID).all() and (ids[~missing] != NO_ID).all()
    with pytest.raises(InvalidArgument, match="reserved"):
        col.upsert(np.array([1, NO_ID], np.uint64), np.zeros((2, DIM), np.float32))
    assert col.count() == 500


def test_without_remote_storage_builds_are_refused_and_search_is_exact(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=8192).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        col = VectorCollection(client, tenant, main, "mem", dim=DIM)
        rows = clustered(300, DIM, clusters=3, seed=1)
        col.upsert(np.arange(300), rows)
        assert col.remote_storage is None
        with pytest.raises(FailedPrecondition, match="without --remote-storage"):
            build_index(client, tenant, main, "mem", device="cpu")
        assert col.search(rows[7:8], k=1)[0][0, 0] == 7
