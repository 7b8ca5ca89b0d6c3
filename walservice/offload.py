"""WAL offload to remote storage, and trimming of offloaded WAL.

Enabled by `strata walservice --remote-storage URL` (file://DIR or
s3://BUCKET/PREFIX, see strata/remote_storage/); without it nothing is
uploaded and nothing is trimmed.

# Remote layout

A timeline's WAL sits beside its layers, under a `wal/` folder of its own
(keys: strata/remote_storage/layout.py)::

    tenants/<tenant_id>/timelines/<timeline_id>/wal/<start_lsn:016x>.wal          a sealed segment
    tenants/<tenant_id>/timelines/<timeline_id>/wal/<start_lsn:016x>.wal.partial  the open segment's committed prefix

- A sealed segment (one that a newer segment follows, so it never changes
  again) is uploaded whole under its local file name: exactly the bytes
  [0, header + end_lsn - start_lsn) of the file.
- The open segment is uploaded as `<start_lsn:016x>.wal.partial`, overwritten
  each time: exactly the bytes [0, header + commit_lsn - start_lsn), so it holds
  only committed, whole batches (a batch never spans segments and commit_lsn is
  always a batch end). It goes up at most every `--offload-interval` seconds,
  and only when there are commits it does not hold yet.
  Why one overwritten object rather than one object per end LSN: an upload
  replaces an object atomically (remote_storage.py, "Consistency"), so a reader
  always sees one whole, valid prefix; nothing piles up that would need deleting
  (no garbage, no crash window that leaks objects); and the end LSN is still
  known without reading it: start_lsn + size - 64 (header), from a `list`.
- Once a segment is sealed and uploaded as `.wal`, its `.partial` is deleted. A
  crash between the two can leave both; the `.wal` is the whole segment and wins.
- Objects are verified before they go up: the segment header must name this
  timeline and start LSN, and every frame in the range must pass its checksums
  and end with END_OF_BATCH (bytes already verified by the previous partial
  upload of the same segment are only re-hashed against that upload's
  xxhash64). Upload checksums are stored with the objects by remote_storage.py
  and checked on every download.

# backup_lsn

`backup_lsn` is the end LSN of the WAL that remote storage durably holds,
contiguous from the timeline's start: it moves forward only after an upload
returned, and is then persisted in the control file (`Timeline.record_backup`,
serialized with other control writes by the timeline's `_control_lock`) and
reported in WalStatus.backup_lsn. 0 means nothing is offloaded yet. Sealed
segments go up in LSN order, and a partial only once every sealed segment is
up as `.wal`, so there is never a gap. When
idle, backup_lsn reaches commit_lsn within about `--offload-interval` seconds.

# Trimming

A local sealed segment is deleted once its end_lsn <= min(backup_lsn,
remote_consistent_lsn) (both as persisted in the control file) and it is up
whole as `.wal` (one whose content went up only as its partial, before it
sealed, waits for that): it is in remote storage, and the pageserver has persisted every record in it to its own remote
storage, so it never needs to stream it again (it resumes at
disk_consistent_lsn >= remote_consistent_lsn). The open (last) segment is never
deleted. A Stream that starts below the first local segment answers
is served from the offloaded objects, then from the local segments
(walservice/wal_restore.py); without remote storage nothing is trimmed, and a
damaged local segment is rebuilt from its offloaded copy at start (same
module). Recovery accepts a first segment above
the timeline's start_lsn when trimming could have removed what is below it.

# Failures

An upload that fails (remote storage down, unwritable, refusing) is logged at
level=warn (`event=wal_offload_failed`) and retried with a backoff from
`interval` doubling to `MAX_BACKOFF_INTERVALS * interval`; appends go on
unaffected, backup_lsn stalls, and nothing more is trimmed. Local WAL that
fails verification is logged at level=error and never uploaded.

# Replication

In a cluster (docs/design/0005-replication.md) only a timeline's leader
uploads, and only committed bytes: a sealed segment goes up once commit_lsn
reaches its end (a deposed leader's uncommitted suffix, which a new leader may
cut, never reaches remote storage), and a partial holds the committed prefix as
above. The leader sends backup_lsn and remote_consistent_lsn to its followers in
every PeerAppend; each follower records them and trims its own sealed segments
below min(backup_lsn, remote_consistent_lsn), keeping the segment that holds
backup_lsn. A node that becomes leader resumes uploads from backup_lsn as after
a start (`_initial_sealed_lsn`); re-uploading a segment another leader already
put up writes the same bytes.

# Concurrency

One `WalOffloader` per process: one asyncio task on the event loop ticks every
`interval / 4` and starts, for each timeline with no offload in flight, one
task that uploads its sealed segments, then its partial, then trims. Per
timeline state (`_TimelineOffload`) is owned by the event loop. File reads,
verification, uploads and deletions run on the offloader's own executor, so a
slow remote store never holds up the flush threads that fsync appends;
control file writes go through the timeline (its executor, its lock).
`TimelineWal.segments` is read and trimmed on the loop only.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import xxhash

from strata.errors import CorruptionError, StrataError
from strata.ids import Lsn, TenantId, TimelineId
from strata.logs import EventLogger
from strata.remote_storage.interface import RemoteObject, RemoteStorage
from strata.remote_storage.layout import PARTIAL_SUFFIX, wal_prefix, wal_segment_key
from walservice.segment import SEGMENT_HEADER_SIZE, SegmentFormatError, SegmentHeader, iter_frames
from walservice.sequencer import Timeline
from walservice.timelines import TimelineSet
from walservice.wal_storage import SegmentInfo

DEFAULT_OFFLOAD_INTERVAL_S = 2.0
# After a failure, wait `interval`, then twice that, ... up to this many intervals.
MAX_BACKOFF_INTERVALS = 15
# How long shutdown waits for uploads in flight before cancelling them.
STOP_GRACE_S = 5.0
UPLOAD_THREADS = 4

T = TypeVar("T")


def remote_wal_prefix(tenant_id: str, timeline_id: str) -> str:
    """The key prefix of a timeline's offloaded WAL (ends with '/')."""
    return wal_prefix(TenantId(tenant_id), TimelineId(timeline_id))


def remote_segment_key(tenant_id: str, timeline_id: str, start_lsn: int) -> str:
    return wal_segment_key(TenantId(tenant_id), TimelineId(timeline_id), Lsn(start_lsn))


def remote_partial_key(tenant_id: str, timeline_id: str, start_lsn: int) -> str:
    return wal_segment_key(TenantId(tenant_id), TimelineId(timeline_id), Lsn(start_lsn), partial=True)


@dataclass(frozen=True)
class _UploadedPrefix:
    """A prefix of a segment file that went up (as a partial) with this checksum."""

    segment_start_lsn: int
    size: int
    checksum: int


def read_verified_prefix(
    seg: SegmentInfo, end_lsn: int, tenant_id: str, timeline_id: str, verified: _UploadedPrefix | None
) -> bytes:
    """Off the loop: the bytes [0, header + end_lsn - start_lsn) of a segment
    file, checked: the header names this timeline and segment, and the frames
    are whole, pass their checksums and end with a whole batch. `verified`: a
    prefix checked before, which is only re-hashed. CorruptionError otherwise."""
    size = SEGMENT_HEADER_SIZE + end_lsn - seg.start_lsn
    where = f"tenant={tenant_id} timeline={timeline_id} segment={seg.path.name}"
    with open(seg.path, "rb") as f:
        data = f.read(size)
    if len(data) != size:
        raise CorruptionError(f"{where}: {len(data)} bytes on disk, expected at least {size} (lsn={end_lsn})")
    try:
        header = SegmentHeader.decode(data)
    except SegmentFormatError as exc:
        raise CorruptionError(f"{where}: {exc}") from exc
    if (header.start_lsn, header.tenant_id, header.timeline_id) != (seg.start_lsn, tenant_id, timeline_id):
        raise CorruptionError(f"{where}: header {header} does not belong here")
    offset = SEGMENT_HEADER_SIZE
    if (
        verified is not None
        and verified.segment_start_lsn == seg.start_lsn
        and SEGMENT_HEADER_SIZE <= verified.size <= size
        and xxhash.xxh64_intdigest(memoryview(data)[: verified.size]) == verified.checksum
    ):
        offset = verified.size
    last_end_of_batch = True
    for offset, frame in iter_frames(memoryview(data), offset, seg.start_lsn + offset - SEGMENT_HEADER_SIZE, end_lsn):
        last_end_of_batch = frame.end_of_batch
    if offset != size or not last_end_of_batch:
        raise CorruptionError(f"{where}: the WAL up to lsn={end_lsn} does not end with a whole batch")
    return data


@dataclass
class _TimelineOffload:
    """Offload state of one timeline; owned by the event loop."""

    timeline: Timeline
    # The end of the newest sealed segment known to be up whole as `.wal`: the
    # segments to upload are the sealed ones above it. It can trail backup_lsn by
    # one segment, whose content went up only as its partial before it sealed.
    # None until the first round sets it (`_initial_sealed_lsn`).
    sealed_lsn: int | None = None
    last_partial: _UploadedPrefix | None = None
    last_partial_at: float = -math.inf  # monotonic time of the last partial upload
    retry_at: float = -math.inf  # no attempt before this (backoff after a failure)
    backoff_s: float = 0.0
    failing: bool = False
    task: asyncio.Task[None] | None = None


class WalOffloader:
    def __init__(
        self,
        storage: RemoteStorage,
        storage_url: str,
        timelines: TimelineSet,
        log: EventLogger,
        interval_s: float = DEFAULT_OFFLOAD_INTERVAL_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"offload interval={interval_s}s must be positive")
        self.storage = storage
        self.storage_url = storage_url.rstrip("/")
        self.timelines = timelines
        self.log = log
        self.interval_s = interval_s
        self.tick_s = max(0.02, min(interval_s / 4, 0.5))
        self._executor = ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="wal-offload")
        # All below: owned by the event loop.
        self._states: dict[tuple[str, str], _TimelineOffload] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def location(self, tenant_id: str, timeline_id: str) -> str:
        return f"{self.storage_url}/{remote_wal_prefix(tenant_id, timeline_id)}"

    def start(self) -> None:
        """Start offloading (on the loop, after the timelines were loaded)."""
        for tl in self.timelines:
            self._state_of(tl)
        self.timelines.deletion_hooks.append(self.delete_timeline)
        self._task = asyncio.create_task(self._run())
        self.log.info("wal_offload_started", remote=self.storage_url, interval_s=self.interval_s)

    async def stop(self) -> None:
        """Stop starting uploads; give the ones in flight STOP_GRACE_S to finish."""
        self._stop.set()
        if self._task is not None:
            await self._task
        in_flight = [st.task for st in self._states.values() if st.task is not None]
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def delete_timeline(self, tenant_id: str, timeline_id: str) -> None:
        """TimelineSet.delete's hook: the timeline stopped (no new round starts
        for it); wait for a round in flight, then delete its offloaded WAL."""
        st = self._states.pop((tenant_id, timeline_id), None)
        if st is not None and st.task is not None:
            await asyncio.wait([st.task])
        prefix = remote_wal_prefix(tenant_id, timeline_id)
        keys = [o.key for o in await self._in_executor(self.storage.list, prefix)]
        if keys:
            await self._in_executor(self.storage.delete, keys)
        self.log.info("wal_offload_deleted", tenant=tenant_id, timeline=timeline_id, objects=len(keys), remote=self.location(tenant_id, timeline_id))

    def _state_of(self, tl: Timeline) -> _TimelineOffload:
        key = (tl.tenant_id, tl.timeline_id)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = _TimelineOffload(tl)
            tl.wal.offload_location = self.location(tl.tenant_id, tl.timeline_id)
        return st

    async def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for tl in self.timelines:
                st = self._state_of(tl)
                if st.task is None and now >= st.retry_at and tl.broken is None and not tl.closing:
                    st.task = asyncio.create_task(self._offload_timeline(st))
            try:
                await asyncio.wait_for(self._stop.wait(), self.tick_s)
            except TimeoutError:
                pass

    async def _offload_timeline(self, st: _TimelineOffload) -> None:
        tl = st.timeline
        try:
            if tl.replica is not None and not tl.replica.leader_term:
                # A cluster's follower uploads nothing ("Replication" above): it
                # learns backup_lsn from the leader and only trims.
                st.sealed_lsn, st.last_partial = None, None
                await self._trim(st)
                return
            try:
                await self._upload_sealed(st)
                await self._upload_partial(st)
            except CorruptionError as exc:
                self._back_off(st)
                self._event(self.log.error, "wal_offload_corrupt", tl, lsn=tl.control.backup_lsn, error=exc)
            except (StrataError, OSError) as exc:
                self._back_off(st)
                self._event(
                    self.log.warning,
                    "wal_offload_failed",
                    tl,
                    lsn=tl.control.backup_lsn,
                    commit_lsn=tl.commit_lsn,
                    remote=self.location(tl.tenant_id, tl.timeline_id),
                    retry_in_s=round(st.backoff_s, 3),
                    error=exc,
                )
            else:
                if st.failing:
                    self._event(self.log.info, "wal_offload_resumed", tl, lsn=tl.control.backup_lsn)
                st.failing, st.backoff_s, st.retry_at = False, 0.0, -math.inf
            await self._trim(st)
        except Exception as exc:  # noqa: BLE001 - a bug must not end offloading silently
            self._back_off(st)
            self._event(self.log.error, "wal_offload_bug", tl, error=repr(exc))
        finally:
            st.task = None

    @staticmethod
    def _event(emit: Callable[..., None], event: str, tl: Timeline, **fields: Any) -> None:
        """One log line about a timeline: tenant= timeline= first."""
        emit(event, tenant=tl.tenant_id, timeline=tl.timeline_id, **fields)

    def _back_off(self, st: _TimelineOffload) -> None:
        st.failing = True
        st.backoff_s = min(max(self.interval_s, 2 * st.backoff_s), MAX_BACKOFF_INTERVALS * self.interval_s)
        st.retry_at = time.monotonic() + st.backoff_s

    async def _in_executor(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _upload_sealed(self, st: _TimelineOffload) -> None:
        """Upload every sealed segment above backup_lsn, oldest first."""
        tl = st.timeline
        if st.sealed_lsn is None:
            st.sealed_lsn = await self._initial_sealed_lsn(tl)
        while not self._stop.is_set():
            sealed_lsn = st.sealed_lsn
            seg = next((s for s in tl.wal.segments[:-1] if s.end_lsn > sealed_lsn), None)
            if seg is None or seg.end_lsn > tl.commit_lsn:
                # Only committed bytes go up: in a cluster a sealed segment may still
                # hold a suffix that a new leader cuts (it goes up once committed).
                return
            if tl.replica is not None and not tl.replica.leader_term:
                return  # stopped leading meanwhile
            key = remote_segment_key(tl.tenant_id, tl.timeline_id, seg.start_lsn)
            obj = await self._in_executor(self._upload_prefix, tl, seg, seg.end_lsn, st.last_partial, key)
            await tl.record_backup(seg.end_lsn)  # a no-op when its partial had got there
            st.sealed_lsn = seg.end_lsn
            self._event(
                self.log.info, "wal_segment_offloaded", tl, segment=seg.path.name, lsn=seg.end_lsn, bytes=obj.size, key=key
            )
            if st.last_partial is not None and st.last_partial.segment_start_lsn == seg.start_lsn:
                st.last_partial = None
            # The whole segment supersedes its partial (maybe left by an earlier run).
            await self._in_executor(self.storage.delete, [remote_partial_key(tl.tenant_id, tl.timeline_id, seg.start_lsn)])

    async def _initial_sealed_lsn(self, tl: Timeline) -> int:
        """Where sealed uploads resume after a start: at backup_lsn, unless
        backup_lsn lies in (or at the end of) a segment that went up only as its
        partial: then at that segment's start, so it goes up whole once sealed."""
        backup_lsn = tl.control.backup_lsn
        segments = tl.wal.segments
        seg = next((s for s in segments if s.start_lsn < backup_lsn <= s.end_lsn), None)
        if seg is None:
            return backup_lsn  # nothing up yet, or backup_lsn at the start of the open segment
        if seg is not segments[-1]:
            key = remote_segment_key(tl.tenant_id, tl.timeline_id, seg.start_lsn)
            if seg.end_lsn == backup_lsn and await self._in_executor(self.storage.exists, key):
                return backup_lsn
        return seg.start_lsn

    async def _upload_partial(self, st: _TimelineOffload) -> None:
        """Upload the open segment's committed prefix if it has new commits and
        the last partial upload is at least `interval_s` old."""
        tl = st.timeline
        segments = tl.wal.segments
        open_seg = segments[-1]
        commit_lsn = min(tl.commit_lsn, open_seg.end_lsn)
        backup_lsn = tl.control.backup_lsn
        if commit_lsn <= backup_lsn or self._stop.is_set():
            return
        if len(segments) > 1 and (st.sealed_lsn is None or segments[-2].end_lsn > st.sealed_lsn):
            return  # a sealed segment is not up as `.wal` yet: keep the layout gapless
        now = time.monotonic()
        if now - st.last_partial_at < self.interval_s:
            return
        st.last_partial_at = now
        key = remote_partial_key(tl.tenant_id, tl.timeline_id, open_seg.start_lsn)
        obj = await self._in_executor(self._upload_prefix, tl, open_seg, commit_lsn, st.last_partial, key)
        if obj.checksum is not None:
            st.last_partial = _UploadedPrefix(open_seg.start_lsn, obj.size, obj.checksum)
        await tl.record_backup(commit_lsn)
        self._event(self.log.info, "wal_partial_offloaded", tl, lsn=commit_lsn, bytes=obj.size, key=key)

    def _upload_prefix(
        self, tl: Timeline, seg: SegmentInfo, end_lsn: int, verified: _UploadedPrefix | None, key: str
    ) -> RemoteObject:
        """Off the loop: read, verify and upload [0, header + end_lsn - start) of a segment."""
        data = read_verified_prefix(seg, end_lsn, tl.tenant_id, tl.timeline_id, verified)
        # A sealed segment is create-only (the same bytes again are a no-op);
        # the open segment's `.partial` object is replaced in place as it grows.
        return self.storage.upload_bytes(data, key, overwrite=key.endswith(PARTIAL_SUFFIX))

    async def _trim(self, st: _TimelineOffload) -> None:
        """Delete local sealed segments below min(backup_lsn, remote_consistent_lsn)."""
        tl = st.timeline
        control = tl.control  # the persisted values
        if tl.replica is not None and not tl.replica.leader_term:
            # A follower does not know which segments the leader has up whole: the
            # one holding backup_lsn (maybe up only as its partial) stays.
            seg = next((s for s in tl.wal.segments if s.start_lsn < control.backup_lsn <= s.end_lsn), None)
            sealed_lsn = seg.start_lsn if seg is not None else control.backup_lsn
        elif st.sealed_lsn is None:
            return
        else:
            sealed_lsn = st.sealed_lsn
        # sealed_lsn too: a segment that is up only as its partial stays until it is up whole.
        horizon_lsn = min(control.backup_lsn, control.remote_consistent_lsn, sealed_lsn)
        detached = tl.wal.detach_segments_below(horizon_lsn)
        if not detached:
            return
        try:
            await self._in_executor(tl.wal.delete_segment_files, detached)
        except OSError as exc:
            # Detached already, so never read again; a restart finds them and trims again.
            self._event(self.log.warning, "wal_trim_failed", tl, lsn=horizon_lsn, error=exc)
            return
        for seg in detached:
            self._event(
                self.log.info, "wal_segment_trimmed", tl, segment=seg.path.name, lsn=seg.end_lsn, horizon_lsn=horizon_lsn
            )

