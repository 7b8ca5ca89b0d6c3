"""Tenants and their timelines on one pageserver, on local disk.

Layout under the data dir::

    tenants/<tenant_id>/tenant.json                       TenantConfig
    tenants/<tenant_id>/timelines/<timeline_id>/index_part.json
    tenants/<tenant_id>/timelines/<timeline_id>/<layer files>

Creation is crash-safe: a tenant or timeline directory is built under a
`.<id>.tmp` name with its metadata fsync'd, then renamed into place and the
parent fsync'd; leftovers are removed on load. A timeline directory holding
files its index_part.json does not name (a crash between a layer write and the
index update, or after a compaction) has them deleted on load.

Each timeline has a WalReceiver (ingest.py) streaming its WAL. Creating a
branch writes one small index file and registers the timeline with the
walservice: no page is copied, whatever the ancestor's size.

Concurrency: everything here is owned by the event loop; `compaction_lock`
serializes compaction (the only deleter of layer files) across the tenant's
timelines, so a branch's compaction never reads an ancestor layer being removed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from pageserver.index_part import FILE_NAME as INDEX_FILE_NAME
from pageserver.index_part import IndexPart, read_index_part, write_index_part
from pageserver.ingest import WalReceiver
from pageserver.layers.block_file import BlockCache
from pageserver import reconstruct
from pageserver.timeline import Timeline, TimelineConfig, relation_directory
from strata import checksummed_json, ids
from strata.durable_file import fsync_dir, write_durably
from strata.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, StrataError, Unavailable
from strata.logs import EventLogger
from strata.v1 import wal_pb2, wal_pb2_grpc

TENANT_FILE = "tenant.json"
TENANT_FORMAT_VERSION = 1
DEFAULT_PITR_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class TenantConfig:
    tenant_id: str
    page_size: int
    pitr_seconds: int
    generation: int = 0

    def encode(self) -> bytes:
        return checksummed_json.encode(asdict(self), TENANT_FORMAT_VERSION)

    @classmethod
    def decode(cls, data: bytes, where: str) -> TenantConfig:
        return cls(**checksummed_json.decode(data, where, TENANT_FORMAT_VERSION))


@dataclass
class PageserverContext:
    """What every tenant shares."""

    data_dir: Path
    executor: Executor
    block_cache: BlockCache
    timeline_config: TimelineConfig
    log: EventLogger
    wal_stub: wal_pb2_grpc.WalServiceStub


def _make_dir_durably(parent: Path, name: str, fill) -> Path:
    """Build `parent/name` under a temp name with `fill(tmp_dir)`, then rename it into place."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fill(tmp)
    fsync_dir(tmp)
    final = parent / name
    tmp.rename(final)
    fsync_dir(parent)
    return final


class Tenant:
    def __init__(self, config: TenantConfig, directory: Path, ctx: PageserverContext) -> None:
        self.config = config
        self.directory = directory
        self.ctx = ctx
        self.timelines: dict[str, Timeline] = {}
        self.receivers: dict[str, WalReceiver] = {}
        self.compaction_lock = asyncio.Lock()
        self._compaction_tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def tenant_id(self) -> str:
        return self.config.tenant_id

    @property
    def timelines_dir(self) -> Path:
        return self.directory / "timelines"

    # -- loading ------------------------------------------------------------------

    def load(self) -> None:
        """Load every timeline (ancestors first) and start their WAL receivers."""
        self.timelines_dir.mkdir(parents=True, exist_ok=True)
        indexes: dict[str, IndexPart] = {}
        for tl_dir in self.timelines_dir.iterdir():
            if tl_dir.name.startswith("."):
                shutil.rmtree(tl_dir)
                continue
            indexes[tl_dir.name] = read_index_part(tl_dir)
        pending = dict(indexes)
        while pending:
            ready = [tid for tid, idx in pending.items() if not idx.ancestor_timeline_id or idx.ancestor_timeline_id in self.timelines]
            if not ready:
                raise StrataError(f"tenant={self.tenant_id}: timelines {sorted(pending)} name ancestors that do not exist")
            for tid in sorted(ready):
                self._remove_unlisted_files(self.timelines_dir / tid, pending[tid])
                self._add_timeline(pending.pop(tid))

    def _remove_unlisted_files(self, tl_dir: Path, index: IndexPart) -> None:
        listed = {entry.file_name for entry in index.layers} | {INDEX_FILE_NAME}
        for path in tl_dir.iterdir():
            if path.name not in listed:
                self.ctx.log.info("removed_unlisted_file", tenant=self.tenant_id, timeline=tl_dir.name, file=path.name)
                path.unlink()

    def _add_timeline(self, index: IndexPart) -> Timeline:
        ancestor = self.timelines.get(index.ancestor_timeline_id) if index.ancestor_timeline_id else None
        timeline = Timeline(
            tenant_id=self.tenant_id,
            timeline_id=index.timeline_id,
            page_size=self.config.page_size,
            directory=self.timelines_dir / index.timeline_id,
            index=index,
            ancestor=ancestor,
            config=self.ctx.timeline_config,
            block_cache=self.ctx.block_cache,
            executor=self.ctx.executor,
            log=self.ctx.log,
        )
        timeline.on_persisted = self._persisted
        if ancestor is not None:
            ancestor.children.add(timeline.timeline_id)
        self.timelines[timeline.timeline_id] = timeline
        receiver = WalReceiver(timeline, self.ctx.wal_stub, self.ctx.log, self._backpressure)
        self.receivers[timeline.timeline_id] = receiver
        receiver.start()
        return timeline

    # -- background work ------------------------------------------------------------

    def _persisted(self, timeline: Timeline) -> None:
        """After a layer flush: tell the walservice, and compact if L0s piled up."""
        self.receivers[timeline.timeline_id].report_persisted()
        if timeline.needs_compaction() and not self._stopping:
            self.schedule_compaction(timeline)

    def schedule_compaction(self, timeline: Timeline, force: bool = False) -> asyncio.Task[None]:
        task = self._compaction_tasks.get(timeline.timeline_id)
        if task is None or task.done():
            task = asyncio.create_task(self._compact(timeline, force))
            self._compaction_tasks[timeline.timeline_id] = task
        return task

    async def _compact(self, timeline: Timeline, force: bool) -> None:
        try:
            await timeline.compact(self.compaction_lock, force)
        except Exception as exc:  # noqa: BLE001 - logged; retried on the next trigger
            self.ctx.log.error("compaction_failed", tenant=self.tenant_id, timeline=timeline.timeline_id, error=repr(exc))

    async def _backpressure(self, timeline: Timeline) -> None:
        """Slow ingest while L0 layers pile up past the stall threshold."""
        while len(timeline.layer_map.l0_deltas()) >= timeline.config.l0_stall_threshold and not timeline.deleted:
            await self.schedule_compaction(timeline)

    def tick(self) -> None:
        """Periodic: freeze layers that got old."""
        for timeline in self.timelines.values():
            timeline.maybe_freeze()

    # -- timelines ------------------------------------------------------------------

    def get_timeline(self, timeline_id: str) -> Timeline:
        ids.timeline_id(timeline_id)
        try:
            return self.timelines[timeline_id]
        except KeyError:
            raise NotFound(f"tenant_id={self.tenant_id} timeline_id={timeline_id}: no such timeline") from None

    async def create_timeline(
        self, timeline_id: str, ancestor_timeline_id: str, ancestor_lsn: int, ttl_seconds: int, timeout: float | None
    ) -> Timeline:
        timeline_id = ids.timeline_id(timeline_id, "timeline_id") if timeline_id else ids.new_id()
        if timeline_id in self.timelines:
            raise AlreadyExists(f"tenant_id={self.tenant_id} timeline_id={timeline_id} already exists")
        ancestor: Timeline | None = None
        if ancestor_timeline_id:
            ids.timeline_id(ancestor_timeline_id, "ancestor_timeline_id")
            ancestor = self.timelines.get(ancestor_timeline_id)
            if ancestor is None:
                raise NotFound(f"ancestor_timeline_id={ancestor_timeline_id}: no such timeline in tenant_id={self.tenant_id}")
            if ancestor_lsn == 0:
                ancestor_lsn = ancestor.last_record_lsn
            await ancestor.wait_for_lsn(ancestor_lsn, timeout)
        elif ancestor_lsn:
            raise InvalidArgument(f"ancestor_lsn={ancestor_lsn} needs an ancestor_timeline_id")
        relations: tuple[tuple[int, bool, int], ...] = ()
        if ancestor is not None:
            # The relation directory at the branch point: one lookup per relation
            # the ancestor ever had, independent of how much data it holds.
            relations = relation_directory(
                {rel: reconstruct.rel_state(ancestor, rel, ancestor_lsn)[0] for rel in ancestor.rel_states}
            )
        now_us = time.time_ns() // 1000
        index = IndexPart(
            tenant_id=self.tenant_id,
            timeline_id=timeline_id,
            ancestor_timeline_id=ancestor_timeline_id or "",
            ancestor_lsn=ancestor_lsn,
            disk_consistent_lsn=ancestor_lsn,
            created_at_us=now_us,
            expires_at_us=now_us + ttl_seconds * 1_000_000 if ttl_seconds else 0,
            generation=self.config.generation,
            relations=relations,
        )
        await self._register_with_walservice(timeline_id, ancestor_lsn)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self.ctx.executor, _make_dir_durably, self.timelines_dir, timeline_id, lambda d: write_index_part(d, index)
        )
        timeline = self._add_timeline(index)
        self.ctx.log.info(
            "timeline_created", tenant=self.tenant_id, timeline=timeline_id,
            ancestor=ancestor_timeline_id or None, lsn=ancestor_lsn,
        )
        return timeline

    async def _register_with_walservice(self, timeline_id: str, start_lsn: int) -> None:
        request = wal_pb2.WalTimeline(
            tenant_id=self.tenant_id, timeline_id=timeline_id, start_lsn=start_lsn, page_size=self.config.page_size
        )
        try:
            await self.ctx.wal_stub.CreateTimeline(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id}: the walservice did not register the timeline: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc

    async def delete_timeline(self, timeline_id: str) -> Timeline:
        timeline = self.get_timeline(timeline_id)
        if timeline.children:
            raise FailedPrecondition(
                f"timeline_id={timeline_id} has child timelines {sorted(timeline.children)}: delete them first"
            )
        timeline.deleted = True
        await self.receivers.pop(timeline_id).stop()
        task = self._compaction_tasks.pop(timeline_id, None)
        async with self.compaction_lock:
            if task is not None:
                task.cancel()
        del self.timelines[timeline_id]
        if timeline.ancestor is not None:
            timeline.ancestor.children.discard(timeline_id)
        timeline.layer_map.close()
        await asyncio.get_running_loop().run_in_executor(self.ctx.executor, shutil.rmtree, timeline.directory)
        self.ctx.log.info("timeline_deleted", tenant=self.tenant_id, timeline=timeline_id)
        return timeline

    async def shutdown(self, flush: bool = True) -> None:
        # No new compaction from here on: the flushes below would schedule one
        # that outlives the executor.
        self._stopping = True
        for receiver in self.receivers.values():
            await receiver.stop()
        for task in self._compaction_tasks.values():
            if not task.done():
                await asyncio.wait([task], timeout=10)
        for timeline in self.timelines.values():
            await timeline.shutdown(flush)


class TenantSet:
    """The tenants of this pageserver (owned by the event loop)."""

    def __init__(self, ctx: PageserverContext) -> None:
        self.ctx = ctx
        self.root = ctx.data_dir / "tenants"
        self.tenants: dict[str, Tenant] = {}

    def load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for tenant_dir in sorted(self.root.iterdir()):
            if tenant_dir.name.startswith("."):
                shutil.rmtree(tenant_dir)
                continue
            path = tenant_dir / TENANT_FILE
            config = TenantConfig.decode(path.read_bytes(), str(path))
            tenant = Tenant(config, tenant_dir, self.ctx)
            tenant.load()
            self.tenants[config.tenant_id] = tenant
            self.ctx.log.info("tenant_loaded", tenant=config.tenant_id, timelines=len(tenant.timelines))

    def get(self, tenant_id: str) -> Tenant:
        ids.tenant_id(tenant_id)
        try:
            return self.tenants[tenant_id]
        except KeyError:
            raise NotFound(f"tenant_id={tenant_id}: no such tenant (CreateTenant first)") from None

    def timeline(self, tenant_id: str, timeline_id: str) -> Timeline:
        return self.get(tenant_id).get_timeline(timeline_id)

    async def create_tenant(self, tenant_id: str, page_size: int, pitr_seconds: int) -> Tenant:
        tenant_id = ids.tenant_id(tenant_id) if tenant_id else ids.new_id()
        size = ids.page_size(page_size)
        if tenant_id in self.tenants:
            raise AlreadyExists(f"tenant_id={tenant_id} already exists")
        config = TenantConfig(tenant_id, size, pitr_seconds or DEFAULT_PITR_SECONDS)

        def fill(d: Path) -> None:
            (d / "timelines").mkdir()
            write_durably(d / TENANT_FILE, config.encode())

        directory = await asyncio.get_running_loop().run_in_executor(
            self.ctx.executor, _make_dir_durably, self.root, tenant_id, fill
        )
        tenant = Tenant(config, directory, self.ctx)
        self.tenants[tenant_id] = tenant
        self.ctx.log.info("tenant_created", tenant=tenant_id, page_size=size)
        return tenant

    async def delete_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.get(tenant_id)
        await tenant.shutdown(flush=False)
        del self.tenants[tenant_id]
        await asyncio.get_running_loop().run_in_executor(self.ctx.executor, shutil.rmtree, tenant.directory)
        self.ctx.log.info("tenant_deleted", tenant=tenant_id)
        return tenant

    async def run_ticks(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                tenant.tick()

    async def shutdown(self) -> None:
        for tenant in self.tenants.values():
            await tenant.shutdown(flush=True)
