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

With `--remote-storage` (docs/design/0003-remote-storage.md) remote storage is
the truth: each timeline has an upload queue (remote_timeline.py) writing the
per-generation `index_part.json-<gen:08x>`, tenant.json and the tenant's
generations (generation.py) live remotely too, `attach` rebuilds a tenant from
remote storage on an empty disk (layers downloaded on demand), every start
claims the next generation, and a tenant for which a newer generation exists
(attached elsewhere) is fenced: it uploads and deletes nothing more, stops
ingest and answers reads FAILED_PRECONDITION. Timeline deletion writes a
deletion mark (`deleted`, local then remote) first and removes it last; a
restart or an attach that finds one finishes the deletion.

Concurrency: everything here is owned by the event loop (no thread touches
`Tenant.timelines`, `receivers`, `fenced`, `_deleting`; blocking work runs on
the executor over immutable inputs); `compaction_lock`
serializes compaction and GC (the only deleters of layer files) across the
tenant's timelines, so a branch's compaction never reads an ancestor layer being
removed. GC (`gc`, `gc_all`, every `--gc-interval`) and timeline expiry
(`expire`, every `--ttl-check-interval`) run from TenantSet's loops.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc

from pageserver.index_part import FILE_NAME as INDEX_FILE_NAME
from pageserver.index_part import IndexPart, read_index_part, write_index_part
from pageserver.ingest import WalNodes, WalReceiver
from pageserver.layer_cache import LayerCache
from pageserver import gc, remote_timeline
from pageserver import generation as generations
from pageserver.remote_storage import RemoteObject, RemoteObjectExists, RemoteStorage
from pageserver.remote_timeline import Fenced, RemoteTimelineClient
from pageserver.layers.block_cache import BlockCache
from pageserver import reconstruct
from pageserver.page_cache import MaterializedPageCache
from pageserver.timeline import Timeline, TimelineConfig, relation_directory
from strata import checksummed_json, ids
from strata.ids import TenantId, TimelineId
from strata.durable_file import fsync_dir, write_durably
from strata.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, StrataError, Unavailable
from strata.logs import EventLogger
from strata.v1 import wal_pb2, wal_pb2_grpc

TENANT_FILE = "tenant.json"
TENANT_FORMAT_VERSION = 1
DEFAULT_PITR_SECONDS = 7 * 24 * 3600  # --pitr-seconds: the window of a tenant created with pitr_seconds 0


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
        body = checksummed_json.decode(data, where, TENANT_FORMAT_VERSION)
        checksummed_json.check_fields(body, set(cls.__dataclass_fields__), where, {"tenant_id", "page_size", "pitr_seconds"})
        return cls(**body)


@dataclass
class PageserverContext:
    """What every tenant shares."""

    data_dir: Path
    executor: Executor
    block_cache: BlockCache
    timeline_config: TimelineConfig
    log: EventLogger
    wal_stub: WalNodes  # the walservice node(s)
    remote: RemoteStorage | None = None
    remote_url: str = ""  # the --remote-storage URL `remote` was opened from (TenantInfo.remote_storage)
    layer_cache: LayerCache | None = None
    page_cache: MaterializedPageCache | None = None
    default_pitr_seconds: int = DEFAULT_PITR_SECONDS


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
        # Set once a newer generation attached this tenant elsewhere: why we stopped.
        self.fenced: str | None = None
        # Expired timelines whose deletion waits for their children (logged once).
        self._expiry_deferred: set[str] = set()
        # remote index per timeline as found at load (None: unknown)
        self._remote_indexes: dict[str, IndexPart | None] = {}
        # Marked deletions still running in the background, by timeline id.
        self._deleting: dict[str, asyncio.Task[None]] = {}

    @property
    def tenant_id(self) -> str:
        return self.config.tenant_id

    @property
    def timelines_dir(self) -> Path:
        return self.directory / "timelines"

    # -- loading ------------------------------------------------------------------

    def load(self, remote_indexes: dict[str, IndexPart | None] | None = None) -> None:
        """Load every timeline (ancestors first) and start their WAL receivers.
        `remote_indexes`: the timelines' uploaded indexes (what is already remote)."""
        self._remote_indexes = dict(remote_indexes or {})
        self.timelines_dir.mkdir(parents=True, exist_ok=True)
        indexes: dict[str, IndexPart] = {}
        marks: dict[str, remote_timeline.DeletionMark] = {}
        for tl_dir in self.timelines_dir.iterdir():
            if tl_dir.name.startswith("."):
                shutil.rmtree(tl_dir)
                continue
            mark_path = tl_dir / remote_timeline.DELETION_MARK
            if mark_path.exists():  # a deletion a crash interrupted: finish it, do not load it
                marks[tl_dir.name] = remote_timeline.DeletionMark.decode(mark_path.read_bytes(), str(mark_path))
                continue
            index = read_index_part(tl_dir)
            if self.ctx.remote is not None and index.generation != self.config.generation:
                # Claimed a new generation at this start: new layers and the index carry it.
                index = replace(index, generation=self.config.generation)
            indexes[tl_dir.name] = index
        pending = dict(indexes)
        while pending:
            ready = [tid for tid, idx in pending.items() if not idx.ancestor_timeline_id or idx.ancestor_timeline_id in self.timelines]
            if not ready:
                raise StrataError(f"tenant={self.tenant_id}: timelines {sorted(pending)} name ancestors that do not exist")
            for tid in sorted(ready):
                self._remove_unlisted_files(self.timelines_dir / tid, pending[tid])
                self._add_timeline(pending.pop(tid))
        if marks and self.fenced is None:
            self.resume_deletions(marks)

    def _remove_unlisted_files(self, tl_dir: Path, index: IndexPart) -> None:
        listed = {entry.file_name for entry in index.layers} | {INDEX_FILE_NAME}
        for path in tl_dir.iterdir():
            if path.name not in listed:
                self.ctx.log.info("removed_unlisted_file", tenant=self.tenant_id, timeline=tl_dir.name, file=path.name)
                path.unlink()

    def _add_timeline(self, index: IndexPart) -> Timeline:
        ancestor = self.timelines.get(index.ancestor_timeline_id) if index.ancestor_timeline_id else None
        remote_index = self._remote_indexes.pop(index.timeline_id, None)
        remote_objects: dict[str, RemoteObject] = {}
        if remote_index is not None:
            sizes = {e.file_name: e.file_size for e in index.layers}
            remote_objects = {
                n: o for n, o in remote_timeline.remote_objects_of(remote_index).items() if sizes.get(n) == o.size
            }
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
            layer_cache=self.ctx.layer_cache,
            page_cache=self.ctx.page_cache,
            remote_objects=remote_objects,
        )
        timeline.on_persisted = self._persisted
        if self.ctx.remote is not None:
            timeline.remote = RemoteTimelineClient(
                timeline, self.ctx.remote, self.ctx.executor, self.ctx.log, self._check_generation,
                self._uploaded, remote_index,
            )
            timeline.on_index_changed = lambda tl: tl.remote.schedule() if tl.remote is not None else None
        if ancestor is not None:
            ancestor.children[timeline.timeline_id] = timeline.ancestor_lsn
        self.timelines[timeline.timeline_id] = timeline
        receiver = WalReceiver(timeline, self.ctx.wal_stub, self.ctx.log, self._backpressure)
        self.receivers[timeline.timeline_id] = receiver
        if self.fenced is None:
            receiver.start()
            if timeline.remote is not None:
                timeline.remote.schedule()  # uploads what the last run left local only
        return timeline

    # -- remote storage ---------------------------------------------------------------

    def _uploaded(self, timeline: Timeline) -> None:
        """An index went up: tell the walservice remote_consistent_lsn."""
        receiver = self.receivers.get(timeline.timeline_id)
        if receiver is not None:
            receiver.report_persisted()
        if self.ctx.layer_cache is not None:
            self.ctx.layer_cache.evict()  # newly uploaded layers may go now

    async def _check_generation(self) -> None:
        """Before an index upload: raise Fenced (and fence the tenant) if a newer
        generation attached this tenant elsewhere."""
        if self.fenced is not None:
            raise Fenced(self.fenced)
        assert self.ctx.remote is not None
        storage = self.ctx.remote
        remote_gen = await asyncio.get_running_loop().run_in_executor(
            self.ctx.executor, generations.read_generation, storage, self.tenant_id
        )
        if self.fenced is not None:
            raise Fenced(self.fenced)  # fenced by another check while this one read
        if remote_gen > self.config.generation:
            self.fence(remote_gen)
            raise Fenced(self.fenced)

    def fence(self, remote_generation: int) -> None:
        if self.fenced is not None:
            return
        self.fenced = (
            f"tenant_id={self.tenant_id} was attached elsewhere (generation {remote_generation} > this pageserver's "
            f"{self.config.generation}): this pageserver no longer serves it"
        )
        self.ctx.log.warning(
            "tenant_fenced", tenant=self.tenant_id, generation=self.config.generation, remote_generation=remote_generation,
            action="stopped serving: no more uploads or deletions, ingest stopped, reads answer FAILED_PRECONDITION",
        )
        self._stopping = True
        for timeline in self.timelines.values():
            if timeline.remote is not None:
                timeline.remote.fenced = True
        asyncio.get_running_loop().create_task(self._stop_background())

    async def _stop_background(self) -> None:
        for receiver in self.receivers.values():
            await receiver.stop()
        for timeline in self.timelines.values():
            if timeline.remote is not None:
                await timeline.remote.stop()

    async def wait_uploaded(self, timeout: float) -> bool:
        """Wait until every timeline's current index is uploaded (True) or `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for timeline in list(self.timelines.values()):
            if timeline.remote is not None and not await timeline.remote.wait_uploaded(deadline - loop.time()):
                return False
        return True

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
        if timeline_id in self._deleting:
            raise FailedPrecondition(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id} is being deleted; retry once the deletion finished"
            )
        ancestor: Timeline | None = None
        if ancestor_timeline_id:
            ids.timeline_id(ancestor_timeline_id, "ancestor_timeline_id")
            ancestor = self.timelines.get(ancestor_timeline_id)
            if ancestor is None:
                raise NotFound(f"ancestor_timeline_id={ancestor_timeline_id}: no such timeline in tenant_id={self.tenant_id}")
            if ancestor_lsn == 0:
                ancestor_lsn = ancestor.last_record_lsn
            ancestor.check_readable(ancestor_lsn, "branch")
            await ancestor.wait_for_lsn(ancestor_lsn, timeout)
            # Checked again after the wait, and reserved at once (no await in
            # between): GC keeps this branch point until the child is added.
            ancestor.check_readable(ancestor_lsn, "branch")
            ancestor.branch_reservations[ancestor_lsn] = ancestor.branch_reservations.get(ancestor_lsn, 0) + 1
            try:
                return await self._create_timeline(timeline_id, ancestor, ancestor_lsn, ttl_seconds)
            finally:
                left = ancestor.branch_reservations.pop(ancestor_lsn) - 1
                if left:
                    ancestor.branch_reservations[ancestor_lsn] = left
        elif ancestor_lsn:
            raise InvalidArgument(f"ancestor_lsn={ancestor_lsn} needs an ancestor_timeline_id")
        return await self._create_timeline(timeline_id, None, 0, ttl_seconds)

    async def _create_timeline(
        self, timeline_id: str, ancestor: Timeline | None, ancestor_lsn: int, ttl_seconds: int
    ) -> Timeline:
        ancestor_timeline_id = ancestor.timeline_id if ancestor is not None else ""
        relations: tuple[tuple[int, bool, int], ...] = ()
        if ancestor is not None:
            # The relation directory at the branch point: one lookup per relation
            # the ancestor ever had, independent of how much data it holds.
            branch_point = ancestor
            if ancestor_lsn == ancestor.last_record_lsn:
                relations = relation_directory(ancestor.rel_states)
            else:
                relations = await ancestor.read(
                    lambda: relation_directory(
                        {rel: reconstruct.rel_state(branch_point, rel, ancestor_lsn)[0] for rel in branch_point.rel_states}
                    )
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
        # The walservice registration, the local directory and (with remote
        # storage) the remote index are independent: do them at once. The
        # answer waits for all three, so an attach elsewhere sees the timeline
        # once CreateTimeline returned. A crash between them leaves a timeline
        # the walservice may not know (its WalReceiver then registers it:
        # CreateTimeline is idempotent) or an index that is only remote (the
        # next attach takes it; a restart here uploads the local one again).
        loop = asyncio.get_running_loop()
        local = loop.run_in_executor(
            self.ctx.executor, _make_dir_durably, self.timelines_dir, timeline_id, lambda d: write_index_part(d, index)
        )
        registered, written, remote = await asyncio.gather(
            self._register_with_walservice(timeline_id, ancestor_lsn), local, self._upload_new_index(index),
            return_exceptions=True,
        )
        failed = [r for r in (registered, written, remote) if isinstance(r, BaseException)]
        if failed:
            if not isinstance(written, BaseException):
                await loop.run_in_executor(self.ctx.executor, shutil.rmtree, written)
            raise failed[0]
        if self.ctx.remote is not None:
            self._remote_indexes[timeline_id] = index  # what the upload queue starts from
        timeline = self._add_timeline(index)
        self.ctx.log.info(
            "timeline_created", tenant=self.tenant_id, timeline=timeline_id,
            ancestor=ancestor_timeline_id or None, lsn=ancestor_lsn,
        )
        return timeline

    async def _upload_new_index(self, index: IndexPart) -> None:
        """CreateTimeline with remote storage: the new timeline's index of our
        generation, with the generation checked before and after the PUT."""
        storage = self.ctx.remote
        if storage is None:
            return
        key = remote_timeline.index_key(self.tenant_id, index.timeline_id, index.generation)
        try:
            await self._check_generation()
            await asyncio.get_running_loop().run_in_executor(
                self.ctx.executor, lambda: storage.upload_bytes(index.encode(), key, overwrite=True)
            )
            await self._check_generation()
        except Fenced as exc:
            raise FailedPrecondition(str(exc)) from None
        except StrataError:
            raise
        except Exception as exc:
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={index.timeline_id}: remote storage did not take the new "
                f"timeline's index {key}: {exc!r}"
            ) from exc

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

    async def delete_timeline(self, timeline_id: str, reason: str = "DeleteTimeline") -> Timeline:
        """Delete a timeline, crash-safely (docs/design/0003-remote-storage.md,
        "Timeline expiry and deletion"): stop it, write the deletion mark
        (locally, then remotely), then `_finish_deletion`. If a step fails
        (remote storage or the walservice down) the deletion goes on in the
        background and this raises UNAVAILABLE saying so; a restart or an
        attach that finds the mark finishes it too."""
        if timeline_id in self._deleting:
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id}: the deletion is marked and still finishing "
                "in the background; retry"
            )
        timeline = self.get_timeline(timeline_id)
        if self.fenced is not None:
            raise FailedPrecondition(self.fenced)
        if timeline.children or timeline.branch_reservations:
            raise FailedPrecondition(
                f"timeline_id={timeline_id} has child timelines {sorted(timeline.children)} (or one being created): "
                "delete them first"
            )
        timeline.deleted = True
        await self.receivers.pop(timeline_id).stop()
        task = self._compaction_tasks.pop(timeline_id, None)
        async with self.compaction_lock:
            if task is not None:
                task.cancel()
        del self.timelines[timeline_id]
        if timeline.ancestor is not None:
            timeline.ancestor.children.pop(timeline_id, None)
        if timeline.remote is not None:
            await timeline.remote.stop()
        if self.ctx.layer_cache is not None:
            for layer in timeline.layer_map.historic:
                self.ctx.layer_cache.forget(layer)
        timeline.layer_map.close()
        mark = remote_timeline.DeletionMark(
            self.tenant_id, timeline_id, self.config.generation, time.time_ns() // 1000, reason
        )
        await asyncio.get_running_loop().run_in_executor(
            self.ctx.executor, write_durably, timeline.directory / remote_timeline.DELETION_MARK, mark.encode()
        )
        self.ctx.log.info(
            "timeline_deletion_started", tenant=self.tenant_id, timeline=timeline_id, lsn=timeline.last_record_lsn,
            reason=reason,
        )
        try:
            await self._finish_deletion(timeline_id, mark)
        except Fenced as exc:
            raise FailedPrecondition(str(exc)) from None
        except Exception as exc:
            self._retry_deletion_in_background(timeline_id, mark, exc)
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id}: the deletion is marked and will finish in the "
                f"background (or after a restart or attach): {exc!r}"
            ) from exc
        return timeline

    async def _finish_deletion(self, timeline_id: str, mark: remote_timeline.DeletionMark) -> None:
        """Everything of a timeline whose mark is written (idempotent, so a retry,
        restart or attach can run it again):

        1. the remote mark (create-only; there already from an earlier try is fine);
        2. its remote indexes, then its other objects: layers and vector indexes
           (layers are per timeline: a branch reads its ancestor's objects under
           the ancestor's prefix, and a timeline with children is not deleted, so
           no other timeline needs them) and any offloaded WAL under `wal/`;
        3. the walservice's WAL (DeleteTimeline: local segments on every node and
           the offloaded WAL);
        4. the remote mark, last but one;
        5. the local directory with the local mark, last.

        The generation is checked before the first deletion and before the mark
        goes (raises Fenced: a newer attachment finishes it)."""
        storage = self.ctx.remote
        loop = asyncio.get_running_loop()
        mark_key = remote_timeline.deletion_mark_key(self.tenant_id, timeline_id)
        if storage is not None:
            await self._check_generation()

            def delete_objects() -> int:
                try:
                    storage.upload_bytes(mark.encode(), mark_key)
                except RemoteObjectExists:
                    pass  # an earlier try (or another generation) marked it
                prefix = remote_timeline.timeline_prefix(TenantId(self.tenant_id), TimelineId(timeline_id))
                keys = [o.key for o in storage.list(prefix) if o.key != mark_key]
                indexes = [k for k in keys if remote_timeline.index_generation(k[len(prefix):]) is not None]
                storage.delete(indexes)  # first: no index names a deleted layer
                storage.delete([k for k in keys if k not in indexes])
                return len(keys)

            n = await loop.run_in_executor(self.ctx.executor, delete_objects)
            self.ctx.log.info("remote_timeline_deleted", tenant=self.tenant_id, timeline=timeline_id, objects=n)
        request = wal_pb2.WalDeleteTimelineRequest(tenant_id=self.tenant_id, timeline_id=timeline_id)
        try:
            done = await self.ctx.wal_stub.DeleteTimeline(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id}: the walservice did not delete the timeline's "
                f"WAL: {exc.code().name}: {exc.details()}"
            ) from exc
        self.ctx.log.info(
            "wal_timeline_deleted", tenant=self.tenant_id, timeline=timeline_id, existed=done.existed,
            nodes=done.nodes_deleted,
        )
        if storage is not None:
            await self._check_generation()
            await loop.run_in_executor(self.ctx.executor, storage.delete, [mark_key])
        await loop.run_in_executor(self.ctx.executor, shutil.rmtree, self.timelines_dir / timeline_id, True)
        self._deleting.pop(timeline_id, None)
        self.ctx.log.info("timeline_deleted", tenant=self.tenant_id, timeline=timeline_id, reason=mark.reason)

    def _retry_deletion_in_background(self, timeline_id: str, mark: remote_timeline.DeletionMark, error: Exception) -> None:
        """Keep finishing a marked deletion (with backoff) until it is done."""
        self.ctx.log.warning(
            "timeline_deletion_failed", tenant=self.tenant_id, timeline=timeline_id, error=repr(error),
            action="retrying in the background",
        )
        if timeline_id in self._deleting and not self._deleting[timeline_id].done():
            return

        async def retry() -> None:
            delay = 0.5
            while not self._stopping and self.fenced is None:
                await asyncio.sleep(delay)
                try:
                    await self._finish_deletion(timeline_id, mark)
                    return
                except Fenced:
                    return
                except Exception as exc:  # noqa: BLE001 - logged; retried
                    self.ctx.log.warning(
                        "timeline_deletion_failed", tenant=self.tenant_id, timeline=timeline_id, error=repr(exc),
                        action="retrying in the background",
                    )
                    delay = min(delay * 2, 10.0)

        self._deleting[timeline_id] = asyncio.get_running_loop().create_task(retry())

    def resume_deletions(self, marks: dict[str, remote_timeline.DeletionMark]) -> None:
        """After a restart or an attach: finish the deletions these marks started (in the background)."""
        for timeline_id, mark in sorted(marks.items()):
            self.ctx.log.info(
                "timeline_deletion_resumed", tenant=self.tenant_id, timeline=timeline_id, reason=mark.reason,
                marked_by_generation=mark.generation,
            )

            async def finish(timeline_id: str = timeline_id, mark: remote_timeline.DeletionMark = mark) -> None:
                try:
                    await self._finish_deletion(timeline_id, mark)
                except Fenced:
                    pass
                except Exception as exc:  # noqa: BLE001 - retried in the background
                    self._retry_deletion_in_background(timeline_id, mark, exc)

            self._deleting[timeline_id] = asyncio.get_running_loop().create_task(finish())

    async def _delete_remote_timeline(self, timeline_id: str) -> None:
        """DeleteTenant: best effort, the timeline's remote objects (its WAL is
        the walservice's). Leftovers are unreferenced once tenant.json is gone."""
        storage = self.ctx.remote
        if storage is None or self.fenced is not None:
            return

        def delete() -> int:
            keys = remote_timeline.timeline_objects(storage, self.tenant_id, timeline_id)
            indexes = [k for k in keys if remote_timeline.index_generation(k.rpartition("/")[2]) is not None]
            storage.delete(indexes)  # first: no index names deleted layers
            storage.delete([k for k in keys if k not in indexes])
            return len(keys)

        try:
            await self._check_generation()  # before any deletion
            n = await asyncio.get_running_loop().run_in_executor(self.ctx.executor, delete)
            self.ctx.log.info("remote_timeline_deleted", tenant=self.tenant_id, timeline=timeline_id, objects=n)
        except Exception as exc:  # noqa: BLE001 - leftovers are unreferenced
            self.ctx.log.warning("remote_timeline_delete_failed", tenant=self.tenant_id, timeline=timeline_id, error=repr(exc))

    # -- GC and expiry (pageserver/gc.py) ----------------------------------------------

    async def gc(self, timeline: Timeline, now_us: int | None = None) -> gc.GcResult:
        """One GC pass of `timeline` with this tenant's PITR window."""
        if self.fenced is not None:
            raise FailedPrecondition(self.fenced)
        now = time.time_ns() // 1000 if now_us is None else now_us
        return await timeline.gc(self.compaction_lock, now, self.config.pitr_seconds)

    async def gc_all(self) -> None:
        """Background: GC every timeline (errors logged; retried next round)."""
        for timeline in list(self.timelines.values()):
            if self._stopping or self.fenced is not None:
                return
            if timeline.deleted:
                continue
            try:
                await self.gc(timeline)
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                self.ctx.log.error("gc_failed", tenant=self.tenant_id, timeline=timeline.timeline_id, error=repr(exc))

    async def expire(self, now_us: int) -> list[str]:
        """Delete every timeline whose ttl passed and that has no children (a
        parent goes in a later round, after its expired children)."""
        deleted = []
        for timeline in list(self.timelines.values()):
            expires = timeline.index.expires_at_us
            if not expires or expires > now_us or timeline.deleted or self._stopping or self.fenced is not None:
                continue
            if timeline.children or timeline.branch_reservations:
                if timeline.timeline_id not in self._expiry_deferred:
                    self._expiry_deferred.add(timeline.timeline_id)
                    self.ctx.log.info(
                        "timeline_expiry_deferred", tenant=self.tenant_id, timeline=timeline.timeline_id,
                        children=",".join(sorted(timeline.children)), reason="has children",
                    )
                continue
            self.ctx.log.info(
                "timeline_expired", tenant=self.tenant_id, timeline=timeline.timeline_id, lsn=timeline.last_record_lsn,
                expires_at_us=expires,
            )
            self._expiry_deferred.discard(timeline.timeline_id)
            await self.delete_timeline(timeline.timeline_id, reason="expired")
            deleted.append(timeline.timeline_id)
        return deleted

    async def stop_ingest(self) -> None:
        self._stopping = True
        for task in self._deleting.values():
            task.cancel()
        for receiver in self.receivers.values():
            await receiver.stop()
        for task in self._compaction_tasks.values():
            if not task.done():
                await asyncio.wait([task], timeout=10)

    async def shutdown(self, flush: bool = True, upload_timeout: float = 5.0) -> None:
        # No new compaction from here on: the flushes below would schedule one
        # that outlives the executor.
        await self.stop_ingest()
        for timeline in self.timelines.values():
            await timeline.shutdown(flush)
        if flush and self.fenced is None and self.ctx.remote is not None:
            if not await self.wait_uploaded(upload_timeout):
                self.ctx.log.warning("shutdown_upload_incomplete", tenant=self.tenant_id, timeout_s=upload_timeout)
        for timeline in self.timelines.values():
            if timeline.remote is not None:
                await timeline.remote.stop()


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
            remote_indexes, remote_gen = self._remote_state_at_load(config)
            fenced_by = remote_gen if remote_gen is not None and remote_gen > config.generation else None
            if fenced_by is None and remote_gen is not None and config.generation > 0:
                config, fenced_by = self._claim_at_start(config, remote_gen, path)
            tenant = Tenant(config, tenant_dir, self.ctx)
            if fenced_by is not None:
                tenant.fenced = f"tenant_id={config.tenant_id} was attached elsewhere (generation {fenced_by} > {config.generation})"
                self.ctx.log.warning(
                    "tenant_fenced", tenant=config.tenant_id, generation=config.generation, remote_generation=fenced_by,
                    action="not serving it (found at startup)",
                )
            tenant.load(remote_indexes)
            self.tenants[config.tenant_id] = tenant
            self.ctx.log.info("tenant_loaded", tenant=config.tenant_id, timelines=len(tenant.timelines))

    def _claim_at_start(self, config: TenantConfig, remote_gen: int, path: Path) -> tuple[TenantConfig, int | None]:
        """A restart of the pageserver that holds the newest generation claims the
        next one (blocking), so that nothing it writes from now on can have the
        name of an object its previous run wrote. Returns the config and, if
        another pageserver claimed that generation first, the generation that
        fences us."""
        storage = self.ctx.remote
        assert storage is not None
        try:
            record = generations.claim_generation(storage, config.tenant_id, max(remote_gen, config.generation) + 1)
        except generations.GenerationTaken:
            return config, max(remote_gen, config.generation) + 1
        except Exception as exc:  # noqa: BLE001 - keep the old generation; fencing is checked before each upload
            self.ctx.log.warning("generation_claim_failed", tenant=config.tenant_id, generation=config.generation, error=repr(exc))
            return config, None
        claimed = replace(config, generation=record.generation)
        write_durably(path, claimed.encode())
        self.ctx.log.info(
            "generation_claimed", tenant=config.tenant_id, generation=record.generation, previous=config.generation,
            reason="restart",
        )
        return claimed, None

    def _remote_state_at_load(self, config: TenantConfig) -> tuple[dict[str, IndexPart | None], int | None]:
        """What remote storage already holds of a local tenant (blocking, at startup):
        its timelines' uploaded indexes and the remote generation. If remote
        storage cannot be read, nothing is known (generation None): every layer
        is uploaded again."""
        storage = self.ctx.remote
        if storage is None:
            return {}, None
        try:
            generation = generations.read_generation(storage, config.tenant_id)
            indexes: dict[str, IndexPart | None] = {}
            for timeline_id in remote_timeline.remote_index_timelines(storage, config.tenant_id):
                indexes[timeline_id] = remote_timeline.download_index(storage, config.tenant_id, timeline_id)
            return indexes, generation
        except Exception as exc:  # noqa: BLE001 - uploads start over; fencing is checked before each index upload
            self.ctx.log.warning("remote_state_unavailable", tenant=config.tenant_id, error=repr(exc), action="reuploading")
            return {}, None

    def get(self, tenant_id: str, allow_fenced: bool = False) -> Tenant:
        ids.tenant_id(tenant_id)
        try:
            tenant = self.tenants[tenant_id]
        except KeyError:
            raise NotFound(f"tenant_id={tenant_id}: no such tenant (CreateTenant or AttachTenant first)") from None
        if tenant.fenced is not None and not allow_fenced:
            raise FailedPrecondition(tenant.fenced)
        return tenant

    def timeline(self, tenant_id: str, timeline_id: str) -> Timeline:
        return self.get(tenant_id).get_timeline(timeline_id)

    async def create_tenant(self, tenant_id: str, page_size: int, pitr_seconds: int) -> Tenant:
        tenant_id = ids.tenant_id(tenant_id) if tenant_id else ids.new_id()
        size = ids.page_size(page_size)
        if tenant_id in self.tenants:
            raise AlreadyExists(f"tenant_id={tenant_id} already exists")
        config = TenantConfig(tenant_id, size, pitr_seconds or self.ctx.default_pitr_seconds)
        if self.ctx.remote is not None:
            config = await self._claim_remote(config)

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

    async def _claim_remote(self, config: TenantConfig) -> TenantConfig:
        """A new tenant in remote storage: the next generation, then tenant.json
        (create-only: a tenant that exists remotely is attached, not created)."""
        storage = self.ctx.remote
        assert storage is not None
        key = remote_timeline.tenant_config_key(config.tenant_id)

        def claim() -> TenantConfig:
            if storage.exists(key):
                raise AlreadyExists(f"tenant_id={config.tenant_id} exists in remote storage ({key}): use AttachTenant")
            record = generations.claim_next(storage, config.tenant_id)
            claimed = replace(config, generation=record.generation)
            try:
                storage.upload_bytes(claimed.encode(), key)
            except RemoteObjectExists:
                raise AlreadyExists(f"tenant_id={config.tenant_id} was created elsewhere meanwhile ({key})") from None
            return claimed

        try:
            return await asyncio.get_running_loop().run_in_executor(self.ctx.executor, claim)
        except StrataError:
            raise
        except Exception as exc:
            raise Unavailable(f"tenant_id={config.tenant_id}: remote storage refused the tenant: {exc!r}") from exc

    async def delete_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.get(tenant_id, allow_fenced=True)
        await tenant.shutdown(flush=False)
        del self.tenants[tenant_id]
        self._forget_layers(tenant)
        await asyncio.get_running_loop().run_in_executor(self.ctx.executor, shutil.rmtree, tenant.directory)
        if tenant.fenced is None and self.ctx.remote is not None:
            for timeline_id in list(tenant.timelines):
                await tenant._delete_remote_timeline(timeline_id)
            storage = self.ctx.remote
            def delete_tenant_objects() -> None:
                # tenant.json first (a half-deleted tenant is not attachable), the generations last.
                storage.delete([remote_timeline.tenant_config_key(tenant_id)])
                storage.delete([o.key for o in storage.list(generations.generations_prefix(tenant_id))])

            try:
                await tenant._check_generation()  # before any deletion
                await asyncio.get_running_loop().run_in_executor(self.ctx.executor, delete_tenant_objects)
            except Exception as exc:  # noqa: BLE001 - best effort
                self.ctx.log.warning("remote_tenant_delete_failed", tenant=tenant_id, error=repr(exc))
        self.ctx.log.info("tenant_deleted", tenant=tenant_id)
        return tenant

    def _forget_layers(self, tenant: Tenant) -> None:
        if self.ctx.layer_cache is not None:
            for timeline in tenant.timelines.values():
                for layer in timeline.layer_map.historic:
                    self.ctx.layer_cache.forget(layer)

    def _require_remote(self, what: str) -> RemoteStorage:
        if self.ctx.remote is None:
            raise FailedPrecondition(f"{what} needs remote storage: start the pageserver with --remote-storage URL")
        return self.ctx.remote

    async def attach_tenant(self, tenant_id: str) -> Tenant:
        """Take the tenant over from remote storage: a new generation (fencing any
        older attachment), tenant.json and every timeline's index_part.json
        written locally, layers downloaded on demand, ingest from each remote
        disk_consistent_lsn."""
        tenant_id = ids.tenant_id(tenant_id)
        storage = self._require_remote("AttachTenant")
        existing = self.tenants.get(tenant_id)
        if existing is not None and existing.fenced is None:
            return existing  # attached here already
        if existing is not None:
            await self.delete_local(existing)
        loop = asyncio.get_running_loop()

        def fetch() -> tuple[TenantConfig, dict[str, IndexPart], dict[str, remote_timeline.DeletionMark]]:
            key = remote_timeline.tenant_config_key(tenant_id)
            try:
                data = storage.download_bytes(key)
            except NotFound:
                raise NotFound(f"tenant_id={tenant_id}: remote storage has no such tenant (no {key})") from None
            config = TenantConfig.decode(data, f"remote {key}")
            record = generations.claim_next(storage, tenant_id, at_least=config.generation)  # fences older attachments
            config = replace(config, generation=record.generation)
            marks = remote_timeline.marked_timelines(storage, tenant_id)
            indexes = {}
            for tl in remote_timeline.remote_index_timelines(storage, tenant_id):
                if tl in marks:
                    continue  # being deleted: finished below, not loaded
                # Our own index of each timeline at once: from now on readers take ours.
                index = replace(remote_timeline.download_index(storage, tenant_id, tl), generation=config.generation)
                storage.upload_bytes(index.encode(), remote_timeline.index_key(tenant_id, tl, config.generation))
                indexes[tl] = index
            return config, indexes, marks

        try:
            config, indexes, marks = await loop.run_in_executor(self.ctx.executor, fetch)
        except StrataError:
            raise
        except Exception as exc:
            raise Unavailable(f"tenant_id={tenant_id}: attaching from remote storage failed: {exc!r}") from exc

        def fill(d: Path) -> None:
            (d / "timelines").mkdir()
            write_durably(d / TENANT_FILE, config.encode())
            for timeline_id, index in indexes.items():
                local = replace(index, generation=config.generation)
                _make_dir_durably(d / "timelines", timeline_id, lambda t, i=local: write_index_part(t, i))

        if (self.root / tenant_id).exists():
            await loop.run_in_executor(self.ctx.executor, shutil.rmtree, self.root / tenant_id)
        directory = await loop.run_in_executor(self.ctx.executor, _make_dir_durably, self.root, tenant_id, fill)
        tenant = Tenant(config, directory, self.ctx)
        tenant.load(dict(indexes))
        tenant.resume_deletions(marks)
        self.tenants[tenant_id] = tenant
        self.ctx.log.info(
            "tenant_attached", tenant=tenant_id, generation=config.generation, timelines=len(tenant.timelines),
            lsns=",".join(f"{tl}:{i.disk_consistent_lsn}" for tl, i in sorted(indexes.items())),
        )
        return tenant

    async def detach_tenant(self, tenant_id: str, timeout: float = 30.0) -> Tenant:
        """Stop ingest, flush and upload everything, then drop the local files."""
        self._require_remote("DetachTenant")
        tenant = self.get(tenant_id, allow_fenced=True)
        if tenant.fenced is None:
            await tenant.stop_ingest()
            for timeline in tenant.timelines.values():
                await timeline.checkpoint()
            if not await tenant.wait_uploaded(timeout):
                # Keep serving: the local files are the only copy of what is not uploaded.
                tenant._stopping = False
                for timeline_id, timeline in tenant.timelines.items():
                    receiver = WalReceiver(timeline, self.ctx.wal_stub, self.ctx.log, tenant._backpressure)
                    tenant.receivers[timeline_id] = receiver
                    receiver.start()
                raise Unavailable(f"tenant_id={tenant_id}: uploads did not finish within {timeout:.0f}s; still attached here")
        await self.delete_local(tenant)
        self.ctx.log.info("tenant_detached", tenant=tenant_id)
        return tenant

    async def delete_local(self, tenant: Tenant) -> None:
        await tenant.shutdown(flush=False)
        self.tenants.pop(tenant.tenant_id, None)
        self._forget_layers(tenant)
        await asyncio.get_running_loop().run_in_executor(self.ctx.executor, shutil.rmtree, tenant.directory, True)

    async def run_ticks(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                tenant.tick()

    async def run_gc(self, interval_s: float) -> None:
        """Background GC of every timeline every `interval_s` (--gc-interval)."""
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                await tenant.gc_all()

    async def run_generation_checks(self, interval_s: float) -> None:
        """Every `interval_s` (--generation-check-interval): fence each tenant a
        newer generation attached elsewhere, even if it is idle (no uploads)."""
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                if tenant.fenced is not None or self.ctx.remote is None:
                    continue
                try:
                    await tenant._check_generation()
                except Fenced:
                    pass  # logged by fence()
                except Exception as exc:  # noqa: BLE001 - remote storage down: the next round tries again
                    self.ctx.log.warning("generation_check_failed", tenant=tenant.tenant_id, error=repr(exc))

    async def run_expiry(self, interval_s: float) -> None:
        """Delete expired timelines every `interval_s` (--ttl-check-interval)."""
        while True:
            await asyncio.sleep(interval_s)
            now_us = time.time_ns() // 1000
            for tenant in list(self.tenants.values()):
                try:
                    await tenant.expire(now_us)
                except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                    self.ctx.log.error("timeline_expiry_failed", tenant=tenant.tenant_id, error=repr(exc))

    async def shutdown(self) -> None:
        for tenant in self.tenants.values():
            await tenant.shutdown(flush=True)
