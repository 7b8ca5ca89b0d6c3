"""Materialized pages: the hot-read fast path.

A page rebuilt at its timeline's latest LSN is kept as (lsn, page). The entry
answers a read of that page at any LSN >= lsn for as long as it is present,
because ingest removes it the moment a record could change it: a write to the
block evicts the block's entry, a shrink or drop of the relation evicts every
entry of the relation (growth never changes an existing block). Reads at older
LSNs (time travel) are rebuilt as usual and never cached, since a later write
may already have evicted the newer state they would shadow.

One cache for the whole pageserver, bounded in bytes, least recently used
first out, so thousands of idle timelines cost nothing.

Concurrency: owned by the event loop (ingest and reads both run there, and a
page is put right after it was rebuilt, with no await in between).
"""

from __future__ import annotations

from collections import OrderedDict

CacheKey = tuple[int, int, int]  # (timeline token, rel, blkno)


class MaterializedPageCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[CacheKey, tuple[int, bytes]] = OrderedDict()

    def get(self, token: int, rel: int, blkno: int, lsn: int) -> bytes | None:
        entry = self._entries.get((token, rel, blkno))
        if entry is None or lsn < entry[0]:
            self.misses += 1
            return None
        self._entries.move_to_end((token, rel, blkno))
        self.hits += 1
        return entry[1]

    def put(self, token: int, rel: int, blkno: int, lsn: int, page: bytes) -> None:
        if len(page) > self.capacity_bytes:
            return
        key = (token, rel, blkno)
        old = self._entries.pop(key, None)
        if old is not None:
            self.size_bytes -= len(old[1])
        self._entries[key] = (lsn, page)
        self.size_bytes += len(page)
        while self.size_bytes > self.capacity_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.size_bytes -= len(evicted)

    def invalidate(self, token: int, rel: int, blkno: int) -> None:
        old = self._entries.pop((token, rel, blkno), None)
        if old is not None:
            self.size_bytes -= len(old[1])

    def invalidate_relation(self, token: int, rel: int) -> None:
        """Rare (a shrink or drop): a scan of the cache is fine."""
        for key in [k for k in self._entries if k[0] == token and k[1] == rel]:
            self.size_bytes -= len(self._entries.pop(key)[1])

    def invalidate_timeline(self, token: int) -> None:
        for key in [k for k in self._entries if k[0] == token]:
            self.size_bytes -= len(self._entries.pop(key)[1])
