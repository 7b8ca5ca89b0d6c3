"""One tenant and its timelines on one pageserver, on local disk. The set of
tenants (create, attach, detach, delete, startup) is tenant_set.py; timeline
deletion is timeline_deletion.py.

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
restart or an attach that finds one finishes the deletion (timeline_deletion.py).

Concurrency: everything here is owned by the event loop (no thread touches
`Tenant.timelines`, `receivers`, `fenced`, `deletions`; blocking work runs on
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
from pageserver.wal_seen_marker import FILE_NAME as WAL_SEEN_FILE_NAME
from pageserver.index_part import IndexPart, RelationEntry, read_index_part, write_index_part
from pageserver.ingest import WalNodes, WalReceiver
from pageserver.layer_cache import LayerCache
from pageserver import gc, remote_timeline
from pageserver import generation as generations
from pageserver.remote_timeline import Fenced, RemoteTimelineClient
from pageserver.layers.block_cache import BlockCache
from pageserver import reconstruct
from pageserver.page_cache import MaterializedPageCache
from pageserver.timeline import Timeline, TimelineConfig, relation_directory
from pageserver.timeline_deletion import DeletionMark, TimelineDeletions, local_mark
from strata import checksummed_json, ids
from strata.ids import Lsn, TenantId, TimelineId
from strata.durable_file import fsync_dir, write_durably
from strata.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, StrataError, Unavailable
from strata.logs import EventLogger
from strata.remote_storage.interface import RemoteObject, RemoteStorage
from strata.remote_storage.layout import DELETION_MARK, index_key
from strata.v1 import wal_pb2

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
        checksummed_json.check_ints(
            body, where, {
                "page_size": (ids.MIN_PAGE_SIZE, ids.MAX_PAGE_SIZE),
                "pitr_seconds": (0, ids.MAX_DURATION_SECONDS),
                "generation": (0, ids.MAX_U64),
            },
        )
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


def make_dir_durably(parent: Path, name: str, fill) -> Path:
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
        # Database names (all state here is the tenant's asyncio loop's: no lock):
        # name -> timeline_id of a loaded timeline, and names a CreateTimeline in
        # flight holds (so two concurrent creates cannot both take one).
        self.names: dict[str, TimelineId] = {}
        self._names_reserved: dict[str, TimelineId] = {}
        self.receivers: dict[str, WalReceiver] = {}
        self.compaction_lock = asyncio.Lock()
        self._compaction_tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        # Set once a newer generation attached this tenant elsewhere: why we stopped.
        self.fenced: str | None = None
        # Expired timelines whose deletion waits for their children (logged once).
        self._expiry_deferred: set[str] = set()
        # remote index per timeline as found at load (None: unknown)
        self._remote_indexes: dict[str, IndexPart | None] = {}
        self.deletions = TimelineDeletions(self)

    @property
    def tenant_id(self) -> TenantId:
        return TenantId(self.config.tenant_id)

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
        marks: dict[str, DeletionMark] = {}
        for tl_dir in self.timelines_dir.iterdir():
            if tl_dir.name.startswith("."):
                shutil.rmtree(tl_dir)
                continue
            mark = local_mark(tl_dir)
            if mark is not None:  # a deletion a crash interrupted: finish it, do not load it
                marks[tl_dir.name] = mark
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
            self.deletions.resume(marks)

    def _remove_unlisted_files(self, tl_dir: Path, index: IndexPart) -> None:
        listed = {entry.file_name for entry in index.layers} | {INDEX_FILE_NAME, WAL_SEEN_FILE_NAME}
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
                timeline, self.ctx.remote, self.ctx.executor, self.ctx.log, self.check_generation,
                self._uploaded, remote_index,
            )
            timeline.on_index_changed = lambda tl: tl.remote.schedule() if tl.remote is not None else None
        if ancestor is not None:
            ancestor.children[timeline.timeline_id] = timeline.ancestor_lsn
        self.timelines[timeline.timeline_id] = timeline
        if index.name:
            holder = self.names.setdefault(index.name, TimelineId(timeline.timeline_id))
            if holder != timeline.timeline_id:  # only a bug or a hand-edited index gets here
                self.ctx.log.error(
                    "database_name_duplicate", tenant=self.tenant_id, timeline=timeline.timeline_id, name=index.name,
                    holder=holder, action="the name stays with the timeline loaded first",
                )
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

    async def check_generation(self) -> None:
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
        self.stopping = True
        for timeline in self.timelines.values():
            if timeline.remote is not None:
                timeline.remote.fenced = True
        asyncio.get_running_loop().create_task(self._stop_background())

    async def _stop_background(self) -> None:
        """After fencing: stop ingest and the upload queues, then say so (from
        that line on no upload or deletion of this tenant runs here)."""
        for receiver in self.receivers.values():
            await receiver.stop()
        for timeline in self.timelines.values():
            if timeline.remote is not None:
                await timeline.remote.stop()
        self.ctx.log.info("tenant_background_stopped", tenant=self.tenant_id, reason="fenced")

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
        if timeline.needs_compaction() and not self.stopping:
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
        """Slow ingest while L0 layers pile up past the stall threshold, or while
        frozen layers wait for a flush that fails (a full disk: Timeline.wait_for_flush_room)."""
        await timeline.wait_for_flush_room()
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

    def timeline_by_name(self, name: str) -> Timeline:
        """The timeline of database `name`; NotFound naming the databases there are."""
        ids.database_name(name)
        timeline_id = self.names.get(name)
        if timeline_id is None or timeline_id not in self.timelines:
            names = sorted(self.names)
            there = (", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")) or "none"
            raise NotFound(f"tenant_id={self.tenant_id} has no database named {name!r}; its databases: {there}")
        return self.timelines[timeline_id]

    async def create_timeline(
        self, timeline_id: str, ancestor_timeline_id: str, ancestor_lsn: Lsn, ttl_seconds: int, timeout: float | None,
        name: str = "",
    ) -> Timeline:
        """A new timeline (a branch of `ancestor_timeline_id` at `ancestor_lsn`), named
        `name` if given: the name is held from here until the timeline is added (or
        the create fails), so two creates cannot both take it."""
        timeline_id = ids.timeline_id(timeline_id, "timeline_id") if timeline_id else ids.new_id()
        ids.duration_seconds(ttl_seconds, "ttl_seconds")
        if name:
            ids.database_name(name)
        if timeline_id in self.timelines:
            raise AlreadyExists(f"tenant_id={self.tenant_id} timeline_id={timeline_id} already exists")
        if timeline_id in self.deletions:
            raise FailedPrecondition(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id} is being deleted; retry once the deletion finished"
            )
        if not name:
            return await self._create_checked(timeline_id, ancestor_timeline_id, ancestor_lsn, ttl_seconds, timeout, "")
        holder = self.names.get(name) or self._names_reserved.get(name)
        if holder is not None:
            raise AlreadyExists(
                f"tenant_id={self.tenant_id} already has a database named {name!r} (timeline_id={holder}): "
                "pick another name, or delete that one first"
            )
        self._names_reserved[name] = TimelineId(timeline_id)
        try:
            return await self._create_checked(timeline_id, ancestor_timeline_id, ancestor_lsn, ttl_seconds, timeout, name)
        finally:
            del self._names_reserved[name]

    async def _create_checked(
        self, timeline_id: TimelineId, ancestor_timeline_id: str, ancestor_lsn: Lsn, ttl_seconds: int,
        timeout: float | None, name: str,
    ) -> Timeline:
        ancestor: Timeline | None = None
        if ancestor_timeline_id:
            ids.timeline_id(ancestor_timeline_id, "ancestor_timeline_id")
            ancestor = self.timelines.get(ancestor_timeline_id)
            if ancestor is None:
                raise NotFound(f"ancestor_timeline_id={ancestor_timeline_id}: no such timeline in tenant_id={self.tenant_id}")
            if ancestor_lsn == 0:
                receiver = self.receivers.get(ancestor.timeline_id)
                if receiver is not None:
                    await receiver.catch_up(timeout)  # a parked ancestor may not have seen its latest WAL
                ancestor_lsn = ancestor.last_record_lsn
            ancestor.check_readable(ancestor_lsn, "branch")
            await ancestor.wait_for_lsn(ancestor_lsn, timeout)
            # A branch point inside a commit is rounded down to the last commit at
            # or below it (docs/design/0006-commit-points.md); TimelineInfo says which.
            asked, ancestor_lsn = ancestor_lsn, ancestor.commit_at_or_below(ancestor_lsn, "branch")
            if asked != ancestor_lsn:
                self.ctx.log.info(
                    "branch_point_rounded", tenant=self.tenant_id, timeline=timeline_id, asked=asked, lsn=ancestor_lsn
                )
            # Checked again after the wait, and reserved at once (no await in
            # between): GC keeps this branch point until the child is added.
            ancestor.check_readable(ancestor_lsn, "branch")
            ancestor.branch_reservations[ancestor_lsn] = ancestor.branch_reservations.get(ancestor_lsn, 0) + 1
            try:
                return await self._create_timeline(timeline_id, ancestor, ancestor_lsn, ttl_seconds, name)
            finally:
                left = ancestor.branch_reservations.pop(ancestor_lsn) - 1
                if left:
                    ancestor.branch_reservations[ancestor_lsn] = left
        elif ancestor_lsn:
            raise InvalidArgument(f"ancestor_lsn={ancestor_lsn} needs an ancestor_timeline_id")
        return await self._create_timeline(timeline_id, None, 0, ttl_seconds, name)

    async def _create_timeline(
        self, timeline_id: TimelineId, ancestor: Timeline | None, ancestor_lsn: Lsn, ttl_seconds: int, name: str
    ) -> Timeline:
        ancestor_timeline_id = ancestor.timeline_id if ancestor is not None else ""
        relations: tuple[RelationEntry, ...] = ()
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
            name=name,
            commits=(),
        )
        # The walservice registration, the local directory and (with remote
        # storage) the remote index are independent: do them at once. The
        # answer waits for all three, so an attach elsewhere sees the timeline
        # once CreateTimeline returned. A crash between them leaves a timeline
        # the walservice may not know (its WalReceiver then registers it,
        # holding nothing past its start: CreateTimeline is idempotent; see
        # ingest.py for a timeline the walservice lost) or an index that is only remote (the
        # next attach takes it; a restart here uploads the local one again).
        loop = asyncio.get_running_loop()
        local = loop.run_in_executor(
            self.ctx.executor, make_dir_durably, self.timelines_dir, timeline_id, lambda d: write_index_part(d, index)
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
            ancestor=ancestor_timeline_id or None, lsn=ancestor_lsn, name=name or None,
        )
        return timeline

    async def _upload_new_index(self, index: IndexPart) -> None:
        """CreateTimeline with remote storage: the new timeline's index of our
        generation, with the generation checked before and after the PUT."""
        storage = self.ctx.remote
        if storage is None:
            return
        key = index_key(TenantId(self.tenant_id), TimelineId(index.timeline_id), index.generation)
        try:
            await self.check_generation()
            await asyncio.get_running_loop().run_in_executor(
                self.ctx.executor, lambda: storage.upload_bytes(index.encode(), key, overwrite=True)
            )
            await self.check_generation()
        except Fenced as exc:
            raise FailedPrecondition(str(exc)) from None
        except StrataError:
            raise
        except Exception as exc:
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={index.timeline_id}: remote storage did not take the new "
                f"timeline's index {key}: {exc!r}"
            ) from exc

    async def _register_with_walservice(self, timeline_id: TimelineId, start_lsn: Lsn) -> None:
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
        (locally, then remotely), then the rest (timeline_deletion.py). If a step fails
        (remote storage or the walservice down) the deletion goes on in the
        background and this raises UNAVAILABLE saying so; a restart or an
        attach that finds the mark finishes it too."""
        if timeline_id in self.deletions:
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
        if self.names.get(timeline.index.name) == timeline_id:
            del self.names[timeline.index.name]  # the name is free from here on
        if timeline.ancestor is not None:
            timeline.ancestor.children.pop(timeline_id, None)
        if timeline.remote is not None:
            await timeline.remote.stop()
        if self.ctx.layer_cache is not None:
            for layer in timeline.layer_map.historic:
                self.ctx.layer_cache.forget(layer)
        timeline.layer_map.close()
        mark = DeletionMark(
            self.tenant_id, timeline_id, self.config.generation, time.time_ns() // 1000, reason
        )
        await asyncio.get_running_loop().run_in_executor(
            self.ctx.executor, write_durably, timeline.directory / DELETION_MARK, mark.encode()
        )
        self.ctx.log.info(
            "timeline_deletion_started", tenant=self.tenant_id, timeline=timeline_id, lsn=timeline.last_record_lsn,
            reason=reason,
        )
        try:
            await self.deletions.finish(timeline_id, mark)
        except Fenced as exc:
            raise FailedPrecondition(str(exc)) from None
        except Exception as exc:
            self.deletions.retry_in_background(timeline_id, mark, exc)
            raise Unavailable(
                f"tenant_id={self.tenant_id} timeline_id={timeline_id}: the deletion is marked and will finish in the "
                f"background (or after a restart or attach): {exc!r}"
            ) from exc
        return timeline

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
            if self.stopping or self.fenced is not None:
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
            if not expires or expires > now_us or timeline.deleted or self.stopping or self.fenced is not None:
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

    def resume_ingest(self) -> None:
        """After `stop_ingest` (a detach whose uploads did not finish): stream WAL again."""
        self.stopping = False
        for timeline_id, timeline in self.timelines.items():
            receiver = WalReceiver(timeline, self.ctx.wal_stub, self.ctx.log, self._backpressure)
            self.receivers[timeline_id] = receiver
            receiver.start()

    async def stop_ingest(self) -> None:
        self.stopping = True
        self.deletions.cancel_all()
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
