"""The materialized page cache: valid from its LSN on, bounded in bytes, evicted by writes."""

from __future__ import annotations

from pageserver.page_cache import MaterializedPageCache


def test_an_entry_answers_reads_at_or_after_its_lsn_only() -> None:
    cache = MaterializedPageCache(1 << 20)
    cache.put(1, 7, 0, 100, b"a" * 8)
    assert cache.get(1, 7, 0, 100) == b"a" * 8
    assert cache.get(1, 7, 0, 5000) == b"a" * 8
    assert cache.get(1, 7, 0, 99) is None  # time travel below it is rebuilt
    assert cache.get(2, 7, 0, 100) is None  # another timeline
    assert (cache.hits, cache.misses) == (2, 2)


def test_writes_and_truncations_evict() -> None:
    cache = MaterializedPageCache(1 << 20)
    for blkno in range(4):
        cache.put(1, 7, blkno, 10, bytes([blkno]) * 8)
    cache.put(1, 8, 0, 10, b"x" * 8)
    cache.invalidate(1, 7, 2)
    assert cache.get(1, 7, 2, 10) is None and cache.get(1, 7, 1, 10) is not None
    cache.invalidate_relation(1, 7)
    assert all(cache.get(1, 7, b, 10) is None for b in range(4))
    assert cache.get(1, 8, 0, 10) == b"x" * 8
    cache.invalidate_timeline(1)
    assert cache.get(1, 8, 0, 10) is None and cache.size_bytes == 0


def test_least_recently_used_goes_first_past_the_byte_budget() -> None:
    cache = MaterializedPageCache(3 * 8)
    for blkno in range(3):
        cache.put(1, 1, blkno, 1, b"p" * 8)
    assert cache.get(1, 1, 0, 1) is not None  # 0 is now the most recent
    cache.put(1, 1, 3, 1, b"p" * 8)
    assert cache.get(1, 1, 1, 1) is None
    assert all(cache.get(1, 1, b, 1) is not None for b in (0, 2, 3))
    assert cache.size_bytes == 24
