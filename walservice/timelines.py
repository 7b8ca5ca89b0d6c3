"""The timelines a walservice node holds, and their directories.

Layout under the data dir::

    timelines/<tenant_id>/<timeline_id>/control          (control_file.py)
    timelines/<tenant_id>/<timeline_id>/<lsn:016x>.wal   (segment.py)

Creation is crash-safe: the directory is built as `.<timeline_id>.tmp` (control
file and first segment, fsync'd), then renamed into place and the parent fsync'd;
a creation that fails (out of disk, out of file descriptors) removes its `.tmp`
directory (and a tenant directory it made) at once, and what a crash left is
removed on start. Out of space (ENOSPC, EDQUOT) it answers RESOURCE_EXHAUSTED
naming the data dir and its free bytes; the same call succeeds once space is back.

Open files: each timeline keeps its open segment's write descriptor between
appends, in one LRU for the node of at most `max_open_segments` idle descriptors
(walservice/open_segments.py; `--max-open-segments`, by default a quarter of
RLIMIT_NOFILE), so thousands of timelines fit in a small descriptor limit. Deletion (`delete`) renames
the directory to `.<timeline_id>.deleted` before removing it, so a crash
leaves the whole timeline or a hidden leftover that the next start removes.

A timeline whose files fail recovery is kept as *broken*: every call on it
answers DATA_LOSS with what was found, it is logged at level=error, and nothing
of it is served.

Lost WAL: segment files missing while the control file says there was data (no
segment file at all, a gap, a first segment above what trimming may have
removed, WAL ending below the control file's floor_lsn / commit_lsn /
backup_lsn / remote_consistent_lsn, or damage below that floor, which is never
cut as a torn tail: those LSNs were acknowledged or served). On a single node the timeline is broken (DATA_LOSS): the
data is gone and nothing may pretend otherwise. On a node of a cluster it is
*lost* (`event=timeline_lost`, level=error): its directory moves to
`<data dir>/lost/` for inspection and the node holds no such timeline until its
peers recreate it (PeerCreateTimeline, as for a wiped disk: it abstains in their
term, or its own old term if higher, and catches up before it votes or serves).

Concurrency: the set is owned by the event loop; `create` runs its file work on
the executor under `_create_lock` so two creations never race on one directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from concurrent.futures import Executor
from pathlib import Path

from strata import ids
from strata.disk_space import DiskSpaceWatch, disk_full_error, is_disk_full
from strata.durable_file import fsync_dir
from strata.errors import AlreadyExists, CorruptionError, NotFound, StrataError
from strata.logs import EventLogger
from walservice.control_file import ABSTAIN, CONTROL_FILE_NAME, NO_VOTE, TimelineControl, read_control
from walservice.open_segments import OpenSegmentFiles, default_capacity
from walservice.sequencer import Timeline
from walservice.segment import parse_segment_file_name, segment_file_name
from walservice.term_history import TermHistory, history
from walservice.wal_restore import OffloadedWal
from walservice.wal_storage import DEFAULT_SEGMENT_BYTES, MissingWal, RecoveryReport, TimelineWal

if TYPE_CHECKING:
    from walservice.replication import Cluster


class TimelineSet:
    def __init__(
        self,
        data_dir: Path,
        executor: Executor,
        log: EventLogger,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_open_segments: int | None = None,
        *,
        preallocate: bool = True,
    ) -> None:
        self.root = data_dir / "timelines"
        # New segments are written in full and trimmed ones recycled (walservice/wal_storage.py).
        self.preallocate = preallocate
        self.executor = executor
        self.log = log
        self.segment_bytes = segment_bytes
        # Set before `load` with --remote-storage: repairs damaged segments and serves
        # trimmed WAL from the offloaded copy (walservice/wal_restore.py).
        self.offloaded: OffloadedWal | None = None
        # The open segments' write descriptors of every timeline, bounded (an LRU).
        self.open_files = OpenSegmentFiles(max_open_segments or default_capacity())
        self._timelines: dict[tuple[str, str], Timeline] = {}
        self._broken: dict[tuple[str, str], CorruptionError] = {}
        # Timelines this node of a cluster lost (see "Lost WAL"): their last control
        # file, until the peers recreate them here. Owned by the event loop.
        self._lost: dict[tuple[str, str], TimelineControl] = {}
        self._create_lock = asyncio.Lock()
        # The node's disk-full state, shared by its timelines (strata/disk_space.py).
        self.disk = DiskSpaceWatch(log, data_dir)
        # Set before `load` on a node of a cluster: every timeline gets a replica.
        self.cluster: Cluster | None = None
        # Run by `delete` after the timeline stopped, before its files go (the
        # offloader deletes the offloaded WAL): (tenant_id, timeline_id).
        self.deletion_hooks: list[Callable[[str, str], Awaitable[None]]] = []

    def _new_timeline(self, wal: TimelineWal) -> Timeline:
        wal.offloaded = self.offloaded
        timeline = Timeline(wal, self.executor, self.log, disk=self.disk)
        if self.cluster is not None:
            self.cluster.attach(timeline)
        return timeline

    def holds(self, tenant_id: str, timeline_id: str) -> bool:
        return (ids.tenant_id(tenant_id), ids.timeline_id(timeline_id)) in self._timelines

    def load(self) -> None:
        """Recover every timeline on disk (at start, before serving)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for tenant_dir in sorted(self.root.iterdir()):
            for tl_dir in sorted(tenant_dir.iterdir()):
                if tl_dir.name.startswith("."):
                    shutil.rmtree(tl_dir)
                    continue
                key = (tenant_dir.name, tl_dir.name)
                try:
                    control = read_control(tl_dir)
                    had_segments = any(parse_segment_file_name(p.name) is not None for p in tl_dir.iterdir())
                    wal = TimelineWal(tl_dir, control, self.segment_bytes, self.open_files, preallocate=self.preallocate)
                    if not had_segments:
                        # Creation always writes the first segment: they were deleted.
                        raise MissingWal(f"no WAL segment file is left (the control file names term {control.term}, "
                                         f"commit_lsn={control.commit_lsn})")
                    wal, report = self._recover_or_repair(tl_dir, control, wal)
                    floor = control.recovery_floor
                    if report.end_lsn < floor:
                        wal.close()
                        raise MissingWal(f"the WAL ends at lsn={report.end_lsn}, but the control file says lsn={floor} "
                                         "was durable (floor_lsn, commit_lsn, backup_lsn or remote_consistent_lsn): "
                                         "segments are missing")
                except MissingWal as exc:
                    if self.cluster is not None:
                        self._lose(key, tl_dir, control, exc)
                        continue
                    self._broken[key] = CorruptionError(
                        f"tenant={key[0]} timeline={key[1]} is stopped: WAL was lost: {exc}"
                    )
                    self.log.error("timeline_broken", tenant=key[0], timeline=key[1], error=exc, lost_wal=True)
                    continue
                except (CorruptionError, OSError) as exc:
                    err = exc if isinstance(exc, CorruptionError) else CorruptionError(str(exc))
                    self._broken[key] = CorruptionError(
                        f"tenant={key[0]} timeline={key[1]} is stopped: its WAL failed recovery: {err}"
                    )
                    self.log.error("timeline_broken", tenant=key[0], timeline=key[1], error=err)
                    continue
                self._timelines[key] = self._new_timeline(wal)
                self.log.info(
                    "timeline_recovered",
                    tenant=key[0],
                    timeline=key[1],
                    lsn=report.end_lsn,
                    first_lsn=report.first_lsn,
                    segments=report.segments,
                    records=report.records,
                    cut_bytes=report.truncated_bytes,
                )

    def _recover_or_repair(self, tl_dir: Path, control: TimelineControl, wal: TimelineWal) -> tuple[TimelineWal, RecoveryReport]:
        """Recover a timeline's WAL; when it is damaged and its offloaded copy mends
        it (walservice/wal_restore.py, "Repair"), repair and recover once more."""
        try:
            return wal, wal.recover(self.log)
        except CorruptionError as exc:
            if self.offloaded is None:
                raise
            try:
                repaired = self.offloaded.repair_segments(tl_dir, control.tenant_id, control.timeline_id, self.log)
            except (StrataError, OSError) as repair_exc:
                self.log.warning("wal_repair_failed", tenant=control.tenant_id, timeline=control.timeline_id, error=repair_exc)
                raise exc from None
            if not repaired:
                raise
        wal = TimelineWal(tl_dir, control, self.segment_bytes, self.open_files, preallocate=self.preallocate)
        wal.offloaded = self.offloaded
        return wal, wal.recover(self.log)

    def _lose(self, key: tuple[str, str], tl_dir: Path, control: TimelineControl, exc: CorruptionError) -> None:
        """A node of a cluster lost this timeline's WAL: set its files aside (never
        served, never deleted) and wait for the peers to recreate it here."""
        lost_dir = self.root.parent / "lost" / key[0]
        lost_dir.mkdir(parents=True, exist_ok=True)
        target = lost_dir / f"{key[1]}.{int(time.time())}"
        tl_dir.rename(target)
        fsync_dir(tl_dir.parent)
        self._lost[key] = control
        self.log.error(
            "timeline_lost", tenant=key[0], timeline=key[1], term=control.term, lsn=control.commit_lsn,
            moved_to=str(target), error=exc,
        )

    def get(self, tenant_id: str, timeline_id: str) -> Timeline:
        if not self._broken:
            # Once per append: a live timeline's key is a pair of valid ids, so a hit
            # needs no id checks (a miss gets them, and the contract's error).
            timeline = self._timelines.get((tenant_id, timeline_id))  # type: ignore[arg-type]
            if timeline is not None:
                return timeline
        key = (ids.tenant_id(tenant_id), ids.timeline_id(timeline_id))
        if key in self._broken:
            raise self._broken[key]
        try:
            return self._timelines[key]
        except KeyError:
            raise NotFound(
                f"tenant_id={tenant_id} timeline_id={timeline_id}: no such timeline on this walservice "
                "(CreateTimeline first)"
            ) from None

    def __iter__(self):
        return iter(list(self._timelines.values()))

    async def delete(self, tenant_id: str, timeline_id: str) -> bool:
        """Delete a timeline on this node: stop it (appends and streams end; it
        is NOT_FOUND from now on), run the deletion hooks (its offloaded WAL),
        then its directory: renamed to a hidden name (one atomic step; `load`
        removes what a crash left of it) and removed. Idempotent: returns
        whether anything of it was here. A hook's failure leaves the files for
        a retry (until then a restart would load the timeline again)."""
        key = (ids.tenant_id(tenant_id), ids.timeline_id(timeline_id))
        directory = self.root / key[0] / key[1]
        async with self._create_lock:
            timeline = self._timelines.pop(key, None)
            broken = self._broken.pop(key, None)
            existed = timeline is not None or broken is not None or directory.exists()
            if timeline is not None:
                if timeline.replica is not None:
                    await timeline.replica.close()
                await timeline.close()
            for hook in self.deletion_hooks:
                await hook(key[0], key[1])
            if directory.exists():
                await asyncio.get_running_loop().run_in_executor(self.executor, _delete_dir, directory)
        if existed:
            self.log.info("timeline_deleted", tenant=key[0], timeline=key[1])
        return existed

    async def create(
        self,
        tenant_id: str,
        timeline_id: str,
        start_lsn: int,
        page_size: int,
        *,
        abstain_term: int = 0,
        first_lsn: int | None = None,
        term_history: TermHistory = (),
        remote_consistent_lsn: int = 0,
        backup_lsn: int = 0,
    ) -> Timeline:
        """Create a timeline, or return the existing one if its parameters match.

        Replication (docs/design/0005-replication.md, "Disk loss"): with
        `abstain_term` > 0 the timeline exists on peers already: it starts at that
        term, abstaining in it, with an empty log at `first_lsn` (the sender's oldest
        local LSN) under the sender's `term_history` and LSNs."""
        key = (ids.tenant_id(tenant_id), ids.timeline_id(timeline_id))
        size = ids.page_size(page_size)
        async with self._create_lock:
            existing = self._timelines.get(key)
            if existing is None and key in self._broken:
                raise self._broken[key]
            if existing is not None:
                c = existing.control
                if (c.start_lsn, c.page_size) != (start_lsn, size):
                    raise AlreadyExists(
                        f"tenant_id={tenant_id} timeline_id={timeline_id} exists with start_lsn={c.start_lsn} "
                        f"page_size={c.page_size}, not start_lsn={start_lsn} page_size={size}"
                    )
                return existing
            first = start_lsn if first_lsn is None else first_lsn
            lost = self._lost.get(key)
            catchup_lsn = first
            if lost is not None:
                # Never vote again in a term this node may have voted in before the loss,
                # and hold at least what it knew was committed before voting again.
                abstain_term = max(abstain_term, lost.term)
                catchup_lsn = max(first, lost.commit_lsn)
            control = TimelineControl(
                key[0], key[1], start_lsn, size,
                term=max(1, abstain_term),
                term_history=term_history or history((1, start_lsn)),
                voted_for=ABSTAIN if abstain_term else NO_VOTE,
                remote_consistent_lsn=remote_consistent_lsn,
                backup_lsn=backup_lsn,
                commit_lsn=first,
                # The peers hold it already: catch up before voting or serving.
                catchup_lsn=catchup_lsn if abstain_term else None,
            )
            try:
                wal = await asyncio.get_running_loop().run_in_executor(self.executor, self._create_files, control, first)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.disk.failed("create_timeline", exc, tenant=key[0], timeline=key[1])
                raise disk_full_error(
                    "walservice", self.root.parent, f"timeline {key[0]}/{key[1]} was not created (nothing of it is left)", exc
                ) from exc
            self.disk.succeeded()
            timeline = self._new_timeline(wal)
            self._timelines[key] = timeline
            self._lost.pop(key, None)
            self.log.info(
                "timeline_created", tenant=key[0], timeline=key[1], lsn=first, page_size=size, term=control.term,
                abstains=bool(abstain_term) or None, catching_up=bool(abstain_term) or None,
            )
            return timeline

    def _create_files(self, control: TimelineControl, first_lsn: int) -> TimelineWal:
        """Files first, in a directory nobody reads until its rename: so each file
        needs only its own fsync (no temp-and-rename inside), then one fsync of
        the directory, the rename, and an fsync of the parent (and of the root
        when the tenant directory is new). Branch creation waits on this."""
        tenant_dir = self.root / control.tenant_id
        new_tenant = not tenant_dir.exists()
        tenant_dir.mkdir(parents=True, exist_ok=True)
        final = tenant_dir / control.timeline_id
        tmp = tenant_dir / f".{control.timeline_id}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            tmp.mkdir()
        except BaseException:
            if new_tenant:
                _remove_empty_dir(tenant_dir)
            raise
        try:
            wal = TimelineWal(tmp, control, self.segment_bytes, preallocate=self.preallocate)
            _write_synced(tmp / CONTROL_FILE_NAME, control.encode())
            _write_synced(tmp / segment_file_name(first_lsn), wal.segment_header(first_lsn).encode())
            fsync_dir(tmp)
            tmp.rename(final)
        except BaseException:
            _remove_half_made(tmp, [CONTROL_FILE_NAME, segment_file_name(first_lsn)])
            if new_tenant:
                _remove_empty_dir(tenant_dir)
            raise
        fsync_dir(tenant_dir)
        if new_tenant:
            fsync_dir(self.root)
        wal = TimelineWal(final, control, self.segment_bytes, self.open_files, preallocate=self.preallocate)
        wal.recover(self.log)
        return wal

    async def close(self) -> None:
        """Shutdown: every timeline first answers the appends it took (its flush
        round in flight and those queued, which in a cluster still need the
        replicators for a majority), then stops replicating and closes its files."""
        timelines = list(self)
        await asyncio.gather(*(tl.drain() for tl in timelines), return_exceptions=True)
        for timeline in timelines:
            try:
                if timeline.replica is not None:
                    await timeline.replica.close()
                await timeline.close()
            except StrataError:
                pass


def _delete_dir(directory: Path) -> None:
    """Rename `directory` to a hidden name (durably) and remove it."""
    hidden = directory.with_name(f".{directory.name}.deleted")
    if hidden.exists():
        shutil.rmtree(hidden)
    directory.rename(hidden)
    fsync_dir(directory.parent)
    shutil.rmtree(hidden)


def _remove_half_made(tmp: Path, names: list[str]) -> None:
    """Remove a creation's `.tmp` directory now (nothing names it): by the names
    written into it, since listing a directory takes a file descriptor and the
    creation may have failed for want of one; `load` removes what is left."""
    try:
        for name in names:
            (tmp / name).unlink(missing_ok=True)
        tmp.rmdir()
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_empty_dir(directory: Path) -> None:
    """Remove a tenant directory a failed creation made, if nothing else is in it."""
    try:
        directory.rmdir()
    except OSError:
        pass


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
