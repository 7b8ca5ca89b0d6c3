"""compute_shim.VectorCollection against real walservice and pageserver processes.

- exact search equals a NumPy brute force (l2, cosine, ip);
- upsert / get / delete round trips; one upsert is one Append;
- branches and time travel see their own vectors;
- bad input (wrong dim, NaN/inf, duplicate ids, unknown collection, k <= 0)
  raises a clear error and changes nothing.
Index builds and indexed search are in tests/gpu/test_build.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from compute_shim import Client, VectorCollection
from strata.errors import InvalidArgument, NotFound
from strata.vectors.kernels import prepare
from tests.env import StrataEnv


@dataclass
class Stack:
    client: Client
    tenant: str
    main: str


@pytest.fixture
def stack(strata_env: StrataEnv) -> Iterator[Stack]:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=8192).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        yield Stack(client, tenant, main)


def brute_force(rows: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every distance in float64, sorted."""
    x, qq = prepare(rows, metric).astype(np.float64), prepare(q, metric).astype(np.float64)
    if metric == "l2":
        d = ((qq[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    elif metric == "cosine":
        d = 1 - qq @ x.T
    else:
        d = -(qq @ x.T)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(d, order, 1)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_exact_search_equals_numpy_brute_force(stack: Stack, metric: str) -> None:
    rng = np.random.default_rng(1)
    col = VectorCollection(stack.client, stack.tenant, stack.main, f"docs-{metric}", dim=24, metric=metric)
    ids = rng.choice(1 << 60, size=700, replace=False).astype(np.uint64)
    rows = rng.normal(size=(700, 24)).astype(np.float32)
    col.upsert(ids[:400], rows[:400])
    col.upsert(ids[400:], rows[400:])
    q = rng.normal(size=(25, 24)).astype(np.float32)
    got_ids, got_d = col.search(q, k=10)
    want_ids, want_d = brute_force(rows, ids, q, 10, metric)
    assert got_ids.shape == (25, 10) and got_ids.dtype == np.uint64
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-4)
    # A fresh client (no mirror) reads the same from pages.
    again = VectorCollection(stack.client, stack.tenant, stack.main, f"docs-{metric}")
    np.testing.assert_array_equal(again.search(q, k=10)[0], want_ids)


def test_upsert_get_delete_and_time_travel(stack: Stack) -> None:
    rng = np.random.default_rng(2)
    col = VectorCollection(stack.client, stack.tenant, stack.main, "mem", dim=8)
    rows = rng.normal(size=(50, 8)).astype(np.float32)
    before = stack.client.status(tenant_id=stack.tenant, timeline_id=stack.main).commit_lsn
    lsn1 = col.upsert(np.arange(50), rows)
    # One upsert is one Append: the batch's records are contiguous, nothing else in between.
    assert stack.client.status(tenant_id=stack.tenant, timeline_id=stack.main).commit_lsn == lsn1 > before
    np.testing.assert_array_equal(col.get([3, 7]), rows[[3, 7]])
    new7 = np.full(8, 9.0, np.float32)
    lsn2 = col.upsert([7, 100], [new7, rows[0]])
    lsn3 = col.delete([3, 12345])
    assert lsn1 < lsn2 < lsn3
    assert col.count() == 50
    np.testing.assert_array_equal(col.get([7, 100]), [new7, rows[0]])
    with pytest.raises(NotFound, match=r"\[3\]"):
        col.get([3])
    # Time travel: every LSN shows its own state, through a fresh reader too.
    for reader in (col, VectorCollection(stack.client, stack.tenant, stack.main, "mem")):
        np.testing.assert_array_equal(reader.get([3, 7], lsn=lsn1), rows[[3, 7]])
        np.testing.assert_array_equal(reader.get([7], lsn=lsn2), [new7])
        assert reader.count(lsn=lsn1) == 50 and reader.count(lsn=lsn2) == 51 and reader.count(lsn=lsn3) == 50
        ids, d = reader.search(rows[3], k=1, lsn=lsn1)
        assert ids[0, 0] == 3 and d[0, 0] == 0
        assert reader.search(rows[3], k=1, lsn=lsn3)[0][0, 0] != 3
    # Deleted slots are reused; the reused row reads back.
    col.upsert([200], [rows[5]])
    assert col.count() == 51
    np.testing.assert_array_equal(col.get([200]), [rows[5]])


def test_branches_see_their_own_vectors(stack: Stack) -> None:
    c = stack.client
    col = VectorCollection(c, stack.tenant, stack.main, "mem", dim=4)
    base = np.eye(4, dtype=np.float32)
    lsn = col.upsert([1, 2, 3, 4], base)
    agent = c.create_timeline(tenant_id=stack.tenant, ancestor_timeline_id=stack.main, ancestor_lsn=lsn).timeline_id
    on_branch = VectorCollection(c, stack.tenant, agent, "mem")
    on_branch.upsert([5], [[2, 2, 2, 2]])
    on_branch.delete([1])
    col.upsert([6], [[-1, -1, -1, -1]])
    assert sorted(on_branch.search(np.zeros((1, 4)), k=10)[0][0].tolist()) == [2, 3, 4, 5]
    assert sorted(col.search(np.zeros((1, 4)), k=10)[0][0].tolist()) == [1, 2, 3, 4, 6]
    # A collection created on the branch is unknown on main.
    VectorCollection(c, stack.tenant, agent, "branch-only", dim=2).upsert([1], [[1, 1]])
    with pytest.raises(NotFound, match="branch-only"):
        VectorCollection(c, stack.tenant, stack.main, "branch-only")


def test_bad_input_raises_and_changes_nothing(stack: Stack) -> None:
    c = stack.client
    col = VectorCollection(c, stack.tenant, stack.main, "mem", dim=3, metric="cosine")
    col.upsert([1, 2], [[1, 0, 0], [0, 1, 0]])
    end = c.status(tenant_id=stack.tenant, timeline_id=stack.main).commit_lsn
    bad = [
        (lambda: col.upsert([3], [[1, 2]]), r"shape \(1, 2\).*dim is 3"),
        (lambda: col.upsert([3, 4], [[1, 2, np.nan], [1, 1, 1]]), "NaN or inf"),
        (lambda: col.upsert([3], [[1, np.inf, 0]]), "NaN or inf"),
        (lambda: col.upsert([3, 3], [[1, 1, 1], [1, 1, 1]]), r"repeats ids \[3\]"),
        (lambda: col.upsert([3], [[0, 0, 0]]), "all zeros"),
        (lambda: col.upsert([-1], [[1, 1, 1]]), "negative"),
        (lambda: col.upsert([3, 4], [[1, 1, 1]]), "one vector per id"),
        (lambda: col.delete([5, 5]), "repeats"),
        (lambda: col.search([[1, 1]]), "dim is 3"),
        (lambda: col.search([[1, 1, 1]], k=0), "k=0"),
        (lambda: col.search([[1, 1, 1]], nprobe=0), "nprobe=0"),
        (lambda: VectorCollection(c, stack.tenant, stack.main, "mem", dim=4, metric="cosine"), "exists with dim=3"),
        (lambda: VectorCollection(c, stack.tenant, stack.main, "x", dim=4, metric="hamming"), "metric"),
        (lambda: VectorCollection(c, stack.tenant, stack.main, "a/b", dim=4), "name"),
        (lambda: VectorCollection(c, stack.tenant, stack.main, "big", dim=4000), "does not fit"),
    ]
    for call, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            call()
    with pytest.raises(NotFound, match="'nope' does not exist"):
        VectorCollection(c, stack.tenant, stack.main, "nope")
    assert c.status(tenant_id=stack.tenant, timeline_id=stack.main).commit_lsn == end
    assert col.count() == 2
    np.testing.assert_array_equal(col.get([1, 2]), [[1, 0, 0], [0, 1, 0]])


def test_two_writers_and_other_records_interleave(stack: Stack) -> None:
    """Conditional appends: writers with stale mirrors and other records in
    between; nothing is lost or overwritten."""
    c = stack.client
    a = VectorCollection(c, stack.tenant, stack.main, "mem", dim=2)
    b = VectorCollection(c, stack.tenant, stack.main, "mem")
    from strata.v1 import records_pb2

    other = records_pb2.Record(image=records_pb2.PageImage(rel=7, blkno=0, page=bytes(8192)))
    for i in range(6):
        (a if i % 2 else b).upsert([i], [[i, i]])
        c.append(tenant_id=stack.tenant, timeline_id=stack.main, records=[other])  # someone else's page
    assert a.count() == b.count() == 6
    np.testing.assert_array_equal(b.get(np.arange(6)), np.repeat(np.arange(6, dtype=np.float32)[:, None], 2, 1))
    # A plan made at an end that has moved since is refused by the walservice, and writes nothing.
    end = a._end_lsn()
    assert a._append([other], end - 1) is None
    assert a._end_lsn() == end
    a.upsert([6], [[6, 6]])
    assert b.get([6]).tolist() == [[6, 6]] and b.count() == 7
