"""One timeline on the pageserver: applying WAL, freezing and flushing layers,
reads at an LSN, and waiting for LSNs.

LSNs (invariants): disk_consistent_lsn <= last_record_lsn. Every record with
LSN <= disk_consistent_lsn is in a layer file named by index_part.json; records
above it are in in-memory layers and are re-streamed from the walservice after
a restart (ingest resumes at disk_consistent_lsn, so nothing is applied twice).
A branch's own records all have LSN > ancestor_lsn; below that it reads its
ancestor.

Crash consistency of a flush: the L0 delta file is written and fsync'd under a
temp name and renamed (layers/delta.py), then index_part.json is rewritten to
name it with the new disk_consistent_lsn. A crash before the index write leaves
an unnamed file that load() deletes; after it, the layer is part of the timeline.

With remote storage (remote_timeline.py) each index change is also queued for
upload (`on_index_changed`), and local layer files are a cache: reads go
through `read()`, which downloads a layer a read needs (missing or corrupt
locally) and retries; compaction pins the layers it reads and makes them local
first (layer_cache.py). The layer map and truncation lists come from the
index through snapshot_reader.py, as for readers of an uploaded index (gpu/).

Disk full (strata/disk_space.py): a flush that fails (out of space, or any
other error) leaves the frozen layer in memory, where reads keep finding it,
and is retried by the same flush task with backoff (FLUSH_RETRY_S, doubling
up to FLUSH_RETRY_MAX_S), not only at the next freeze; a half-written layer
file is removed first (its temp file by the writer, an unindexed one here).
Out of space, it first evicts local layer files that an uploaded index names
(layer_cache.evict_for_space; read again on demand), so with remote storage
the flush usually goes through at once. Meanwhile ingest is held back
(`wait_for_flush_room`, called by the tenant's back-pressure): it stops
taking WAL while `max_frozen_layers` frozen layers wait, so memory stays
bounded by about (max_frozen_layers + 1) x checkpoint_bytes, and the
walservice keeps the WAL. `checkpoint()` (Compact, Gc, shutdown) answers
RESOURCE_EXHAUSTED instead of waiting for space; the log says `disk_full` once
and `disk_space_back` when a write succeeds again.

Concurrency: a Timeline is owned by the event loop. `_index_lock` (asyncio)
serializes index_part changes (flush, compaction); file writing and compaction
run on the executor and touch only frozen or immutable layers. Compaction and
GC of all timelines of a tenant are serialized by the tenant's compaction lock,
so no layer a compaction reads is deleted under it. `gc_cutoff_lsn`,
`children` and `branch_reservations` belong to the event loop: GC raises the
cutoff and reads the branch points without an await in between (pageserver/gc.py).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar
from pathlib import Path

from pageserver import commit_log, compaction, gc, reconstruct
from pageserver.lsn_wait import wait_own_lsn
from pageserver.wal_seen_marker import has_seen_wal
from pageserver.commit_log import CommitLog, CommitPoint, legacy_commits
from pageserver.layers.in_memory_layer import InMemoryLayer
from pageserver.index_part import CommitTime, IndexPart, LayerEntry, RelationEntry, Truncation, write_index_part
from pageserver.keys import KEY_SPACE_END, page_key, rel_meta_key
from pageserver.page_cache import MaterializedPageCache
from pageserver.layer_map import HistoricLayer, LayerDownloadNeeded, LayerMap
from pageserver.layers.block_cache import BlockCache
from pageserver.layer_cache import LayerCache
from pageserver.layers.names import LayerName
from pageserver.snapshot_reader import index_layers, index_truncations
from pageserver.value import MISSING_REL, RelState, encode_image, encode_patch, encode_rel_state
from strata.disk_space import DiskSpaceWatch, disk_full_error, is_disk_full
from strata.errors import CorruptionError, FailedPrecondition, StrataError, Unavailable
from strata.ids import Lsn, TenantId, TimelineId
from strata.logs import EventLogger
from strata.v1 import records_pb2

if TYPE_CHECKING:
    from strata.remote_storage.interface import RemoteObject
    from pageserver.remote_timeline import RemoteTimelineClient

T = TypeVar("T")


@dataclass(frozen=True)
class TimelineConfig:
    """Tunables, with Neon's defaults scaled for a Python process (flags in server.py)."""

    checkpoint_bytes: int = 64 * 1024 * 1024  # freeze the open layer past this
    checkpoint_timeout_s: float = 600.0  # ... or once it is this old
    compaction_threshold: int = 10  # compact L0 into L1 at this many L0 layers
    image_threshold: int = 3  # write an image layer once this many deltas sit above the last image
    l1_target_bytes: int = 64 * 1024 * 1024  # cut L1 delta files at about this size
    l0_stall_threshold: int = 30  # ingest waits for compaction past this many L0 layers
    max_wait_lsn_s: float = 60.0  # a read for a future LSN without a deadline waits this long
    max_frozen_layers: int = 2  # ingest waits while this many frozen layers wait for their flush
    wal_idle_s: float = 10.0  # no new WAL and no read waiting this long: drop the WAL stream (ingest.py)
    wal_poll_s: float = 20.0  # ... then ask the walservice for new WAL about this often


# A failed layer flush is retried after this, doubling up to the max.
FLUSH_RETRY_S = 0.1
FLUSH_RETRY_MAX_S = 2.0


_CACHE_TOKENS = itertools.count(1)
def truncation_list(truncations: dict[int, list[tuple[Lsn, int]]]) -> tuple[Truncation, ...]:
    """Truncations as index_part.json stores them."""
    return tuple(Truncation(rel, lsn, nblocks) for rel, cuts in sorted(truncations.items()) for lsn, nblocks in cuts)


def relation_directory(states: dict[int, RelState]) -> tuple[RelationEntry, ...]:
    """The relation directory as index_part.json stores it."""
    return tuple(RelationEntry(rel, s.exists, s.nblocks) for rel, s in sorted(states.items()))


class Timeline:
    def __init__(
        self,
        *,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        page_size: int,
        directory: Path,
        index: IndexPart,
        ancestor: Timeline | None,
        config: TimelineConfig,
        block_cache: BlockCache,
        executor: Executor,
        log: EventLogger,
        layer_cache: LayerCache | None = None,
        remote_objects: dict[str, RemoteObject] | None = None,
        page_cache: MaterializedPageCache | None = None,
    ) -> None:
        self.page_cache = page_cache
        self._cache_token = next(_CACHE_TOKENS)  # never reused, so a deleted timeline's entries just age out
        self.tenant_id = tenant_id
        self.timeline_id = timeline_id
        self.page_size = page_size
        self.directory = directory
        self.index = index
        self.ancestor = ancestor
        self.ancestor_lsn = index.ancestor_lsn
        self.config = config
        self.executor = executor
        self.log = log
        self.layer_map = LayerMap(block_cache)
        self.layer_cache = layer_cache
        for layer in index_layers(index, directory, remote_objects=remote_objects):
            self.layer_map.historic.append(layer)
            if layer_cache is not None:
                layer_cache.adopt(layer)
        # Set by the tenant when remote storage is configured.
        self.remote: RemoteTimelineClient | None = None
        self.on_index_changed: Callable[[Timeline], None] | None = None
        self.disk_consistent_lsn: Lsn = index.disk_consistent_lsn
        self.last_record_lsn: Lsn = index.disk_consistent_lsn
        # Child timelines: id -> its branch point (ancestor_lsn), which GC keeps.
        self.children: dict[TimelineId, Lsn] = {}
        self.deleted = False
        self.on_persisted: Callable[[Timeline], None] | None = None
        self.lsn_event = asyncio.Event()  # set (and replaced) after each ingested batch: lsn_wait.py
        # The relation directory at last_record_lsn: every relation ever seen
        # here or inherited at the branch point (dropped ones with exists=False).
        self.rel_states: dict[int, RelState] = {r.rel: RelState(r.exists, r.nblocks) for r in index.relations}
        # rel -> [(lsn, nblocks after)] of this timeline's shrinks and drops,
        # ascending LSN (see reconstruct.last_cut).
        self.truncations: dict[int, list[tuple[Lsn, int]]] = index_truncations(index)
        self._index_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        # Why the last flush attempt failed (None after a success), and an event
        # pulsed after every attempt; both owned by the loop (see "Disk full").
        self.flush_error: Exception | None = None
        self._flush_progress = asyncio.Event()
        # The pageserver's disk-full state (shared through the layer cache).
        self.disk = layer_cache.disk if layer_cache is not None else DiskSpaceWatch(log, directory)
        # Commit times of ingested batches, ascending in both LSN and time.
        self._commit_times: list[CommitTime] = list(index.commit_times)
        # Every commit point (batch end) in the retained history (commit_log.py).
        if index.commits is not None:
            commits = list(index.commits)
        else:  # an index from before commit points were kept: its samples stand in
            commits = legacy_commits(
                [(c.lsn, c.time_us) for c in index.commit_times], index.ancestor_lsn, index.disk_consistent_lsn
            )
        self.commit_log = CommitLog(commits, index.ancestor_lsn)
        # Reads and branches below this are refused; raised (only) by gc().
        self.gc_cutoff_lsn = index.gc_cutoff_lsn
        # Branch points of CreateTimeline calls in flight (lsn -> count): GC
        # keeps them like children's until the child is added.
        self.branch_reservations: dict[Lsn, int] = {}
        # Set (by the WAL receiver, on the loop) when this timeline is ahead of the WAL
        # it streams from: it holds records the walservice lost, so nothing of it is
        # served from then on (DATA_LOSS) until an operator looks.
        self.stopped: CorruptionError | None = None
        # Whether this timeline ever took WAL past its start (wal_seen_marker.py):
        # set by the WAL receiver once the marker is durable.
        self.wal_seen = has_seen_wal(directory)
        # Reads waiting for WAL not ingested yet, and how they ask the WAL receiver
        # for it (set by the receiver, which unparks): pageserver/lsn_wait.py.
        self.lsn_waiters = 0
        self.wal_wanted: Callable[[], None] = lambda: None

    def stop(self, error: CorruptionError) -> None:
        """Refuse every read and branch from now on with `error`."""
        if self.stopped is None:
            self.stopped = error

    def __repr__(self) -> str:
        return f"Timeline({self.tenant_id}/{self.timeline_id})"

    @property
    def start_lsn(self) -> Lsn:
        return self.ancestor_lsn

    # -- ingest (event loop) ------------------------------------------------------

    def _open_layer(self) -> InMemoryLayer:
        if self.layer_map.open_layer is None:
            self.layer_map.open_layer = InMemoryLayer(self.last_record_lsn + 1)
        return self.layer_map.open_layer

    def _set_rel_state(self, layer: InMemoryLayer, rel: int, lsn: int, state: RelState) -> None:
        layer.put(rel_meta_key(rel), lsn, encode_rel_state(state))
        self.rel_states[rel] = state

    def ingest(
        self, lsn: Lsn, record: records_pb2.Record, record_bytes: bytes, *, payload_bytes: int = 0,
        end_of_batch: bool = False, commit_time_us: int = 0,
    ) -> None:
        """Apply one record (LSN order, each once) to the open in-memory layer;
        `end_of_batch`: it is its Append's last record (a commit point, committed
        at `commit_time_us`), `payload_bytes` its serialized size."""
        if lsn <= self.last_record_lsn:
            raise ValueError(f"{self}: record lsn={lsn} is not past last_record_lsn={self.last_record_lsn}")
        self.commit_log.record(payload_bytes)
        self._apply(lsn, record, record_bytes)
        if end_of_batch:
            self.commit_log.end_batch(lsn, commit_time_us)

    def _apply(self, lsn: Lsn, record: records_pb2.Record, record_bytes: bytes) -> None:
        layer = self._open_layer()
        kind = record.WhichOneof("kind")
        if kind in ("image", "patch"):
            body = getattr(record, kind)
            rel, blkno = body.rel, body.blkno
            if self.page_cache is not None:
                self.page_cache.invalidate(self._cache_token, rel, blkno)
            state = self.rel_states.get(rel, MISSING_REL)
            fresh = not state.covers(blkno)
            if kind == "image":
                layer.put(page_key(rel, blkno), lsn, encode_image(body.page))
            else:
                layer.put(page_key(rel, blkno), lsn, encode_patch(record_bytes, from_zero=fresh))
            if fresh:
                nblocks = max(blkno + 1, state.nblocks if state.exists else 0)
                self._set_rel_state(layer, rel, lsn, RelState(True, nblocks))
        elif kind == "rel_size":
            rel, nblocks = record.rel_size.rel, record.rel_size.nblocks
            state = self.rel_states.get(rel, MISSING_REL)
            if state.exists and nblocks < state.nblocks:
                self.truncations.setdefault(rel, []).append((lsn, nblocks))
                if self.page_cache is not None:
                    self.page_cache.invalidate_relation(self._cache_token, rel)
            self._set_rel_state(layer, rel, lsn, RelState(True, nblocks))
        elif kind == "rel_drop":
            rel = record.rel_drop.rel
            if self.rel_states.get(rel, MISSING_REL).exists:
                self.truncations.setdefault(rel, []).append((lsn, 0))
                if self.page_cache is not None:
                    self.page_cache.invalidate_relation(self._cache_token, rel)
            self._set_rel_state(layer, rel, lsn, RelState(False, 0))
        else:
            raise ValueError(f"{self}: record at lsn={lsn} has no kind")
        self.last_record_lsn = lsn

    def ingested(self, commit_time_us: int) -> None:
        """After a batch of records: wake readers, note the commit time, maybe freeze."""
        self.lsn_event.set()
        self.lsn_event = asyncio.Event()
        if commit_time_us and (not self._commit_times or self._commit_times[-1].time_us < commit_time_us):
            self._commit_times.append(CommitTime(self.last_record_lsn, commit_time_us))
            self._commit_times = commit_log.thin_commit_times(self._commit_times)
        elif commit_time_us and self._commit_times[-1].time_us == commit_time_us:
            # The same commit round, streamed in more than one message (a large Append is cut
            # into chunks): the sample moves to its end, so it never names an LSN inside a batch.
            self._commit_times[-1] = CommitTime(self.last_record_lsn, commit_time_us)
        self.maybe_freeze()

    def maybe_freeze(self, force: bool = False) -> bool:
        layer = self.layer_map.open_layer
        if layer is None or layer.empty:
            return False
        old = time.monotonic() - layer.created_at >= self.config.checkpoint_timeout_s
        if not (force or old or layer.bytes >= self.config.checkpoint_bytes):
            return False
        layer.freeze()
        layer.relations_at_end = dict(self.rel_states)
        layer.truncations_at_end = truncation_list(self.truncations)
        self.layer_map.frozen.append(layer)
        self.layer_map.open_layer = None
        if self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_frozen())
        return True

    async def _flush_frozen(self) -> None:
        """Flush the frozen layers oldest first; a failure is retried with backoff
        until it goes through (see "Disk full")."""
        backoff = FLUSH_RETRY_S
        try:
            while self.layer_map.frozen and not self.deleted:
                mem = self.layer_map.frozen[0]
                try:
                    await self._flush_one(mem)
                except Exception as exc:  # noqa: BLE001 - logged; the layer stays in memory and is retried
                    self._flush_failed(mem, exc)
                    self._pulse_flush_progress()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, FLUSH_RETRY_MAX_S)
                    continue
                backoff = FLUSH_RETRY_S
                if self.flush_error is not None:
                    self.log.info("layer_flush_recovered", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.disk_consistent_lsn)
                    self.flush_error = None
                self.disk.succeeded()
                self._pulse_flush_progress()
        finally:
            self._flush_task = None
            self._pulse_flush_progress()

    def _flush_failed(self, mem: InMemoryLayer, exc: Exception) -> None:
        """Log a failed flush (once per outage) and, out of space, evict uploaded
        layer files to make room for the retry."""
        first = self.flush_error is None
        if is_disk_full(exc):
            self.flush_error = disk_full_error(
                "pageserver", self.directory, f"the in-memory layer up to lsn={mem.end_lsn - 1} was not flushed", exc
            )
            self.disk.failed("layer_flush", exc, tenant=self.tenant_id, timeline=self.timeline_id)
            freed = self.layer_cache.evict_for_space(mem.bytes) if self.layer_cache is not None else 0
            if first:
                self.log.warning(
                    "layer_flush_failed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.disk_consistent_lsn,
                    reason="disk_full", evicted_bytes=freed, error=self.flush_error, action="retrying",
                )
            return
        self.flush_error = exc
        if first:
            self.log.error(
                "layer_flush_failed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.disk_consistent_lsn,
                error=repr(exc), action="retrying",
            )

    def _pulse_flush_progress(self) -> None:
        self._flush_progress.set()
        self._flush_progress = asyncio.Event()

    async def wait_for_flush_room(self) -> None:
        """Back-pressure: wait while `max_frozen_layers` frozen layers wait for
        their flush (a full disk), so ingest does not grow memory without bound."""
        if len(self.layer_map.frozen) < self.config.max_frozen_layers or self.deleted:
            return
        self.log.info(
            "ingest_paused", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.last_record_lsn,
            frozen_layers=len(self.layer_map.frozen), reason="flush_behind",
        )
        while len(self.layer_map.frozen) >= self.config.max_frozen_layers and not self.deleted:
            if self._flush_task is None:
                self._flush_task = asyncio.create_task(self._flush_frozen())
            await self._flush_progress.wait()
        self.log.info("ingest_resumed", tenant=self.tenant_id, timeline=self.timeline_id, lsn=self.last_record_lsn)

    async def _flush_one(self, mem: InMemoryLayer) -> None:
        name = LayerName("delta", 0, KEY_SPACE_END, mem.start_lsn, mem.end_lsn, self.index.generation)
        path = self.directory / name.file_name
        loop = asyncio.get_running_loop()
        summary = await loop.run_in_executor(self.executor, compaction.write_l0_delta, path, mem, self.tenant_id, self.timeline_id)
        layer = HistoricLayer(name, path, summary.file_size, summary.file_checksum)
        async with self._index_lock:
            entry = LayerEntry(name.file_name, summary.file_size, summary.file_checksum)
            index = replace(
                self.index.with_layers([*self.index.layers, entry], mem.end_lsn - 1),
                commit_times=tuple(self._commit_times),
                commits=self.commit_log.durable(Lsn(mem.end_lsn - 1)),
                relations=relation_directory(mem.relations_at_end),
                truncations=mem.truncations_at_end,
            )
            try:
                await loop.run_in_executor(self.executor, write_index_part, self.directory, index)
            except BaseException:
                # No index names the file: remove it now (it holds space a retry needs).
                path.unlink(missing_ok=True)
                raise
            self.index = index
            self.layer_map.historic.append(layer)
            self.layer_map.frozen.remove(mem)
            self.disk_consistent_lsn = mem.end_lsn - 1
        if self.layer_cache is not None:
            self.layer_cache.adopt(layer)
        self._index_changed()
        self.log.info(
            "layer_flushed",
            tenant=self.tenant_id,
            timeline=self.timeline_id,
            layer=name.file_name,
            lsn=self.disk_consistent_lsn,
            bytes=summary.file_size,
        )
        if self.on_persisted is not None:
            self.on_persisted(self)

    async def checkpoint(self) -> None:
        """Freeze the open layer and wait until everything ingested is in layer
        files; a flush that fails meanwhile raises (DiskFull when out of space:
        it goes on retrying in the background)."""
        self.maybe_freeze(force=True)
        while self.layer_map.frozen and not self.deleted:
            if self._flush_task is None:
                self._flush_task = asyncio.create_task(self._flush_frozen())
            progress = self._flush_progress
            await progress.wait()
            if self.layer_map.frozen and self.flush_error is not None:
                error = self.flush_error
                if isinstance(error, StrataError):
                    raise error
                raise Unavailable(f"{self}: the layer flush failed: {error!r}; it is retried") from error

    async def commit_layers(self, remove: list[HistoricLayer], add: list[HistoricLayer], **index_fields) -> None:
        """Swap layers in the index and the map (compaction, GC), then delete the
        old files. `index_fields`: other IndexPart fields to change with it (GC)."""
        loop = asyncio.get_running_loop()
        async with self._index_lock:
            gone = {l.name.file_name for l in remove}
            entries = [e for e in self.index.layers if e.file_name not in gone]
            entries += [LayerEntry(l.name.file_name, l.file_size, l.file_checksum) for l in add]
            index = replace(self.index.with_layers(entries, self.index.disk_consistent_lsn), **index_fields)
            await loop.run_in_executor(self.executor, write_index_part, self.directory, index)
            self.index = index
            self.layer_map.replace_historic(remove, add)
        for layer in remove:
            if self.layer_cache is not None:
                self.layer_cache.forget(layer)
            layer.close()
            layer.path.unlink(missing_ok=True)
        for layer in add:
            if self.layer_cache is not None:
                self.layer_cache.adopt(layer)
        self._index_changed()

    def _index_changed(self) -> None:
        if self.on_index_changed is not None:
            self.on_index_changed(self)
        if self.layer_cache is not None:
            self.layer_cache.evict()

    def layer_by_name(self, file_name: str) -> HistoricLayer | None:
        for layer in self.layer_map.historic:
            if layer.name.file_name == file_name:
                return layer
        return None

    @property
    def remote_consistent_lsn(self) -> Lsn:
        return self.remote.remote_consistent_lsn if self.remote is not None else Lsn(0)

    def persisted_lsn(self) -> Lsn:
        """What the walservice may trim below: remote_consistent_lsn with remote
        storage, else disk_consistent_lsn."""
        return self.remote.remote_consistent_lsn if self.remote is not None else self.disk_consistent_lsn

    async def _pinned_local(self, layers: list[HistoricLayer]):
        for layer in layers:
            layer.pins += 1
        try:
            if self.layer_cache is not None:
                await self.layer_cache.ensure_local(layers)
        except BaseException:
            self._unpin(layers)
            raise

    @staticmethod
    def _unpin(layers: list[HistoricLayer]) -> None:
        for layer in layers:
            layer.pins -= 1

    def chain_layers(self) -> list[HistoricLayer]:
        """Every layer file of this timeline and its ancestors."""
        out: list[HistoricLayer] = []
        tl: Timeline | None = self
        while tl is not None:
            out.extend(tl.layer_map.historic)
            tl = tl.ancestor
        return out

    async def read(self, fn: Callable[[], T]) -> T:
        """Run the synchronous read `fn` (on the loop); when it needs a layer that
        is not local, or is corrupt locally, download it (on the executor) and retry."""
        attempts: dict[int, int] = {}
        pinned: list[HistoricLayer] = []  # downloaded for this read: not evicted before it is done
        try:
            while True:
                try:
                    return fn()
                except LayerDownloadNeeded as need:
                    n = attempts[id(need.layer)] = attempts.get(id(need.layer), 0) + 1
                    if self.layer_cache is None or n > 3:
                        raise Unavailable(f"{self}: cannot read layer {need.layer.name.file_name}: {need}") from need
                    need.layer.pins += 1
                    pinned.append(need.layer)
                    try:
                        await self.layer_cache.download(need)
                    except Exception:
                        if any(l is need.layer for l in self.chain_layers()):
                            raise
                        # Compaction or GC replaced it meanwhile (its remote object may be
                        # gone already): the retried read walks the new layer map.
        finally:
            if pinned:
                self._unpin(pinned)
                if self.layer_cache is not None:
                    self.layer_cache.evict()

    async def compact(self, tenant_lock: asyncio.Lock, force: bool = False) -> None:
        """L0 -> L1 when enough L0s piled up (or any, with force), then image layers
        where deltas got deep. One compaction per tenant at a time (tenant_lock)."""
        loop = asyncio.get_running_loop()
        async with tenant_lock:
            if self.deleted:
                return
            l0 = self.layer_map.l0_deltas()
            if l0 and (force or len(l0) >= self.config.compaction_threshold):
                await self._pinned_local(l0)
                try:
                    l1 = await loop.run_in_executor(
                        self.executor, compaction.compact_l0, l0, self.directory, self.tenant_id, self.timeline_id,
                        self.index.generation, self.config.l1_target_bytes, self.layer_map.block_cache,
                    )
                finally:
                    self._unpin(l0)
                await self.commit_layers(l0, l1)
                self.log.info(
                    "compacted_l0", tenant=self.tenant_id, timeline=self.timeline_id, l0=len(l0), l1=len(l1),
                    lsn=l0[-1].name.lsn_end - 1,
                )
            partitions = compaction.image_partitions(self, self.config.image_threshold)
            if partitions and not self.ancestors_ready():
                # An image reads the ancestors at the branch point: wait until
                # they re-ingested it (after a restart); a later compaction does it.
                self.log.info("images_deferred", tenant=self.tenant_id, timeline=self.timeline_id, reason="ancestor_catching_up")
            elif partitions:
                lsn = self.disk_consistent_lsn
                images = await self._write_images(partitions, lsn)
                await self.commit_layers([], images)
                self.log.info("created_images", tenant=self.tenant_id, timeline=self.timeline_id, layers=len(images), lsn=lsn)

    async def _write_images(self, partitions: list[tuple[int, int]], lsn: int) -> list[HistoricLayer]:
        """Image layers at `lsn` for these key ranges (not yet in the index)."""
        # Reconstruction on the executor may read any layer of the chain:
        # make them all local and keep them from eviction meanwhile.
        chain = self.chain_layers()
        await self._pinned_local(chain)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, compaction.create_image_layers, self, partitions, list(self.rel_states), lsn,
                self.index.generation,
            )
        finally:
            self._unpin(chain)

    # -- GC (docs/design/0003-remote-storage.md) ------------------------------------

    def pitr_cutoff(self, now_us: int, pitr_seconds: int) -> Lsn:
        """The cutoff the PITR window allows now: the LSN of the last commit at or
        before now - pitr_seconds, at most disk_consistent_lsn (GC works on layer
        files; rounded down to a commit), never below the current cutoff."""
        lsn = self.commit_lsn_at(now_us - pitr_seconds * 1_000_000)
        if lsn is None:
            return self.gc_cutoff_lsn
        # A commit point, so that a read or branch rounded down from above it stays readable.
        commit = self.commit_log.last_at_or_below(min(lsn, self.disk_consistent_lsn))
        return max(self.gc_cutoff_lsn, commit.end_lsn if commit is not None else self.gc_cutoff_lsn)

    def retained_branch_points(self) -> list[Lsn]:
        """Branch points of children (set by the tenant) and of branches being created."""
        return sorted({*self.children.values(), *self.branch_reservations})

    async def gc(self, tenant_lock: asyncio.Lock, now_us: int, pitr_seconds: int) -> gc.GcResult:
        """Raise the cutoff to the PITR window and remove the layers no retained
        LSN needs (see pageserver/gc.py), writing an image at the cutoff when that
        frees deltas. Remote objects of removed layers go after the new index is
        uploaded (the upload queue); leaked and old vector index objects now."""
        async with tenant_lock:
            if self.deleted:
                return gc.GcResult(self.gc_cutoff_lsn)
            cutoff = self.pitr_cutoff(now_us, pitr_seconds)
            raised = cutoff > self.gc_cutoff_lsn
            self.gc_cutoff_lsn = cutoff  # from here on reads and branches below it are refused
            images: list[HistoricLayer] = []
            names = [l.name for l in self.layer_map.historic]
            frees = gc.image_would_free(names, cutoff, self.retained_branch_points(), self.index.generation)
            sizes = {l.name: l.file_size for l in self.layer_map.historic}
            worth = gc.image_worth_writing(
                len(frees), sum(sizes[n] for n in frees), self.logical_size(), self.config.image_threshold
            )
            if worth and cutoff > self.ancestor_lsn and self.ancestors_ready():
                images = await self._write_images([(0, KEY_SPACE_END)], cutoff)
            # After the awaits: the layers, children and reservations as they are now.
            names = [l.name for l in self.layer_map.historic] + [l.name for l in images]
            doomed = set(gc.garbage(names, cutoff, self.retained_branch_points()))
            remove = [l for l in self.layer_map.historic if l.name in doomed]
            kept_times = [c for c in self._commit_times if c.lsn >= cutoff]
            older = [c for c in self._commit_times if c.lsn < cutoff]
            self._commit_times = older[-1:] + kept_times  # the newest at or below the cutoff answers for it
            self.commit_log.gc(cutoff)
            if remove or images or raised:
                await self.commit_layers(
                    remove, images, gc_cutoff_lsn=cutoff, commit_times=tuple(self._commit_times),
                    commits=self.commit_log.durable(self.index.disk_consistent_lsn),
                )
        leaked = vectors = 0
        if self.remote is not None:
            leaked = await self.remote.sweep_unindexed()
            vectors = await self.remote.delete_old_vector_indexes(cutoff, self.retained_branch_points())
        result = gc.GcResult(
            cutoff, len(remove), sum(l.file_size for l in remove), len(images), leaked, vectors,
        )
        self.log.info(
            "gc_done", tenant=self.tenant_id, timeline=self.timeline_id, lsn=cutoff, pitr_s=pitr_seconds,
            removed_layers=result.removed_layers, removed_bytes=result.removed_bytes, images=result.images_created,
            leaked_objects=leaked, vector_objects=vectors,
        )
        return result

    def check_readable(self, lsn: Lsn, what: str = "read") -> None:
        """FAILED_PRECONDITION for a read or a branch below the GC cutoff, except
        at a child's branch point (GC keeps what it reads there). A read of a
        branch at or below its branch point reads the ancestor: its cutoff counts.
        DATA_LOSS once the timeline is stopped."""
        if self.stopped is not None:
            raise self.stopped
        tl: Timeline | None = self
        while tl is not None and lsn:
            if lsn < tl.gc_cutoff_lsn and lsn not in tl.children.values():
                raise FailedPrecondition(
                    f"tenant_id={self.tenant_id} timeline_id={self.timeline_id}: cannot {what} at lsn={lsn}: it is "
                    f"below the gc cutoff gc_cutoff_lsn={tl.gc_cutoff_lsn} of timeline_id={tl.timeline_id} (history "
                    f"older than the tenant's PITR window is garbage collected); use an lsn >= {tl.gc_cutoff_lsn}"
                )
            if lsn > tl.ancestor_lsn:
                return
            tl = tl.ancestor

    def needs_compaction(self) -> bool:
        return len(self.layer_map.l0_deltas()) >= self.config.compaction_threshold

    # -- reads (event loop) -----------------------------------------------------

    def ancestors_ready(self) -> bool:
        """Whether every ancestor has ingested up to its branch point (after a
        crash an ancestor re-ingests what it held only in memory)."""
        tl: Timeline = self
        while tl.ancestor is not None:
            if tl.ancestor.last_record_lsn < tl.ancestor_lsn:
                return False
            tl = tl.ancestor
        return True

    async def wait_for_lsn(self, lsn: Lsn, timeout: float | None) -> None:
        """Wait until this timeline has ingested `lsn` and every ancestor its
        branch point: a read of a branch falls through to the ancestor at
        ancestor_lsn, which after a restart may still be re-ingesting."""
        wait_s = self.config.max_wait_lsn_s if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + wait_s
        await wait_own_lsn(self, lsn, deadline, wait_s)
        if self.ancestor is not None and not self.ancestors_ready():
            await self.ancestor.wait_for_lsn(self.ancestor_lsn, deadline - time.monotonic())

    def read_lsn(self, lsn: Lsn) -> Lsn:
        """The LSN a read at `lsn` uses (0 = the latest ingested)."""
        return lsn or self.last_record_lsn

    def cached_page(self, rel: int, blkno: int, lsn: Lsn) -> bytes | None:
        """The page from the materialized page cache, if it holds it for `lsn`."""
        if self.page_cache is None:
            return None
        return self.page_cache.get(self._cache_token, rel, blkno, lsn)

    def get_page(self, rel: int, blkno: int, lsn: Lsn) -> bytes:
        page = self.cached_page(rel, blkno, lsn)
        if page is None:
            page = reconstruct.get_page(self, rel, blkno, lsn, self.page_size)
            if self.page_cache is not None and lsn == self.last_record_lsn:
                # Rebuilt at the latest LSN, with no await since: ingest will evict
                # it when a record changes it (page_cache.py).
                self.page_cache.put(self._cache_token, rel, blkno, lsn, page)
        return page

    def get_rel_state(self, rel: int, lsn: Lsn) -> RelState:
        return reconstruct.rel_state(self, rel, lsn)[0]

    def commit_at_or_below(self, lsn: Lsn, what: str = "read") -> Lsn:
        """The end LSN of the last commit at or below `lsn` (0: the latest ingested):
        this timeline's own, or at or below the branch point its ancestor's.
        FAILED_PRECONDITION naming the nearest commits when there is none (an LSN
        inside the first commit, or whose commits GC removed); an empty root
        timeline's latest is its start, 0."""
        lsn = lsn or self.last_record_lsn
        tl: Timeline = self
        while True:
            commit = tl.commit_log.last_at_or_below(lsn)
            if commit is not None:  # a branch's own commits all lie past its branch point
                return commit.end_lsn
            if tl.ancestor is None:
                if lsn == 0:  # an empty root timeline: its start is the one state there is
                    return Lsn(0)
                break
            if lsn >= tl.ancestor_lsn:  # a branch point is a commit of the ancestor (or was taken as one)
                return tl.ancestor_lsn
            tl = tl.ancestor
        after = self.commit_log.first_above(lsn)
        raise FailedPrecondition(
            f"tenant_id={self.tenant_id} timeline_id={self.timeline_id}: cannot {what} at lsn={lsn}: no commit at or "
            f"below it is retained (gc_cutoff_lsn={self.gc_cutoff_lsn}); the nearest commit after it is "
            + (f"lsn={after.end_lsn}" if after is not None else "not ingested yet")
        )

    def list_commits(self, start_lsn: Lsn, end_lsn: Lsn, include_ancestors: bool) -> list[tuple[TimelineId, CommitPoint]]:
        """Commits with start_lsn <= end_lsn <= end_lsn (0: no bound), ascending:
        this timeline's own (all past its branch point), and with include_ancestors
        its ancestors' at or below the branch point before them."""
        out = [(self.timeline_id, c) for c in self.commit_log.in_range(start_lsn, end_lsn)]
        if include_ancestors and self.ancestor is not None and start_lsn <= self.ancestor_lsn:
            up_to = min(end_lsn, self.ancestor_lsn) if end_lsn else self.ancestor_lsn
            out = self.ancestor.list_commits(start_lsn, up_to, True) + out
        return out

    def commit_lsn_at(self, timestamp_us: int) -> Lsn | None:
        """The LSN of the last commit at or before `timestamp_us` (None: none known)."""
        times = self._commit_times
        i = bisect.bisect_right([c.time_us for c in times], timestamp_us)
        return times[i - 1].lsn if i else None

    def lsn_by_timestamp(self, timestamp_us: int) -> tuple[Lsn, str]:
        """The LSN at which the timeline stood at `timestamp_us`, and its kind:
        "present": the LSN of the last commit at or before it, inside the
        retained history; "past": the time is before the retained history (before
        the first commit, or history GC removed), answered with the oldest LSN
        still readable (gc_cutoff_lsn, or the timeline's start); "future": the
        time is after the last commit, answered with that commit's LSN.

        A branch's history before its own first commit is its ancestor's up to
        the branch point, so such a time is answered by the ancestor (at most
        ancestor_lsn)."""
        oldest = max(self.start_lsn, self.gc_cutoff_lsn)
        lsn = self.commit_lsn_at(timestamp_us)
        if lsn is None and self.ancestor is not None:
            up_to, kind = self.ancestor.lsn_by_timestamp(timestamp_us)
            if up_to < self.ancestor_lsn:
                return up_to, kind
            return self.ancestor_lsn, "future" if not self._commit_times else "present"
        if lsn is None or lsn < oldest:
            return oldest, "past"
        if timestamp_us > self._commit_times[-1].time_us:
            return lsn, "future"
        return lsn, "present"

    # -- sizes --------------------------------------------------------------------

    def physical_size(self) -> int:
        return sum(l.file_size for l in self.layer_map.historic)

    def logical_size(self) -> int:
        """Bytes of every existing relation at last_record_lsn."""
        return self.page_size * sum(s.nblocks for s in self.rel_states.values() if s.exists)

    async def shutdown(self, flush: bool) -> None:
        if flush and not self.deleted:
            try:
                await self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - shutdown goes on; the WAL still has it
                self.log.warning("shutdown_flush_failed", tenant=self.tenant_id, timeline=self.timeline_id, error=repr(exc))
        if self._flush_task is not None:
            self._flush_task.cancel()  # (retrying a failed flush: the WAL still has what it held)
        self.layer_map.close()
