"""Commit points on the pageserver (pageserver/commit_log.py): kept in the index,
so they survive a restart and an attach on an empty disk; GC trims them; an index
from before them falls back to its commit-time samples."""

from __future__ import annotations

import shutil
from pathlib import Path

from compute_shim import Client
from pageserver.commit_log import CommitLog, CommitPoint, legacy_commits
from pageserver.index_part import CommitTime, IndexPart
from strata.ids import Lsn, TenantId, TimelineId
from strata.v1 import records_pb2
from tests.env import StrataEnv, wait_until
from tests.pageserver.test_kill9 import TINY_LAYERS

PAGE = 512


def listed(client: Client, tenant: str, timeline: str, end_lsn: int) -> list[tuple[int, int, int, int, int]]:
    resp = client.list_commits(tenant_id=tenant, timeline_id=timeline, end_lsn=end_lsn, limit=1000, timeout=60)
    return [(c.end_lsn, c.start_lsn, c.commit_time_us, c.records, c.bytes) for c in resp.commits]


def test_commit_points_survive_a_restart_and_an_attach_on_an_empty_disk(strata_env: StrataEnv, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'remote'}"
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=PAGE).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        ends = []
        for i in range(12):
            records = [
                records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=b, page=bytes([i]) * PAGE))
                for b in range(1 + i % 5)
            ]
            ends.append(client.append(tenant_id=tenant, timeline_id=main, records=records).end_lsn)
        before = listed(client, tenant, main, ends[-1])
        assert [c[0] for c in before] == ends and [c[3] for c in before] == [1 + i % 5 for i in range(12)]
        client.compact(tenant_id=tenant, timeline_id=main, timeout=60)

        def uploaded() -> bool:
            info = client.get_timeline(tenant_id=tenant, timeline_id=main)
            return info.remote_consistent_lsn == info.disk_consistent_lsn == ends[-1]

        wait_until("uploads", uploaded)
    assert ps.stop() == 0
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        assert listed(client, tenant, main, ends[-1]) == before
    assert ps.stop() == 0
    shutil.rmtree(ps.data_dir)
    new = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url, name="pageserver-new")
    with Client(pageserver=new.address, walservice=wal.address) as client:
        client.attach_tenant(tenant_id=tenant, timeout=60)
        # Ingest resumes past ends[-1]: every commit listed comes from the remote index.
        assert listed(client, tenant, main, ends[-1]) == before


def test_commit_log_rounds_down_and_gc_keeps_the_newest_at_or_below_the_cutoff() -> None:
    log = CommitLog([], Lsn(0))
    for end in (10, 20, 30, 40):
        log.record(5)
        log.record(7)
        log.end_batch(Lsn(end), end * 1000)
    log.record(1)  # a batch being ingested is no commit yet
    assert log.commits[1] == CommitPoint(Lsn(20), Lsn(10), 20_000, 2, 12)
    assert log.last_at_or_below(Lsn(9)) is None
    assert log.last_at_or_below(Lsn(29)).end_lsn == 20
    assert log.last_at_or_below(Lsn(30)).end_lsn == 30
    assert [c.end_lsn for c in log.durable(Lsn(35))] == [10, 20, 30]
    assert [c.end_lsn for c in log.in_range(Lsn(11), Lsn(30))] == [20, 30]
    log.gc(Lsn(35))
    assert [c.end_lsn for c in log.commits] == [30, 40]
    assert log.last_at_or_below(Lsn(39)).end_lsn == 30
    log.end_batch(Lsn(50), 50_000)
    assert log.commits[-1] == CommitPoint(Lsn(50), Lsn(40), 50_000, 1, 1)


def test_commit_points_round_trip_and_an_old_index_falls_back_to_its_samples() -> None:
    base = IndexPart(TenantId("a" * 32), TimelineId("b" * 32), "", Lsn(0), Lsn(300))
    old = IndexPart.decode(base.encode())  # written without `commits`, as before commit points
    assert old.commits is None and b'"commits"' not in base.encode()
    new = IndexPart.decode(
        IndexPart(
            TenantId("a" * 32), TimelineId("b" * 32), "", Lsn(0), Lsn(300), commits=(CommitPoint(Lsn(300), Lsn(0), 7, 3, 99),)
        ).encode()
    )
    assert new.commits == (CommitPoint(Lsn(300), Lsn(0), 7, 3, 99),)
    samples = [CommitTime(Lsn(100), 1), CommitTime(Lsn(200), 2)]
    fallback = legacy_commits([(c.lsn, c.time_us) for c in samples], Lsn(0), Lsn(300))
    assert [(c.end_lsn, c.start_lsn, c.time_us) for c in fallback] == [(100, 0, 1), (200, 100, 2), (300, 200, 2)]
