from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pageserver.layers import delta
from pageserver.layers.block_file import (
    HEADER_SIZE,
    TRAILER_SIZE,
    BlockCache,
    BlockHandle,
    BlockIndex,
    EntryBlock,
    LayerHeader,
    LayerTrailer,
    file_checksum_of,
)
from pageserver.layers.delta import DeltaEntry, DeltaLayerReader
from pageserver.layers.names import KEY_SPACE_END
from strata.errors import CorruptionError
from tests.pageserver.layers.builders import TENANT, TIMELINE, flip_byte, run_in_threads, write_delta

PATH = Path("/layers/x")


def header(**changes: object) -> LayerHeader:
    base = LayerHeader(delta.MAGIC, delta.FORMAT_VERSION, TENANT, TIMELINE, 7, KEY_SPACE_END, 10, 20)
    return replace(base, **changes)  # type: ignore[arg-type]


def decode_header(data: bytes) -> LayerHeader:
    return LayerHeader.decode(data, path=PATH, magic=delta.MAGIC, kind="delta", versions=(1,))


def block(n_entries: int, value_size: int) -> EntryBlock:
    keys = list(range(n_entries))
    data = EntryBlock.encode(keys, [1] * n_entries, bytearray(n_entries), [b"v" * value_size] * n_entries)
    return EntryBlock.decode(data, n_entries)


# -- header and trailer --------------------------------------------------------


def test_header_round_trip_with_key_end_past_u64() -> None:
    h = header()
    data = h.encode()
    assert len(data) == HEADER_SIZE
    assert decode_header(data) == h


def test_header_rejects_damage_wrong_magic_and_unknown_version() -> None:
    data = bytearray(header().encode())
    data[45] ^= 1
    with pytest.raises(CorruptionError, match=f"{PATH}.*header checksum"):
        decode_header(bytes(data))
    with pytest.raises(CorruptionError, match="magic"):
        decode_header(header(magic=b"SIMG").encode())
    with pytest.raises(CorruptionError, match="version 9"):
        decode_header(header(format_version=9).encode())
    with pytest.raises(CorruptionError, match="key range"):
        decode_header(header(key_end=7).encode())  # an empty key range


def test_header_rejects_malformed_ids() -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        header(tenant_id="XYZ").encode()


def test_trailer_round_trip_and_damage() -> None:
    t = LayerTrailer(index_offset=1000, index_length=128, block_count=2, entry_count=9, index_checksum=5, file_checksum=6)
    data = t.encode()
    assert len(data) == TRAILER_SIZE
    assert LayerTrailer.decode(data, path=PATH) == t
    for i in range(TRAILER_SIZE):
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        with pytest.raises(CorruptionError, match="trailer checksum"):
            LayerTrailer.decode(bytes(damaged), path=PATH)


# -- entry table and index -----------------------------------------------------


def test_entry_block_round_trip_and_search() -> None:
    keys = [1, 1, 1, 5, 2**64 - 1]
    lsns = [10, 20, 30, 10, 7]
    values = [b"a", b"", b"ccc", b"d" * 1000, b"e"]
    b = EntryBlock.decode(EntryBlock.encode(keys, lsns, bytearray([1, 0, 0, 1, 0]), values), 5)
    assert list(b.rows()) == [
        (1, 10, True, b"a"),
        (1, 20, False, b""),
        (1, 30, False, b"ccc"),
        (5, 10, True, b"d" * 1000),
        (2**64 - 1, 7, False, b"e"),
    ]
    assert b.span(1, 0, 2**64) == range(0, 3)
    assert b.span(1, 20, 30) == range(1, 2)  # start included, end excluded
    assert b.span(1, 31, 40) == range(3, 3)
    assert not b.span(3, 0, 100)
    assert not b.span(0, 0, 100)
    assert b.span(2**64 - 1, 7, 8) == range(4, 5)
    assert not b.span(2**64, 0, 100)
    assert [b.value(i) for i in range(5)] == values
    assert (b.first(), b.last()) == ((1, 10), (2**64 - 1, 7))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:7],
        lambda d: b"\x09" + d[1:],  # entry count
        lambda d: d[:-1],  # values shorter than the offsets say
        lambda d: d[:8] + d[16:24] + d[8:16] + d[24:],  # keys out of order
        lambda d: d[:44] + (3).to_bytes(4, "little") + d[48:],  # value offsets 0, 3, 2
    ],
)
def test_entry_block_rejects_malformed_tables(damage) -> None:
    data = EntryBlock.encode([1, 2], [1, 1], bytearray(2), [b"x", b"y"])
    with pytest.raises(ValueError):
        EntryBlock.decode(damage(data), 2)


def test_index_overlapping() -> None:
    spans = [((1, 5), (3, 1)), ((3, 2), (3, 9)), ((3, 10), (8, 0)), ((10, 0), (12, 0))]
    index = BlockIndex(tuple(BlockHandle(n, *first, *last, 0, 1, 1, 1, 0) for n, (first, last) in enumerate(spans)))
    assert index.overlapping((0, 0), (0, 2**64)) == range(0, 0)
    assert index.overlapping((1, 0), (1, 2**64)) == range(0, 1)
    assert index.overlapping((3, 0), (3, 2**64)) == range(0, 3)  # a key spanning three blocks
    assert index.overlapping((3, 3), (3, 4)) == range(1, 2)
    assert index.overlapping((3, 9), (3, 9)) == range(1, 2)
    assert index.overlapping((9, 0), (9, 2**64)) == range(3, 3)  # between blocks: none
    assert index.overlapping((12, 0), (12, 0)) == range(3, 4)
    assert index.overlapping((13, 0), (13, 5)) == range(4, 4)


# -- the block cache -----------------------------------------------------------


def test_block_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = BlockCache(capacity_bytes=1000)
    small, big = block(1, 10), block(1, 10)
    file = (1, 2, 3)
    cache.put((file, 0), small, 300)
    cache.put((file, 1), small, 300)
    cache.put((file, 2), small, 300)
    assert (len(cache), cache.size_bytes) == (3, 900)
    assert cache.get((file, 0)) is small  # now the most recently used
    cache.put((file, 3), big, 250)  # 1150 bytes: the least recently used (block 1) goes
    assert (file, 1) not in cache
    assert [(file, n) in cache for n in (0, 2, 3)] == [True, True, True]
    assert cache.size_bytes == 850
    cache.put((file, 4), big, 700)  # needs two more evictions: blocks 2 and 0
    assert [(file, n) in cache for n in range(5)] == [False, False, False, True, True]
    assert cache.size_bytes == 950
    cache.put((file, 5), big, 1001)  # larger than the whole budget: not kept
    assert (file, 5) not in cache and cache.size_bytes == 950
    cache.put((file, 4), big, 100)  # replacing an entry re-counts its bytes
    assert cache.size_bytes == 350
    assert cache.get((file, 9)) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_block_cache_counts_block_bytes_by_default() -> None:
    b = block(4, 1000)
    cache = BlockCache(capacity_bytes=b.nbytes * 2)
    for n in range(5):
        cache.put(((0, 0, 0), n), b)
    assert len(cache) == 2 and cache.size_bytes == 2 * b.nbytes >= 8000


def test_block_cache_is_thread_safe() -> None:
    cache = BlockCache(capacity_bytes=5000)
    b = block(1, 1)

    def work(seed: int) -> None:
        for i in range(2000):
            key = ((seed, 0, 0), i % 37)
            if cache.get(key) is None:
                cache.put(key, b, 100 + i % 400)
            assert cache.size_bytes <= 5000

    run_in_threads(work, 8)
    assert 0 < cache.size_bytes <= 5000


# -- whole files ---------------------------------------------------------------


def test_file_checksum_covers_everything_but_the_last_16_bytes(tmp_path: Path) -> None:
    path = tmp_path / "layer"
    summary = write_delta(path, [DeltaEntry(k, 5, True, b"x" * k) for k in range(100)])
    data = path.read_bytes()
    assert summary.file_size == len(data)
    assert file_checksum_of(data) == summary.file_checksum
    with DeltaLayerReader(path) as reader:
        assert reader.summary == summary
        reader.verify()


@pytest.mark.parametrize("where", ["header", "block", "index", "trailer's file checksum"])
def test_verify_reads_the_whole_file(tmp_path: Path, where: str) -> None:
    path = tmp_path / "layer"
    write_delta(path, [DeltaEntry(k, 5, True, b"x" * k) for k in range(100)])
    with DeltaLayerReader(path) as reader:
        first_block, index_offset = reader.index.blocks[0], reader.trailer.index_offset
    offset = {
        "header": 3,
        "block": first_block.offset + 2,
        "index": index_offset + 1,
        "trailer's file checksum": -TRAILER_SIZE + 40,
    }[where]
    flip_byte(path, offset)
    with pytest.raises(CorruptionError, match=str(path)):
        with DeltaLayerReader(path) as reader:
            reader.verify()
