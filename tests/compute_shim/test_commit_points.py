"""Reads and branches land on commit points (pageserver/commit_log.py,
compute_shim/commits.py, ListCommits) against real processes."""

from __future__ import annotations

import grpc
import pytest

from compute_shim import NoCommitAtLsn, connect_sqlite, read_lsn_of
from strata.v1 import records_pb2
from tests.compute_shim.conftest import Stack


def images(rel: int, n: int, page_size: int = 4096, fill: int = 1) -> list[records_pb2.Record]:
    return [
        records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=b, page=bytes([fill]) * page_size)) for b in range(n)
    ]


def commits(stack: Stack, timeline: str, **fields: object) -> list[tuple[int, int, int, int]]:
    resp = stack.client.list_commits(tenant_id=stack.tenant, timeline_id=timeline, **fields)
    return [(c.end_lsn, c.start_lsn, c.records, c.bytes) for c in resp.commits]


def test_a_read_inside_a_big_transaction_opens_at_the_commit_before_it(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, blob BLOB); INSERT INTO t VALUES (1, zeroblob(10))")
    before = stack.end_lsn(main)
    # One transaction over many pages: its Append holds many records.
    db.execute("BEGIN; " + "".join(f"INSERT INTO t VALUES ({i}, randomblob(3000)); " for i in range(2, 400)) + "COMMIT")
    after = stack.end_lsn(main)
    big = [c for c in commits(stack, main, end_lsn=after) if c[0] == after]
    assert big and big[0][1] == before and big[0][2] > 100, big
    for inside in (before + 1, (before + after) // 2, after - 1):
        old = connect_sqlite(stack.client, stack.tenant, main, lsn=inside)
        assert read_lsn_of(old) == before
        assert old.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
        assert old.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    whole = connect_sqlite(stack.client, stack.tenant, main, lsn=after)
    assert read_lsn_of(whole) == after and whole.execute("SELECT count(*) FROM t").fetchall() == [(399,)]
    assert read_lsn_of(db) is None


def test_an_lsn_before_the_first_commit_is_refused_naming_it(stack: Stack) -> None:
    main = stack.new_timeline()
    first = stack.client.append(tenant_id=stack.tenant, timeline_id=main, records=images(1, 3))
    with pytest.raises(NoCommitAtLsn, match=f"the nearest commits: lsn={first.end_lsn}"):
        connect_sqlite(stack.client, stack.tenant, main, lsn=first.record_lsns[1])


def test_list_commits_pages_and_refuses_bad_input(stack: Stack) -> None:
    main = stack.new_timeline()
    sizes = [1, 4, 2, 7, 3]
    answers = [stack.client.append(tenant_id=stack.tenant, timeline_id=main, records=images(1, n)) for n in sizes]
    ends = [a.end_lsn for a in answers]
    everything = commits(stack, main, end_lsn=ends[-1])
    assert [c[0] for c in everything] == ends
    assert [c[1] for c in everything] == [0, *ends[:-1]]
    assert [c[2] for c in everything] == sizes
    assert all(c[3] > 4096 * n for c, n in zip(everything, sizes))
    # Oldest first, two at a time.
    pages, start = [], 0
    while page := commits(stack, main, start_lsn=start, limit=2):
        pages.append([c[0] for c in page])
        start = page[-1][0] + 1
    assert pages == [ends[0:2], ends[2:4], ends[4:]]
    assert [c[0] for c in commits(stack, main, newest_first=True, limit=2)] == [ends[4], ends[3]]
    assert [c[0] for c in commits(stack, main, end_lsn=ends[3] - 1, newest_first=True, limit=2)] == [ends[2], ends[1]]
    assert [c[0] for c in commits(stack, main, start_lsn=ends[1], end_lsn=ends[3])] == ends[1:4]
    for bad in ({"limit": 10_001}, {"start_lsn": ends[2], "end_lsn": ends[1]}):
        with pytest.raises(grpc.RpcError) as err:
            commits(stack, main, **bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.RpcError) as err:
        commits(stack, main[:-1] + ("0" if main[-1] != "0" else "1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_branch_point_inside_a_commit_is_rounded_down(stack: Stack) -> None:
    main = stack.new_timeline()
    first = stack.client.append(tenant_id=stack.tenant, timeline_id=main, records=images(1, 2, fill=1))
    big = stack.client.append(tenant_id=stack.tenant, timeline_id=main, records=images(1, 6, fill=2))
    inside = big.record_lsns[3]
    info = stack.client.create_timeline(tenant_id=stack.tenant, ancestor_timeline_id=main, ancestor_lsn=inside)
    assert info.ancestor_lsn == first.end_lsn
    branch = info.timeline_id
    page = stack.client.get_page(tenant_id=stack.tenant, timeline_id=branch, rel=1, blkno=0, lsn=0)
    assert page.page == bytes([1]) * 4096
    assert stack.client.get_rel_size(tenant_id=stack.tenant, timeline_id=branch, rel=1, lsn=0).nblocks == 2
    # A branch's own commits, and with include_ancestors its ancestor's up to the branch point.
    own = stack.client.append(tenant_id=stack.tenant, timeline_id=branch, records=images(2, 3))
    assert [c[0] for c in commits(stack, branch, end_lsn=own.end_lsn)] == [own.end_lsn]
    listed = stack.client.list_commits(tenant_id=stack.tenant, timeline_id=branch, end_lsn=own.end_lsn, include_ancestors=True)
    assert [(c.end_lsn, c.timeline_id) for c in listed.commits] == [(first.end_lsn, main), (own.end_lsn, branch)]
    assert stack.client.get_timeline(tenant_id=stack.tenant, timeline_id=branch).ancestor_lsn == first.end_lsn
    # At exactly a commit it is kept; 0 (the latest) is the last commit.
    exact = stack.client.create_timeline(tenant_id=stack.tenant, ancestor_timeline_id=main, ancestor_lsn=big.end_lsn)
    assert exact.ancestor_lsn == big.end_lsn
