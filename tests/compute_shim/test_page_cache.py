"""compute_shim/page_cache.py: LSN-range correctness and the byte bound (no processes)."""

from __future__ import annotations

import pytest

from compute_shim.page_cache import MAX_VERSIONS_PER_PAGE, PageCache

T, TL, OTHER = "t" * 32, "a" * 32, "b" * 32


def page(fill: int) -> bytes:
    return bytes([fill]) * 64


def test_untracked_read_is_served_at_its_lsn_only() -> None:
    cache = PageCache(1 << 20)
    cache.put(T, TL, 1, 0, 100, page(1))
    assert cache.get(T, TL, 1, 0, 100) == page(1)
    assert cache.get(T, TL, 1, 0, 99) is None
    assert cache.get(T, TL, 1, 0, 101) is None, "a newer record might have touched it"
    assert cache.get(T, OTHER, 1, 0, 100) is None
    assert cache.get(T, TL, 2, 0, 100) is None
    cache.put(T, TL, 1, 0, 200, page(2))
    assert cache.get(T, TL, 1, 0, 100) == page(1) and cache.get(T, TL, 1, 0, 200) == page(2)


def test_tracked_writer_keeps_untouched_pages_and_replaces_written_ones() -> None:
    cache = PageCache(1 << 20)
    epoch = cache.track(T, TL, 100)
    cache.put(T, TL, 1, 0, 100, page(1))
    cache.put(T, TL, 1, 1, 100, page(1))
    cache.advance(T, TL, epoch, 150, {(1, 1): page(9)})
    assert cache.get(T, TL, 1, 0, 150) == page(1), "nothing else wrote block 0"
    assert cache.get(T, TL, 1, 0, 120) == page(1)
    assert cache.get(T, TL, 1, 1, 150) == page(9)
    assert cache.get(T, TL, 1, 1, 100) == page(1), "time travel below the write still hits"
    # The commit's records have LSNs in (100, 150]: the write to block 1 may sit below 150.
    assert cache.get(T, TL, 1, 1, 149) is None
    assert cache.get(T, TL, 1, 0, 151) is None, "past the head nothing is known"
    cache.advance(T, TL, epoch, 200, {}, cut=[(1, 0)])
    assert cache.get(T, TL, 1, 0, 150) == page(1)
    assert cache.get(T, TL, 1, 0, 200) is None, "cut off by the commit at 200"
    assert cache.get(T, TL, 1, 1, 200) == page(9)


def test_untrack_bounds_open_versions_at_the_last_known_head() -> None:
    cache = PageCache(1 << 20)
    epoch = cache.track(T, TL, 100)
    cache.put(T, TL, 1, 0, 100, page(1))
    cache.advance(T, TL, epoch, 130, {})
    cache.untrack(T, TL)  # another writer appended after 130
    assert cache.get(T, TL, 1, 0, 130) == page(1)
    assert cache.get(T, TL, 1, 0, 131) is None
    new_epoch = cache.track(T, TL, 180)
    assert new_epoch != epoch
    assert cache.get(T, TL, 1, 0, 180) is None
    # A stale writer's late advance does not make its pages valid in the new epoch.
    cache.advance(T, TL, epoch, 190, {(1, 0): page(5)})
    assert cache.get(T, TL, 1, 0, 190) == page(5)
    assert cache.get(T, TL, 1, 0, 191) is None


def test_bounded_in_bytes_least_recently_used_first() -> None:
    cache = PageCache(4 * 64)
    for blkno in range(4):
        cache.put(T, TL, 1, blkno, 10, page(blkno))
    assert cache.get(T, TL, 1, 0, 10) == page(0)  # block 0 is now the most recent
    cache.put(T, TL, 1, 4, 10, page(4))
    stats = cache.stats()
    assert stats.bytes <= 4 * 64 and stats.evictions == 1
    assert cache.get(T, TL, 1, 1, 10) is None, "the least recently used page goes first"
    assert cache.get(T, TL, 1, 0, 10) == page(0)


def test_zero_bytes_disables_and_negative_is_refused() -> None:
    cache = PageCache(0)
    cache.put(T, TL, 1, 0, 10, page(1))
    assert cache.get(T, TL, 1, 0, 10) is None
    with pytest.raises(ValueError, match=">= 0"):
        PageCache(-1)


def test_drop_timeline_forgets_only_that_timeline() -> None:
    cache = PageCache(1 << 20)
    cache.put(T, TL, 1, 0, 10, page(1))
    cache.put(T, OTHER, 1, 0, 10, page(2))
    assert cache.drop_timeline(T, TL) == 1
    assert cache.get(T, TL, 1, 0, 10) is None
    assert cache.get(T, OTHER, 1, 0, 10) == page(2)
    assert cache.stats().bytes == 64


def test_versions_per_page_are_capped_newest_kept() -> None:
    cache = PageCache(1 << 20)
    epoch = cache.track(T, TL, 100)
    cache.put(T, TL, 1, 0, 100, page(0))
    for i in range(1, MAX_VERSIONS_PER_PAGE + 10):
        cache.advance(T, TL, epoch, 100 + i * 10, {(1, 0): page(i % 256)})
    last = MAX_VERSIONS_PER_PAGE + 9
    assert cache.get(T, TL, 1, 0, 100 + last * 10) == page(last % 256)
    assert cache.get(T, TL, 1, 0, 100 + (last - 1) * 10) == page((last - 1) % 256)
    assert cache.get(T, TL, 1, 0, 100) is None, "the oldest versions made room"
    assert cache.stats().versions == MAX_VERSIONS_PER_PAGE


def test_overlapping_versions_any_covering_one_serves() -> None:
    cache = PageCache(1 << 20)
    epoch = cache.track(T, TL, 100)
    cache.put(T, TL, 1, 0, 100, page(1))  # open: 100 .. head
    cache.advance(T, TL, epoch, 200, {})
    cache.put(T, TL, 1, 0, 150, page(1))  # a read-only compute read it at 150: closed [150, 150]
    assert cache.get(T, TL, 1, 0, 170) == page(1), "the open version still covers 170"
    assert cache.get(T, TL, 1, 0, 150) == page(1)
    assert cache.get(T, TL, 1, 0, 201) is None


def test_closed_epochs_are_forgotten_once_no_version_refers_to_them() -> None:
    cache = PageCache(1 << 20)
    for round_ in range(50):  # a writer re-opening the timeline again and again
        epoch = cache.track(T, TL, 100 + round_ * 10)
        cache.put(T, TL, 1, 0, 100 + round_ * 10, page(round_))
        cache.advance(T, TL, epoch, 105 + round_ * 10, {(1, 0): page(round_ + 1)})
        cache.untrack(T, TL)
    assert cache.epochs_held() <= MAX_VERSIONS_PER_PAGE, "epochs whose versions are gone are not kept"
    cache.drop_timeline(T, TL)
    assert cache.epochs_held() == 0
    assert cache.stats().bytes == 0
