"""A full disk is survived, not just reported (pageserver): its data dir on a
really full filesystem (a small tmpfs, filled to the last byte). A layer flush
that runs out of space is retried with backoff, not only at the next freeze,
reads keep working from memory meanwhile, and with remote storage uploaded
layer files are evicted to make room (and read back on demand)."""

from __future__ import annotations

import random
import re

import grpc
import pytest

from compute_shim import Client
from strata.v1 import records_pb2
from tests.env import Component, StrataEnv, wait_until

PAGE_SIZE = 8192
DISK_BYTES = 2 * 1024 * 1024
# Freeze small layers often; no compaction (it would write too).
LAYERS = ("--checkpoint-bytes", str(32 * 1024), "--compaction-threshold", "1000")


class Pages:
    """What the timeline should hold: the last image written to each block."""

    def __init__(self, client: Client, tenant_id: str, timeline_id: str, seed: int) -> None:
        self.client, self.tenant_id, self.timeline_id = client, tenant_id, timeline_id
        self.rng = random.Random(seed)
        self.pages: dict[int, bytes] = {}
        self.end_lsn = 0

    def write(self, blocks: range) -> int:
        """One Append of a fresh random (incompressible) image of each block."""
        records = []
        for blkno in blocks:
            page = self.rng.randbytes(PAGE_SIZE)
            self.pages[blkno] = page
            records.append(records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=blkno, page=page)))
        self.end_lsn = self.client.append(tenant_id=self.tenant_id, timeline_id=self.timeline_id, records=records).end_lsn
        return self.end_lsn

    def check(self) -> None:
        for blkno, page in self.pages.items():
            got = self.client.get_page(tenant_id=self.tenant_id, timeline_id=self.timeline_id, rel=1, blkno=blkno, lsn=self.end_lsn)
            assert got.page == page, f"block {blkno} at lsn={self.end_lsn} differs"

    def info(self):  # type: ignore[no-untyped-def]
        return self.client.get_timeline(tenant_id=self.tenant_id, timeline_id=self.timeline_id)


def _setup(strata_env: StrataEnv, small_disk, *extra: str) -> tuple[Component, Component, Pages]:  # type: ignore[no-untyped-def]
    disk = small_disk(strata_env.root / "pageserver", DISK_BYTES)
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *LAYERS, *extra)
    client = Client(pageserver=ps.address, walservice=wal.address)
    tenant = client.create_tenant(page_size=PAGE_SIZE).tenant_id
    timeline = client.create_timeline(tenant_id=tenant).timeline_id
    return disk, ps, Pages(client, tenant, timeline, seed=20261207)


def test_flush_retried_once_space_is_back_and_reads_served_meanwhile(small_disk, strata_env: StrataEnv) -> None:
    disk, ps, pages = _setup(strata_env, small_disk)
    pages.write(range(0, 8))
    wait_until("the first layers to flush", lambda: pages.info().disk_consistent_lsn == pages.end_lsn)
    flushed = pages.info().disk_consistent_lsn

    disk.fill()
    pages.write(range(8, 16))  # past checkpoint_bytes: a freeze, whose flush cannot be written
    wait_until("the flush to fail and be retried", lambda: len(re.findall("event=disk_full", ps.log_text())) >= 1)
    wait_until("ingest to reach the end", lambda: pages.info().last_record_lsn == pages.end_lsn)
    assert pages.info().disk_consistent_lsn == flushed
    pages.check()  # served from memory (and the layer files still local)
    assert "layer_flush_failed" in ps.log_text() and "reason=disk_full" in ps.log_text()

    # Back-pressure: each batch below is one freeze; once max_frozen_layers (2) wait
    # for their flush, ingest stops taking WAL instead of growing memory.
    for first in range(16, 48, 8):
        end = pages.write(range(first, first + 8))
        wait_until(
            "the batch to be ingested, or ingest to pause",
            lambda: pages.info().last_record_lsn == end or "event=ingest_paused" in ps.log_text(),
        )
    assert "event=ingest_paused" in ps.log_text()
    assert pages.info().last_record_lsn < pages.end_lsn
    # Other calls that need the disk say why they cannot go on, never UNKNOWN.
    with pytest.raises(grpc.RpcError) as refused:
        pages.client.create_timeline(tenant_id=pages.tenant_id, ancestor_timeline_id=pages.timeline_id)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (refused.value.code(), refused.value.details())
    assert "is full" in refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        pages.client.compact(tenant_id=pages.tenant_id, timeline_id=pages.timeline_id)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (refused.value.code(), refused.value.details())

    disk.free()
    # No new freeze is forced: the retries alone flush the frozen layers, and ingest resumes.
    wait_until("the retried flush to go through", lambda: pages.info().disk_consistent_lsn == pages.end_lsn)
    assert "event=disk_space_back" in ps.log_text() and "event=layer_flush_recovered" in ps.log_text()
    assert "event=ingest_resumed" in ps.log_text()
    listed = pages.client.list_timelines(tenant_id=pages.tenant_id).timelines
    assert [t.timeline_id for t in listed] == [pages.timeline_id], "the refused branch was left behind"
    pages.check()
    ps.stop()
    ps.start()
    pages.client.close()
    pages.client = Client(pageserver=ps.address, walservice=strata_env.components[0].address)
    pages.check()
    listed = pages.client.list_timelines(tenant_id=pages.tenant_id).timelines
    assert [t.timeline_id for t in listed] == [pages.timeline_id], "the refused branch came back at the restart"
    pages.client.close()


def test_full_disk_evicts_uploaded_layers_so_the_flush_proceeds(small_disk, strata_env: StrataEnv, tmp_path) -> None:  # type: ignore[no-untyped-def]
    remote = tmp_path / "remote"
    disk, ps, pages = _setup(strata_env, small_disk, "--remote-storage", f"file://{remote}")
    for first in range(0, 40, 8):
        pages.write(range(first, first + 8))
    wait_until(
        "the layers to be flushed and uploaded",
        lambda: (i := pages.info()).disk_consistent_lsn == pages.end_lsn and i.remote_consistent_lsn == pages.end_lsn,
    )

    disk.fill()
    pages.write(range(0, 6))  # smaller than what was uploaded: eviction makes room for it
    wait_until("the flush to go through on the full disk", lambda: pages.info().disk_consistent_lsn == pages.end_lsn)
    log = ps.log_text()
    assert "event=disk_full" in log
    assert re.search(r"event=layer_evicted .*reason=disk_full", log), "no uploaded layer was evicted for space"
    assert disk.path.joinpath(".filler").exists()
    # Still full: a page whose layer is local reads as ever; one in an evicted
    # layer is downloaded again if it fits, else RESOURCE_EXHAUSTED saying so
    # (never a wrong page, never UNKNOWN). Which layers are local is not fixed:
    # a compaction may have folded the new writes into a layer that was then
    # uploaded and evicted.
    refused = 0
    for blkno, page in pages.pages.items():
        try:
            got = pages.client.get_page(tenant_id=pages.tenant_id, timeline_id=pages.timeline_id, rel=1, blkno=blkno, lsn=pages.end_lsn)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "is full" in exc.details(), (exc.code(), exc.details())
            refused += 1
            continue
        assert got.page == page, f"block {blkno} differs"
    wait_until("the new layer to be uploaded", lambda: pages.info().remote_consistent_lsn == pages.end_lsn)
    disk.free()
    pages.check()  # the evicted layers are read from remote storage again
    assert "event=layer_downloaded" in ps.log_text()
    pages.client.close()
