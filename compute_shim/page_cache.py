"""The compute node's page cache: page versions keyed by (tenant, timeline, rel,
blkno), each valid over a known LSN range, bounded in bytes (LRU).

Correct under time travel: a version is served for LSN L only when the cache
knows that no record between the LSN it was read at and L touches the page:

- A page read from the pageserver at LSN L is known to be page@L and nothing
  more: a closed version [L, L]. A read-only compute at a fixed LSN therefore
  caches per LSN.
- A read-write compute that holds its timeline by conditional appends is the
  only writer, so it *tracks* the timeline (`track`): versions read at the
  tracked head are open-ended, valid from the LSN they were read at up to the
  head. When the writer commits (`advance`), the head moves to the new end LSN;
  the versions of the pages it wrote (or cut off) are closed at the old head and
  the committed contents become new open-ended versions, while every other open
  version stays valid through the new head (nothing else wrote). No walk over
  the cache is needed: an open version belongs to an *epoch* of the tracked
  timeline, and its upper bound is the epoch's head, read at lookup time.
- When the writer learns that someone else moved the timeline (a refused
  conditional append), it calls `untrack`: the epoch is closed at the last head
  it knew, so its versions stay valid below it (time travel still hits) but are
  never served above it.

One lock (`_lock`) guards all state; methods are safe to call from any thread.
Nothing here touches the network: callers fetch misses and `put` them.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

from strata.logs import event_logger

log = event_logger("compute")

PageKey = tuple[str, str, int, int]  # (tenant_id, timeline_id, rel, blkno)
TimelineKey = tuple[str, str]  # (tenant_id, timeline_id)
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# A page a writer rewrites at every commit (SQLite's page 1) would otherwise pile up one
# version per commit; keep the newest few (older LSNs are read again if asked for).
MAX_VERSIONS_PER_PAGE = 16


@dataclass
class _Version:
    lsn_lo: int  # page@L == data for every L >= lsn_lo up to the upper bound
    lsn_hi: int | None  # the upper bound (inclusive); None: the head of `epoch`
    epoch: int  # for open versions: the tracking epoch whose head bounds it
    data: bytes


def _lsn_lo(v: _Version) -> int:
    return v.lsn_lo


@dataclass
class _Head:
    epoch: int
    lsn: int


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    bytes: int
    versions: int


class PageCache:
    """Page versions over LSN ranges; at most `max_bytes` of page data."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"page cache size must be >= 0 bytes (0 disables it), got {max_bytes}")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # guards every field below
        self._versions: dict[PageKey, list[_Version]] = {}
        self._lru: OrderedDict[tuple[PageKey, int], None] = OrderedDict()  # (key, lsn_lo), oldest first
        self._heads: dict[TimelineKey, _Head] = {}  # tracked timelines: the writer's current end
        self._closed: dict[int, int] = {}  # epoch -> the last head it knew (untracked epochs with open versions)
        self._open: dict[int, int] = {}  # epoch -> how many of its versions are open (lsn_hi None)
        self._next_epoch = 1
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    # -- tracking a timeline's head (read-write computes) -------------------------

    def track(self, tenant_id: str, timeline_id: str, lsn: int) -> int:
        """Start tracking: the caller is the timeline's only writer and its end is `lsn`.
        Returns the epoch to pass to `advance`."""
        with self._lock:
            self._close_epoch_locked((tenant_id, timeline_id))
            epoch = self._next_epoch
            self._next_epoch += 1
            self._heads[(tenant_id, timeline_id)] = _Head(epoch, lsn)
            return epoch

    def untrack(self, tenant_id: str, timeline_id: str) -> None:
        """Someone else may have written past the head: stop serving open versions above it."""
        with self._lock:
            self._close_epoch_locked((tenant_id, timeline_id))

    def _close_epoch_locked(self, tl: TimelineKey) -> None:
        head = self._heads.pop(tl, None)
        if head is not None and head.epoch in self._open:
            self._closed[head.epoch] = head.lsn

    def _opened_locked(self, v: _Version) -> None:
        if v.lsn_hi is None:
            self._open[v.epoch] = self._open.get(v.epoch, 0) + 1

    def _closing_locked(self, v: _Version) -> None:
        """`v` stops being open (closed or removed): forget its epoch once nothing refers to it."""
        if v.lsn_hi is None:
            left = self._open[v.epoch] - 1
            if left:
                self._open[v.epoch] = left
            else:
                del self._open[v.epoch]
                self._closed.pop(v.epoch, None)

    def advance(
        self,
        tenant_id: str,
        timeline_id: str,
        epoch: int,
        new_lsn: int,
        written: dict[tuple[int, int], bytes],
        cut: list[tuple[int, int]] | None = None,
    ) -> None:
        """The writer of `epoch` committed up to `new_lsn`: `written` maps (rel, blkno) to each
        written page's contents at `new_lsn`; `cut` lists pages the commit removed."""
        tl = (tenant_id, timeline_id)
        with self._lock:
            head = self._heads.get(tl)
            current = head is not None and head.epoch == epoch
            for rel, blkno in [*written, *(cut or [])]:
                for v in self._versions.get((*tl, rel, blkno), ()):
                    if v.lsn_hi is None and v.epoch == epoch:
                        hi = head.lsn if current else self._closed.get(epoch, v.lsn_lo)
                        self._closing_locked(v)
                        v.lsn_hi = hi
            if current:
                head.lsn = new_lsn
            for (rel, blkno), data in written.items():
                self._insert_locked((*tl, rel, blkno), _Version(new_lsn, None if current else new_lsn, epoch, data))

    # -- lookups --------------------------------------------------------------------

    def _upper(self, v: _Version, head: _Head | None) -> int:
        if v.lsn_hi is not None:
            return v.lsn_hi
        if head is not None and head.epoch == v.epoch:
            return head.lsn
        return self._closed.get(v.epoch, v.lsn_lo)

    def get(self, tenant_id: str, timeline_id: str, rel: int, blkno: int, lsn: int) -> bytes | None:
        """page@lsn if a cached version is known to equal it, else None."""
        key = (tenant_id, timeline_id, rel, blkno)
        with self._lock:
            head = self._heads.get((tenant_id, timeline_id))
            # Newest first (at most MAX_VERSIONS_PER_PAGE): a writer reads at its head.
            for v in reversed(self._versions.get(key, ())):
                if v.lsn_lo <= lsn and lsn <= (v.lsn_hi if v.lsn_hi is not None else self._upper(v, head)):
                    self._lru.move_to_end((key, v.lsn_lo))
                    self._hits += 1
                    return v.data
            self._misses += 1
            return None

    def put(self, tenant_id: str, timeline_id: str, rel: int, blkno: int, lsn: int, data: bytes) -> None:
        """Remember page@lsn as read from the pageserver. Read at a tracked head, it is
        valid until that head moves past a write to it; otherwise at `lsn` only."""
        if self.max_bytes == 0:
            return
        key = (tenant_id, timeline_id, rel, blkno)
        with self._lock:
            head = self._heads.get((tenant_id, timeline_id))
            if head is not None and head.lsn == lsn:
                self._insert_locked(key, _Version(lsn, None, head.epoch, data))
            else:
                self._insert_locked(key, _Version(lsn, lsn, 0, data))

    def _insert_locked(self, key: PageKey, version: _Version) -> None:
        if self.max_bytes == 0:
            return
        versions = self._versions.setdefault(key, [])  # sorted by lsn_lo
        i = bisect.bisect_left(versions, version.lsn_lo, key=_lsn_lo)
        if i < len(versions) and versions[i].lsn_lo == version.lsn_lo:
            self._bytes -= len(versions[i].data)
            self._closing_locked(versions[i])
            versions[i] = version
        else:
            versions.insert(i, version)
        self._opened_locked(version)
        self._bytes += len(version.data)
        self._lru[(key, version.lsn_lo)] = None
        self._lru.move_to_end((key, version.lsn_lo))
        while len(versions) > MAX_VERSIONS_PER_PAGE:
            self._remove_locked(key, versions[0].lsn_lo)
        while self._bytes > self.max_bytes and self._lru:
            (old_key, lo), _ = self._lru.popitem(last=False)
            self._remove_locked(old_key, lo)

    def _remove_locked(self, key: PageKey, lsn_lo: int) -> None:
        versions = self._versions[key]
        i = bisect.bisect_left(versions, lsn_lo, key=_lsn_lo)
        self._bytes -= len(versions[i].data)
        self._closing_locked(versions[i])
        del versions[i]
        self._lru.pop((key, lsn_lo), None)
        self._evictions += 1
        if not versions:
            del self._versions[key]

    def drop_timeline(self, tenant_id: str, timeline_id: str) -> int:
        """Forget every version of one timeline (e.g. it was deleted); returns how many."""
        with self._lock:
            self._close_epoch_locked((tenant_id, timeline_id))
            keys = [k for k in self._versions if k[0] == tenant_id and k[1] == timeline_id]
            dropped = 0
            for k in keys:
                for v in list(self._versions[k]):
                    self._remove_locked(k, v.lsn_lo)
                    dropped += 1
            self._evictions -= dropped  # dropped, not evicted
        log.info("page_cache_dropped", tenant=tenant_id, timeline=timeline_id, versions=dropped)
        return dropped

    def epochs_held(self) -> int:
        """Tracking epochs still remembered (tracked, or closed with open versions left)."""
        with self._lock:
            return len(self._heads) + len(self._closed)

    def stats(self) -> CacheStats:
        with self._lock:
            versions = sum(len(v) for v in self._versions.values())
            return CacheStats(self._hits, self._misses, self._evictions, self._bytes, versions)
