"""Remote storage as the truth for a timeline: its upload queue.

The keys (the whole table: strata/remote_storage/layout.py)::

    tenants/<t>/timelines/<tl>/index_part.json-<G:08x>    IndexPart of generation G (with remote checksums)
    tenants/<t>/timelines/<tl>/<layer file name>          layer files (name carries the generation)

Every object is create-only except a generation's own index, which only the
pageserver holding that generation writes (and overwrites as it advances).
Readers take the index of the highest generation (`download_index`).

`RemoteTimelineClient` is one asyncio task per timeline that brings remote
storage up to the timeline's current local index, in this order:

1. upload every layer the index names that is not yet remote (on the executor),
   after reading the local file back against the checksum it was written with;
2. check the tenant's generations: if a newer one exists, upload nothing more
   and fence the tenant (tenant.py);
3. upload index_part.json-<our generation>: it names only layers uploaded in
   step 1 or before;
4. check the generations again: if a newer one appeared meanwhile, the index
   just written may be superseded, so fence and report nothing;
5. remote_consistent_lsn := that index's disk_consistent_lsn; report it;
6. delete remote layers that neither the uploaded index nor the local one
   names (replaced by compaction): only now no index that can be read names
   them; and, once, this timeline's indexes of older generations.

Each wake-up syncs to the newest local index (intermediate indexes are skipped:
each uploaded index is complete by itself). A failure (remote storage down; the
S3 backend already retried transient errors) is logged once per outage
(`event=remote_upload_failed level=warn`), retried with backoff, and logged
again when uploads catch up (`event=remote_upload_recovered`). Ingest never
waits for uploads; the walservice keeps WAL above remote_consistent_lsn, so
nothing is lost while uploads lag.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash

from pageserver import gc
from pageserver.index_part import IndexPart, LayerEntry
from pageserver.layers.block_file import _FILE_CHECKSUM_COVERS_ALL_BUT
from strata.errors import CorruptionError, NotFound
from strata.ids import TenantId, TimelineId
from strata.background_tasks import cancel_and_wait
from strata.logs import EventLogger
from strata.remote_storage.interface import RemoteObject, RemoteStorage
from strata.remote_storage import layout
from strata.remote_storage.layout import index_generation, index_key, timeline_key, timeline_prefix, timelines_prefix

if TYPE_CHECKING:
    from pageserver.timeline import Timeline

MAX_BACKOFF_S = 5.0
T = TypeVar("T")


def remote_timelines(storage: RemoteStorage, tenant_id: TenantId) -> list[TimelineId]:
    """Every timeline with a folder under the tenant's `timelines/` (one listing
    with the delimiter: no layer or WAL segment is walked). Blocking."""
    listing = storage.list_delimited(timelines_prefix(tenant_id))
    return [tl for p in listing.prefixes if (tl := layout.timeline_of_prefix(tenant_id, p)) is not None]


def remote_index_generations(storage: RemoteStorage, tenant_id: TenantId) -> dict[TimelineId, list[int]]:
    """Timeline id -> the generations of its remote indexes, ascending (only
    timelines that have one). One listing of the timelines, then one of each
    timeline's indexes. Blocking."""
    out = {}
    for timeline_id in remote_timelines(storage, tenant_id):
        if gens := timeline_index_generations(storage, tenant_id, timeline_id):
            out[timeline_id] = gens
    return out


def timeline_index_generations(storage: RemoteStorage, tenant_id: TenantId, timeline_id: TimelineId) -> list[int]:
    """The generations of the timeline's remote indexes, ascending. Blocking."""
    prefix = timeline_prefix(tenant_id, timeline_id)
    listed = storage.list(prefix + layout.INDEX_PREFIX)
    return sorted(g for o in listed if (g := index_generation(o.key[len(prefix):])) is not None)


def download_index(storage: RemoteStorage, tenant_id: str, timeline_id: str, generation: int | None = None) -> IndexPart:
    """The timeline's index of the highest generation (or of `generation`).
    NotFound if it has none. Blocking."""
    if generation is None:
        gens = timeline_index_generations(storage, tenant_id, timeline_id)
        if not gens:
            raise NotFound(f"tenant_id={tenant_id} timeline_id={timeline_id}: no index in remote storage")
        generation = gens[-1]
    key = index_key(tenant_id, timeline_id, generation)
    return IndexPart.decode(storage.download_bytes(key), where=f"remote {key}")


def remote_objects_of(index: IndexPart) -> dict[str, RemoteObject]:
    """The remote objects an uploaded index names (file name -> object)."""
    tenant, timeline = TenantId(index.tenant_id), TimelineId(index.timeline_id)
    return {
        e.file_name: RemoteObject(timeline_key(tenant, timeline, e.file_name), e.file_size, e.remote_checksum)
        for e in index.layers
    }


def verify_layer_file(path: Path, entry: LayerEntry) -> int:
    """Read a layer file back before it is uploaded: its size and its own file
    checksum (the trailer's, recorded in the index) must match `entry`.
    CorruptionError if not. Returns the xxhash64 of the whole file, which the
    upload checks again as it reads (so the bytes sent are the bytes verified).
    Blocking."""
    whole = xxhash.xxh64()
    covered = xxhash.xxh64()
    covered_len = entry.file_size - _FILE_CHECKSUM_COVERS_ALL_BUT
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            whole.update(chunk)
            if size < covered_len:
                covered.update(chunk[: covered_len - size])
            size += len(chunk)
    if size != entry.file_size:
        raise CorruptionError(f"layer file {path} is {size} bytes, its index entry says {entry.file_size}: not uploading it")
    if covered.intdigest() != entry.file_checksum:
        raise CorruptionError(
            f"layer file {path} has file checksum {covered.intdigest():016x}, its index entry says "
            f"{entry.file_checksum:016x}: it changed on local disk; not uploading it"
        )
    return whole.intdigest()


class Fenced(Exception):
    """A newer generation attached the tenant elsewhere."""


class _Superseded(Exception):
    """A layer of the index being uploaded was replaced meanwhile; a newer index follows."""


class RemoteTimelineClient:
    def __init__(
        self,
        timeline: Timeline,
        storage: RemoteStorage,
        executor: Executor,
        log: EventLogger,
        check_generation: Callable[[], Awaitable[None]],
        on_uploaded: Callable[[Timeline], None],
        remote_index: IndexPart | None,
    ) -> None:
        self.timeline = timeline
        self.storage = storage
        self.executor = executor
        self.log = log
        self.check_generation = check_generation  # raises Fenced
        self.on_uploaded = on_uploaded
        self.remote_index = remote_index
        self.remote_objects: dict[str, RemoteObject] = remote_objects_of(remote_index) if remote_index else {}
        self.remote_consistent_lsn = remote_index.disk_consistent_lsn if remote_index else 0
        self._synced: IndexPart | None = None  # the local index last brought up
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fenced = False
        # Executor calls in flight (`_blocking`); the set is touched from worker threads' done callbacks too.
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        # Whether indexes of older generations were deleted after our first index upload.
        self._old_indexes_deleted = False
        # Held for a whole sync round and by GC's sweep of unindexed objects, so
        # the sweep never deletes a layer an index being uploaded will name.
        self._sync_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"RemoteTimelineClient({self.timeline})"

    def schedule(self) -> None:
        """The local index changed: bring remote storage up to it (soon, in the background)."""
        self._wake.set()
        if self._task is None and not self.fenced:
            self._task = asyncio.create_task(self._run())

    @property
    def up_to_date(self) -> bool:
        return self._synced is self.timeline.index

    async def wait_uploaded(self, timeout: float) -> bool:
        """Wait until the current local index is uploaded; False if not within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.schedule()
        while not self.up_to_date:
            if self.fenced or self._task is None:
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            progress = self._progress
            try:
                await asyncio.wait_for(progress.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the executor, tracked so that `stop` can wait for it:
        cancelling the awaiting task does not stop a thread mid-upload."""
        future = self.executor.submit(fn, *args)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        """Stop uploading; returns once no upload or deletion of ours is running
        (so a timeline deletion that follows cannot race a late upload)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        while self._in_flight:  # (a done callback empties it from the worker thread)
            await asyncio.wait([asyncio.wrap_future(f) for f in list(self._in_flight)])

    async def sweep_unindexed(self) -> int:
        """GC: delete this timeline's layer objects that no index names (uploads a
        crash left unindexed, deletions a crash interrupted). Returns how many."""
        tl = self.timeline
        if self.fenced:
            return 0
        try:
            await self.check_generation()  # a newer generation's objects are not ours to judge
        except Fenced:
            return 0
        prefix = timeline_prefix(TenantId(tl.tenant_id), TimelineId(tl.timeline_id))
        async with self._sync_lock:
            # Layers sit right below the prefix: the delimiter skips wal/ and vector_indexes/.
            listed = (await self._blocking(self.storage.list_delimited, prefix)).objects
            keep = {e.file_name for e in tl.index.layers} | set(self.remote_objects)
            if self.remote_index is not None:
                keep |= {e.file_name for e in self.remote_index.layers}
            leaked = gc.unindexed_layer_objects(prefix, [o.key for o in listed], keep, tl.index.generation)
            if leaked:
                await self._blocking(self.storage.delete, leaked)
        for key in leaked:
            self.log.info("remote_leaked_layer_deleted", tenant=tl.tenant_id, timeline=tl.timeline_id, key=key)
        return len(leaked)

    async def delete_old_vector_indexes(self, cutoff: int, branch_points: list[int]) -> int:
        """GC: per collection, vector index objects below `cutoff` that neither a
        read at the cutoff nor one at a child's branch point uses
        (gc.vector_objects_to_delete). Returns how many."""
        tl = self.timeline
        if self.fenced:
            return 0
        try:
            await self.check_generation()  # before any deletion
        except Fenced:
            return 0
        prefix = layout.vector_indexes_prefix(TenantId(tl.tenant_id), TimelineId(tl.timeline_id))
        listed = await self._blocking(self.storage.list, prefix)
        doomed = gc.vector_objects_to_delete(prefix, [o.key for o in listed], cutoff, branch_points)
        if doomed:
            await self._blocking(self.storage.delete, doomed)
            self.log.info(
                "vector_indexes_deleted", tenant=tl.tenant_id, timeline=tl.timeline_id, lsn=cutoff, objects=len(doomed),
            )
        return len(doomed)

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _run(self) -> None:
        tl = self.timeline
        failing = False
        backoff = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not self.up_to_date and not tl.deleted:
                try:
                    async with self._sync_lock:
                        await self._sync_once()
                except Fenced:
                    self.fenced = True
                    self._notify()
                    return
                except _Superseded:
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - remote storage down or a bug: retried
                    if not failing:
                        self.log.warning(
                            "remote_upload_failed", tenant=tl.tenant_id, timeline=tl.timeline_id,
                            remote_consistent_lsn=self.remote_consistent_lsn, error=repr(exc), action="retrying",
                        )
                        failing = True
                    self._notify()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                if failing:
                    self.log.info(
                        "remote_upload_recovered", tenant=tl.tenant_id, timeline=tl.timeline_id,
                        remote_consistent_lsn=self.remote_consistent_lsn,
                    )
                    failing = False
                backoff = 0.2
                self._notify()

    async def _delete_older_indexes(self, generation: int) -> None:
        """This timeline's indexes of generations before ours: superseded by the
        one just uploaded (readers take the highest). Checked just before: no
        newer generation exists."""
        tl = self.timeline
        gens = await self._blocking(timeline_index_generations, self.storage, tl.tenant_id, tl.timeline_id)
        old = [index_key(tl.tenant_id, tl.timeline_id, g) for g in gens if g < generation]
        if old:
            await self._blocking(self.storage.delete, old)
            self.log.info(
                "remote_old_indexes_deleted", tenant=tl.tenant_id, timeline=tl.timeline_id, generation=generation,
                indexes=len(old),
            )
        self._old_indexes_deleted = True

    async def _sync_once(self) -> None:
        tl = self.timeline
        if self.fenced:
            raise Fenced(f"tenant_id={tl.tenant_id}: fenced; no more uploads")
        index = tl.index
        tenant, timeline = TenantId(tl.tenant_id), TimelineId(tl.timeline_id)
        entries = []
        uploaded: list[tuple[Any, RemoteObject]] = []  # (layer, object): `remote` is set once the index is up
        for entry in index.layers:
            obj = self.remote_objects.get(entry.file_name)
            if obj is None:
                layer = tl.layer_by_name(entry.file_name)
                if layer is None and tl.index is not index:
                    raise _Superseded()
                if layer is None or not layer.local:
                    raise FileNotFoundError(f"{tl}: layer {entry.file_name} is neither local nor remote")
                key = timeline_key(tenant, timeline, entry.file_name)
                path = layer.path

                def verify_and_upload(path: Path = path, key: str = key, entry: LayerEntry = entry) -> RemoteObject:
                    # The upload then hashes what it sends against the read-back checksum.
                    checksum = verify_layer_file(path, entry)
                    return self.storage.upload_file(path, key, checksum=checksum)

                try:
                    obj = await self._blocking(verify_and_upload)
                except CorruptionError as exc:
                    self.log.error(
                        "layer_corrupt_before_upload", tenant=tl.tenant_id, timeline=tl.timeline_id,
                        layer=entry.file_name, error=str(exc), action="not uploaded; WAL above remote_consistent_lsn is kept",
                    )
                    raise
                except FileNotFoundError:
                    if tl.index is not index:
                        raise _Superseded() from None  # compaction removed it meanwhile
                    raise
                self.remote_objects[entry.file_name] = obj
                uploaded.append((layer, obj))
                self.log.info("layer_uploaded", tenant=tl.tenant_id, timeline=tl.timeline_id, layer=entry.file_name, bytes=obj.size)
            else:
                layer = tl.layer_by_name(entry.file_name)
                if layer is not None and layer.remote is None:
                    uploaded.append((layer, obj))
            entries.append(replace(entry, remote_checksum=obj.checksum))
        remote_index = replace(index, layers=tuple(entries))
        await self.check_generation()  # step 2
        data = remote_index.encode()
        key = index_key(tl.tenant_id, tl.timeline_id, remote_index.generation)
        # Only this pageserver holds this generation, so it alone writes (and overwrites) this index.
        await self._blocking(lambda: self.storage.upload_bytes(data, key, overwrite=True))
        await self.check_generation()  # step 4: an attach that landed during the PUT fences us here
        self.remote_index = remote_index
        for layer, obj in uploaded:
            # Named by an uploaded index now: the local file may be evicted (layer_cache.py),
            # since a read after a restart finds the layer through that index.
            layer.remote = obj
        self._synced = index
        advanced = index.disk_consistent_lsn != self.remote_consistent_lsn
        self.remote_consistent_lsn = index.disk_consistent_lsn
        if advanced:
            self.log.info(
                "index_uploaded", tenant=tl.tenant_id, timeline=tl.timeline_id, layers=len(entries),
                remote_consistent_lsn=self.remote_consistent_lsn,
            )
        self.on_uploaded(tl)
        keep = {e.file_name for e in remote_index.layers} | {e.file_name for e in tl.index.layers}
        gone = [name for name in self.remote_objects if name not in keep]
        if not self._old_indexes_deleted:
            await self._delete_older_indexes(remote_index.generation)
        if gone:
            keys = [self.remote_objects[name].key for name in gone]
            await self._blocking(lambda: self.storage.delete(keys))
            for name in gone:
                del self.remote_objects[name]
            self.log.info("remote_layers_deleted", tenant=tl.tenant_id, timeline=tl.timeline_id, layers=len(gone))
