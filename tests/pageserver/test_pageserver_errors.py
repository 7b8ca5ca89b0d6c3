"""The pageserver's error codes (DESIGN.md, "Services"): each failure has the
contract's status code and a message that names what was wrong.

One walservice + pageserver serve the whole module (the tests use their own
tenants); reads at an LSN not yet ingested wait, so no test sleeps.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from compute_shim import Client
from compute_shim.client import PageError
from strata.v1 import page_pb2, records_pb2
from tests.env import Component, StrataEnv
from tests.pageserver.world import image, new_id

PAGE_SIZE = 512
UNKNOWN = "0" * 31 + "1"


@dataclass
class Cluster:
    wal: Component
    ps: Component
    client: Client


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = StrataEnv(tmp_path_factory.mktemp("errors"))
    try:
        wal = env.walservice()
        # Small layers, so that the branch test has an ancestor made of many files.
        ps = env.pageserver(wal, "--checkpoint-bytes", "2048", "--compaction-threshold", "3", "--image-threshold", "2")
        with Client(pageserver=ps.address, walservice=wal.address) as client:
            yield Cluster(wal, ps, client)
    finally:
        env.teardown()
    bad = env.error_lines([])
    assert not bad, "unexpected error lines in component logs:\n" + "\n".join(bad)


@dataclass
class Db:
    """A tenant with one timeline holding rel 1 (3 blocks) and nothing else."""

    tenant_id: str
    timeline_id: str
    lsn: int  # the last record's LSN
    page: bytes  # rel 1 block 2


@pytest.fixture
def db(cluster: Cluster) -> Db:
    c = cluster.client
    tenant_id = c.create_tenant(page_size=PAGE_SIZE).tenant_id
    timeline_id = c.create_timeline(tenant_id=tenant_id, timeline_id=new_id()).timeline_id
    page = bytes(range(256)) * (PAGE_SIZE // 256)
    resp = c.append(
        tenant_id=tenant_id,
        timeline_id=timeline_id,
        records=[records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=2, page=page))],
    )
    return Db(tenant_id, timeline_id, resp.end_lsn, page)


def expect_error(code: grpc.StatusCode, call: Callable[[], object], *words: str) -> str:
    """`call` fails with `code` and a message containing every one of `words`."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    exc = info.value
    assert exc.code() == code, f"expected {code.name}, got {exc.code().name}: {exc.details()}"
    for word in words:
        assert word in exc.details(), f"{code.name} message does not name {word!r}: {exc.details()}"
    return exc.details()


# -- malformed and unknown names ----------------------------------------------------


@pytest.mark.parametrize("bad", ["", "xyz", "0" * 31, "0" * 33, "A" * 32, "g" * 32])
def test_malformed_tenant_id_is_invalid_argument(cluster: Cluster, db: Db, bad: str) -> None:
    c = cluster.client
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.get_page(tenant_id=bad, timeline_id=db.timeline_id, rel=1, blkno=0), "tenant_id")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.get_rel_size(tenant_id=bad, timeline_id=db.timeline_id, rel=1), "tenant_id")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.get_timeline(tenant_id=bad, timeline_id=db.timeline_id), "tenant_id")
    if bad:  # "" asks for a generated id
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.create_tenant(tenant_id=bad, page_size=PAGE_SIZE), "tenant_id")


@pytest.mark.parametrize("bad", ["", "xyz", "F" * 32, "0" * 31 + "-"])
def test_malformed_timeline_id_is_invalid_argument(cluster: Cluster, db: Db, bad: str) -> None:
    c = cluster.client
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.get_page(tenant_id=db.tenant_id, timeline_id=bad, rel=1, blkno=0), "timeline_id")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.get_timeline(tenant_id=db.tenant_id, timeline_id=bad), "timeline_id")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.delete_timeline(tenant_id=db.tenant_id, timeline_id=bad), "timeline_id")
    if bad:
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: c.create_timeline(tenant_id=db.tenant_id, ancestor_timeline_id=bad),
            "ancestor_timeline_id",
        )
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: c.create_timeline(tenant_id=db.tenant_id, timeline_id=bad), "timeline_id")


def test_unknown_tenant_and_timeline_are_not_found(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.get_page(tenant_id=UNKNOWN, timeline_id=db.timeline_id, rel=1, blkno=0), UNKNOWN)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.create_timeline(tenant_id=UNKNOWN), UNKNOWN)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.get_page(tenant_id=db.tenant_id, timeline_id=UNKNOWN, rel=1, blkno=0), UNKNOWN)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.get_rel_size(tenant_id=db.tenant_id, timeline_id=UNKNOWN, rel=1), UNKNOWN)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.get_timeline(tenant_id=db.tenant_id, timeline_id=UNKNOWN), UNKNOWN)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.delete_timeline(tenant_id=db.tenant_id, timeline_id=UNKNOWN), UNKNOWN)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.compact(tenant_id=db.tenant_id, timeline_id=UNKNOWN), UNKNOWN)


# -- reads ------------------------------------------------------------------------


def test_page_of_a_missing_relation_is_not_found(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    for lsn in (db.lsn, 0):
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            lambda: c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=7, blkno=0, lsn=lsn),
            "rel=7",
        )
    # Before its first record the relation did not exist either.
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=0, lsn=db.lsn - 1),
        "rel=1",
    )
    size = c.get_rel_size(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=7, lsn=db.lsn)
    assert (size.exists, size.nblocks, size.lsn) == (False, 0, db.lsn)


def test_block_past_the_end_is_out_of_range(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    for blkno in (3, 4, 0xFFFFFFFE):
        message = expect_error(
            grpc.StatusCode.OUT_OF_RANGE,
            lambda: c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=blkno, lsn=db.lsn),
            "rel=1",
            f"blkno={blkno}",
        )
        assert "3 blocks" in message, message
    # Blocks below the written one exist and read as zeros.
    for blkno in (0, 1):
        page = c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=blkno, lsn=db.lsn).page
        assert page == bytes(PAGE_SIZE)


def test_lsn_not_reached_in_time_is_deadline_exceeded(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    future = db.lsn + 1_000_000
    for call in (
        lambda: c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=2, lsn=future, timeout=1.5),
        lambda: c.get_rel_size(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, lsn=future, timeout=1.5),
        lambda: c.create_timeline(
            tenant_id=db.tenant_id, ancestor_timeline_id=db.timeline_id, ancestor_lsn=future, timeout=1.5
        ),
    ):
        expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, call, f"lsn={future}", "not reached")
    [result] = c.read_pages(
        tenant_id=db.tenant_id, timeline_id=db.timeline_id, keys=[(1, 2)], lsn=future, timeout=1.5
    )
    assert isinstance(result, PageError) and result.code == grpc.StatusCode.DEADLINE_EXCEEDED, result
    assert f"lsn={future}" in result.message, result
    # The timeline is unharmed, and a read at an LSN that is reached answers.
    assert c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=2, lsn=db.lsn).page == db.page


def test_a_read_waits_for_an_lsn_appended_meanwhile(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    page = b"\x5a" * PAGE_SIZE  # image(1, 0, 0x5A)
    resp = c.append(
        tenant_id=db.tenant_id,
        timeline_id=db.timeline_id,
        records=[image(1, 0, 0x5A)],
    )
    # Possibly not ingested yet: the read waits for it rather than answering older state.
    got = c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=0, lsn=resp.end_lsn, timeout=30)
    assert (got.page, got.lsn) == (page, resp.end_lsn)


def test_read_at_lsn_0_reports_the_lsn_it_read_at(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    c.get_rel_size(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, lsn=db.lsn)  # waits for ingest
    got = c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=2, lsn=0)
    assert (got.page, got.lsn) == (db.page, db.lsn)
    size = c.get_rel_size(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, lsn=0)
    assert (size.exists, size.nblocks, size.lsn) == (True, 3, db.lsn)
    [response] = c.get_pages(
        [page_pb2.GetPagesRequest(requests=[page_pb2.GetPageRequest(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=2)])]
    )
    assert [(r.page, r.lsn) for r in response.responses] == [(db.page, db.lsn)]
    # An empty timeline reads at LSN 0 too: nothing exists there.
    empty = c.create_timeline(tenant_id=db.tenant_id).timeline_id
    size = c.get_rel_size(tenant_id=db.tenant_id, timeline_id=empty, rel=1, lsn=0)
    assert (size.exists, size.lsn) == (False, 0)


def test_get_pages_answers_each_request_in_order(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    t, tl = db.tenant_id, db.timeline_id
    requests = [
        dict(tenant_id=t, timeline_id=tl, rel=1, blkno=2, lsn=db.lsn),
        dict(tenant_id=t, timeline_id=tl, rel=9, blkno=0, lsn=db.lsn),
        dict(tenant_id=t, timeline_id=tl, rel=1, blkno=0, lsn=db.lsn),
        dict(tenant_id=t, timeline_id=tl, rel=1, blkno=3, lsn=db.lsn),
        dict(tenant_id=t, timeline_id=UNKNOWN, rel=1, blkno=2, lsn=db.lsn),
        dict(tenant_id="nope", timeline_id=tl, rel=1, blkno=2, lsn=db.lsn),
        dict(tenant_id=t, timeline_id=tl, rel=1, blkno=2, lsn=0),
    ]
    expected: list[tuple[grpc.StatusCode | None, bytes | str]] = [
        (None, db.page),
        (grpc.StatusCode.NOT_FOUND, "rel=9"),
        (None, bytes(PAGE_SIZE)),
        (grpc.StatusCode.OUT_OF_RANGE, "blkno=3"),
        (grpc.StatusCode.NOT_FOUND, UNKNOWN),
        (grpc.StatusCode.INVALID_ARGUMENT, "tenant_id"),
        (None, db.page),
    ]
    # Split over two messages of one stream: each message gets its own answer.
    messages = [
        page_pb2.GetPagesRequest(requests=[page_pb2.GetPageRequest(**r) for r in requests[:3]]),
        page_pb2.GetPagesRequest(requests=[page_pb2.GetPageRequest(**r) for r in requests[3:]]),
    ]
    responses = list(c.get_pages(messages))
    assert [len(r.responses) for r in responses] == [3, 4]
    results = [result for r in responses for result in r.responses]
    for i, (result, (code, want)) in enumerate(zip(results, expected)):
        if code is None:
            assert result.error_code == 0, f"request {i}: {result.error}"
            assert (result.page, result.lsn) == (want, db.lsn), f"request {i}"
        else:
            assert result.error_code == code.value[0], f"request {i}: expected {code.name}, got {result.error_code} {result.error}"
            assert isinstance(want, str) and want in result.error, f"request {i}: {result.error}"
            assert not result.page
    # The client's helper maps them the same way.
    mixed = c.read_pages(tenant_id=t, timeline_id=tl, keys=[(1, 2), (9, 0), (1, 3)], lsn=db.lsn, batch=2)
    assert mixed[0] == db.page
    assert isinstance(mixed[1], PageError) and mixed[1].code == grpc.StatusCode.NOT_FOUND
    assert isinstance(mixed[2], PageError) and mixed[2].code == grpc.StatusCode.OUT_OF_RANGE


# -- tenants and timelines ------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 256, 511, 1000, 8191, 131072, 1 << 31])
def test_create_tenant_with_a_bad_page_size_is_invalid_argument(cluster: Cluster, page_size: int) -> None:
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: cluster.client.create_tenant(page_size=page_size),
        f"page_size={page_size}",
        "power of two",
    )


def test_create_existing_tenant_or_timeline_is_already_exists(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    expect_error(grpc.StatusCode.ALREADY_EXISTS, lambda: c.create_tenant(tenant_id=db.tenant_id, page_size=PAGE_SIZE), db.tenant_id)
    expect_error(grpc.StatusCode.ALREADY_EXISTS, lambda: c.create_timeline(tenant_id=db.tenant_id, timeline_id=db.timeline_id), db.timeline_id)
    branch = c.create_timeline(tenant_id=db.tenant_id, ancestor_timeline_id=db.timeline_id).timeline_id
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: c.create_timeline(tenant_id=db.tenant_id, timeline_id=branch, ancestor_timeline_id=db.timeline_id),
        branch,
    )
    # The failed creates changed nothing.
    assert c.get_page(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=1, blkno=2, lsn=db.lsn).page == db.page


def test_branch_of_an_unknown_ancestor_is_not_found(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: c.create_timeline(tenant_id=db.tenant_id, ancestor_timeline_id=UNKNOWN, ancestor_lsn=db.lsn),
        UNKNOWN,
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: c.create_timeline(tenant_id=db.tenant_id, ancestor_lsn=db.lsn),
        "ancestor_lsn",
    )
    listed = {tl.timeline_id for tl in c.list_timelines(tenant_id=db.tenant_id).timelines}
    assert listed == {db.timeline_id}


def test_delete_timeline_with_children_is_failed_precondition(cluster: Cluster, db: Db) -> None:
    c = cluster.client
    child = c.create_timeline(tenant_id=db.tenant_id, ancestor_timeline_id=db.timeline_id, ancestor_lsn=db.lsn).timeline_id
    grandchild = c.create_timeline(tenant_id=db.tenant_id, ancestor_timeline_id=child).timeline_id
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, lambda: c.delete_timeline(tenant_id=db.tenant_id, timeline_id=db.timeline_id), child)
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, lambda: c.delete_timeline(tenant_id=db.tenant_id, timeline_id=child), grandchild)
    # Still there and readable through the chain.
    assert c.get_page(tenant_id=db.tenant_id, timeline_id=grandchild, rel=1, blkno=2, lsn=0).page == db.page
    # Leaves first, then it works.
    c.delete_timeline(tenant_id=db.tenant_id, timeline_id=grandchild)
    c.delete_timeline(tenant_id=db.tenant_id, timeline_id=child)
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: c.get_timeline(tenant_id=db.tenant_id, timeline_id=child), child)
    c.delete_timeline(tenant_id=db.tenant_id, timeline_id=db.timeline_id)


def test_branch_creation_copies_no_page(cluster: Cluster, db: Db) -> None:
    """A branch of an ancestor made of many layer files is one small index file
    (physical_size 0), and it reads the ancestor's pages."""
    c = cluster.client
    records = [image(2, b, b % 251 + 1) for b in range(60)]
    end = 0
    for i in range(0, len(records), 10):
        end = c.append(tenant_id=db.tenant_id, timeline_id=db.timeline_id, records=records[i : i + 10]).end_lsn
        # Ingested before the next append, so each arrives in stream messages of its own
        # (and freezes a layer of its own), however the walservice groups what is pending.
        c.get_rel_size(tenant_id=db.tenant_id, timeline_id=db.timeline_id, rel=2, lsn=end)
    info = c.compact(tenant_id=db.tenant_id, timeline_id=db.timeline_id, timeout=60)
    ancestor_dir = cluster.ps.data_dir / "tenants" / db.tenant_id / "timelines" / db.timeline_id
    assert len([p for p in ancestor_dir.iterdir() if p.name != "index_part.json"]) >= 2, "the ancestor should have several layers"
    assert info.physical_size > 0

    branch = c.create_timeline(tenant_id=db.tenant_id, ancestor_timeline_id=db.timeline_id, ancestor_lsn=end)
    assert (branch.ancestor_timeline_id, branch.ancestor_lsn) == (db.timeline_id, end)
    branch_dir: Path = ancestor_dir.parent / branch.timeline_id
    assert sorted(p.name for p in branch_dir.iterdir()) == ["index_part.json"]
    assert (branch_dir / "index_part.json").stat().st_size < 4096
    got = c.get_timeline(tenant_id=db.tenant_id, timeline_id=branch.timeline_id)
    assert got.physical_size == 0
    assert got.logical_size == info.logical_size == (60 + 3) * PAGE_SIZE
    pages = c.read_pages(tenant_id=db.tenant_id, timeline_id=branch.timeline_id, keys=[(2, b) for b in range(60)], lsn=end)
    assert pages == [r.image.page for r in records]


def test_a_timeline_the_walservice_lost_track_of_is_registered_again(strata_env: StrataEnv) -> None:
    """A crash between the two halves of CreateTimeline (the pageserver's directory
    and the walservice's registration run at once) leaves a timeline the
    walservice does not know: the pageserver's WAL receiver registers it."""
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        tenant = c.create_tenant(page_size=512).tenant_id
        timeline = c.create_timeline(tenant_id=tenant).timeline_id
    wal.stop()
    shutil.rmtree(wal.data_dir / "timelines" / tenant / timeline)
    wal.start()
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = c.status(tenant_id=tenant, timeline_id=timeline)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
                time.sleep(0.1)
        assert status.start_lsn == 0 and status.page_size == 512
        lsn = c.append(tenant_id=tenant, timeline_id=timeline, records=[
            records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=0, page=b"\x07" * 512))
        ]).end_lsn
        assert c.get_page(tenant_id=tenant, timeline_id=timeline, rel=1, blkno=0, lsn=lsn, timeout=20).page == b"\x07" * 512
