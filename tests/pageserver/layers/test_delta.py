from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.layers.block_cache import BlockCache
from pageserver.layers.block_file import HEADER_SIZE, TRAILER_SIZE, BlockIndex, LayerTrailer, file_checksum_of
from pageserver.layers.delta import DeltaEntry, DeltaLayerReader, DeltaLayerWriter
from pageserver.layers.names import KEY_SPACE_END, LayerName
from strata.errors import CorruptionError
from tests.pageserver.layers.builders import (
    TENANT,
    TIMELINE,
    flip_byte,
    run_in_threads,
    truncate,
    write_delta,
    write_image,
)

ALL = (0, KEY_SPACE_END)  # an LSN window past every u64

# A delta layer written by format version 1: every later build must read it.
DELTA_V1 = bytes.fromhex(
    "53444c54010000000123456789abcdef0123456789abcdeffedcba9876543210fedcba98765432100000000001000000"
    "000000000000000001000000000000001000000000000000290000000000000050b81fd546ee2f9628b52ffd202af500"
    "00b001000100000010000900000001706167652d30403136020060970d600128b52ffd203bf500007802000120180000"
    "05000170617463680500bb3c4195cb99d9ce880d600128b52ffd2026f50000b00100ffffffff01000000100005000000"
    "010273697a65020060a301600128b52ffd2025b50000700100ff280004000000006c6173740310001b331bda00000000"
    "010000001000000000000000000000000100000010000000000000005800000000000000270000002a00000001000000"
    "00000000cdb3a1735a7b076100000000010000002000000000000000010000000100000018000000000000007f000000"
    "00000000270000003b00000002000000000000001e511dd0343fd907ffffffff010000001000000000000000ffffffff"
    "010000001000000000000000a6000000000000002700000026000000010000000000000038bf98432121c8d2ffffffff"
    "ffffffff2800000000000000ffffffffffffffff2800000000000000cd000000000000001f0000002500000001000000"
    "0000000044651c275bddc965ec0000000000000000010000000000000400000000000000050000000000000020d1e6e8"
    "cb51927d3d3c873888dae9c73b2c116451050e44"
)
DELTA_V1_ENTRIES = [
    DeltaEntry(1 << 32, 16, True, b"page-0@16"),
    DeltaEntry(1 << 32, 32, False, b"patch"),
    DeltaEntry(1 << 32 | 1, 24, True, b""),
    DeltaEntry(1 << 32 | 0xFFFFFFFF, 16, True, b"\x02size"),
    DeltaEntry(2**64 - 1, 40, False, b"last"),
]


def grid_entries() -> list[DeltaEntry]:
    """Even keys 0..98, each at LSNs 10, 20, 30, with 40-byte values: about
    four entries per 256-byte block, so keys straddle block boundaries."""
    return [
        DeltaEntry(key, lsn, lsn == 10, bytes([key]) * 40) for key in range(0, 100, 2) for lsn in (10, 20, 30)
    ]


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.delta"
    write_delta(path, grid_entries())
    return path


def count_block_reads(reader: DeltaLayerReader) -> list[int]:
    """Record the number of every block `reader` reads from disk from now on."""
    reads: list[int] = []
    decode = reader._decode_block

    def counting(handle, compressed):  # type: ignore[no-untyped-def]
        reads.append(handle.number)
        return decode(handle, compressed)

    reader._decode_block = counting  # type: ignore[method-assign]
    return reads


def expected_get(entries: list[DeltaEntry], key: int, lo: int, hi: int) -> list[DeltaEntry]:
    return [e for e in entries if e.key == key and lo <= e.lsn < hi]


# -- round trips ---------------------------------------------------------------

_keys = st.one_of(st.integers(0, 40), st.integers(2**64 - 4, 2**64 - 1), st.integers(0, 2**64 - 1))
_values = st.one_of(st.binary(max_size=40), st.binary(min_size=257, max_size=700))  # some larger than a block
_entries = st.dictionaries(st.tuples(_keys, st.integers(1, 200)), st.tuples(_values, st.booleans()), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_entries, st.integers(0, 210), st.integers(0, 210), st.booleans())
def test_round_trip(raw: dict, lo: int, hi: int, cached: bool) -> None:
    entries = [DeltaEntry(k, lsn, init, v) for (k, lsn), (v, init) in sorted(raw.items())]
    keys = sorted({e.key for e in entries})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.delta"
        summary = write_delta(path, entries, lsn_start=1, lsn_end=201)
        assert (summary.entry_count, summary.file_size) == (len(entries), path.stat().st_size)
        assert summary.file_checksum == file_checksum_of(path.read_bytes())
        with DeltaLayerReader(path, BlockCache(4096) if cached else None) as reader:
            assert reader.summary == summary
            assert list(reader.iter_entries()) == entries
            assert list(reader.keys()) == keys
            probes = keys + [0, 41, 2**64 - 1, 2**64 - 5]
            for key in probes:
                assert reader.get(key, *ALL) == expected_get(entries, key, *ALL)
                assert reader.get(key, lo, hi) == expected_get(entries, key, lo, hi)
            assert reader.get_many(probes, lo, hi) == {k: expected_get(entries, k, lo, hi) for k in probes}
            reader.verify()


def test_summary(grid: Path) -> None:
    with DeltaLayerReader(grid) as reader:
        s = reader.summary
    assert (s.kind, s.tenant_id, s.timeline_id, s.format_version) == ("delta", TENANT, TIMELINE, 1)
    assert (s.key_start, s.key_end, s.lsn_start, s.lsn_end, s.entry_count) == (0, KEY_SPACE_END, 0, 1 << 40, 150)
    assert s.layer_name(3) == LayerName("delta", 0, KEY_SPACE_END, 0, 1 << 40, 3)


def test_empty_layer(tmp_path: Path) -> None:
    path = tmp_path / "empty.delta"
    summary = write_delta(path, [])
    with DeltaLayerReader(path) as reader:
        assert reader.summary == summary and summary.entry_count == 0
        assert reader.get(5, *ALL) == [] and list(reader.iter_entries()) == [] and list(reader.keys()) == []
        reader.verify()


def test_values_may_be_any_bytes_like(tmp_path: Path) -> None:
    path = tmp_path / "x.delta"
    with DeltaLayerWriter(path, tenant_id=TENANT, timeline_id=TIMELINE, key_start=0, key_end=9, lsn_start=0, lsn_end=9) as w:
        w.put(1, 1, bytearray(b"ab"), True)
        w.put(2, 1, memoryview(b"cd"), False)
        w.finish()
    with DeltaLayerReader(path) as reader:
        assert [e.value for e in reader.iter_entries()] == [b"ab", b"cd"]


def test_reads_the_first_version_of_the_format(tmp_path: Path) -> None:
    path = tmp_path / "v1.delta"
    path.write_bytes(DELTA_V1)
    with DeltaLayerReader(path) as reader:
        assert reader.summary.format_version == 1
        assert (reader.summary.key_start, reader.summary.lsn_start, reader.summary.lsn_end) == (1 << 32, 16, 41)
        assert list(reader.iter_entries()) == DELTA_V1_ENTRIES
        assert reader.get(1 << 32, 16, 32) == DELTA_V1_ENTRIES[:1]
        reader.verify()


# -- lookups at the edges ------------------------------------------------------


def test_lookups_at_range_and_block_edges(grid: Path) -> None:
    entries = grid_entries()
    with DeltaLayerReader(grid) as reader:
        assert len(reader.index.blocks) > 10
        assert reader.get(0, *ALL) == entries[:3]  # the first key
        assert reader.get(98, *ALL) == entries[-3:]  # the last key
        for key in (1, 51, 97, 99, 100, 2**64 - 1):  # absent: between keys, past the last
            assert reader.get(key, *ALL) == []
        # LSN windows with bounds exactly at entry LSNs: start included, end excluded.
        assert [e.lsn for e in reader.get(40, 10, 30)] == [10, 20]
        assert [e.lsn for e in reader.get(40, 20, 31)] == [20, 30]
        assert [e.lsn for e in reader.get(40, 30, 30)] == []
        assert [e.lsn for e in reader.get(40, 11, 20)] == []
        assert [e.lsn for e in reader.get(40, 30, 2**64 + 5)] == [30]
        assert reader.get(40, 20, 10) == []


def test_keys_straddling_blocks_and_keys_between_blocks(grid: Path) -> None:
    entries = grid_entries()
    with DeltaLayerReader(grid) as reader:
        blocks = reader.index.blocks
        straddling = [b.last_key for b, nxt in zip(blocks, blocks[1:]) if b.last_key == nxt.first_key]
        between = [b.last_key + 1 for b, nxt in zip(blocks, blocks[1:]) if b.last_key < nxt.first_key]
        assert straddling and between
        reads = count_block_reads(reader)
        for key in straddling:
            assert reader.get(key, *ALL) == expected_get(entries, key, *ALL)
        for key in between:
            assert reader.get(key, *ALL) == []
        for key in between:  # a key that falls between two blocks reads neither
            before = len(reads)
            reader.get(key, *ALL)
            assert len(reads) == before


def test_a_narrow_lsn_window_reads_only_its_block(grid: Path) -> None:
    with DeltaLayerReader(grid) as reader:
        blocks = reader.index.blocks
        b = next(b for b, nxt in zip(blocks, blocks[1:]) if b.last_key == nxt.first_key)
        reads = count_block_reads(reader)
        key = b.last_key
        assert [e.lsn for e in reader.get(key, b.last_lsn, b.last_lsn + 1)] == [b.last_lsn]
        assert reads == [b.number]


def test_key_end_at_the_end_of_the_key_space(tmp_path: Path) -> None:
    path = tmp_path / "top.delta"
    top = 2**64 - 1
    entries = [DeltaEntry(top - 1, 5, True, b"a"), DeltaEntry(top, 5, True, b"b"), DeltaEntry(top, 6, False, b"c")]
    write_delta(path, entries, key_start=top - 1, key_end=KEY_SPACE_END)
    with DeltaLayerReader(path) as reader:
        assert reader.summary.key_end == 2**64
        assert reader.get(top, *ALL) == entries[1:]
        assert reader.get(2**64, *ALL) == []
        assert list(reader.keys()) == [top - 1, top]


def test_get_many_reads_each_needed_block_once(grid: Path) -> None:
    entries = grid_entries()
    with DeltaLayerReader(grid) as reader:
        reads = count_block_reads(reader)
        keys = list(range(0, 100))
        found = reader.get_many(keys + [0, 40], *ALL)
        assert found == {k: expected_get(entries, k, *ALL) for k in keys}
        assert sorted(reads) == list(range(len(reader.index.blocks)))  # each block once
        reads.clear()
        assert reader.get_many([40, 42], 20, 21) == {40: [entries[61]], 42: [entries[64]]}
        assert len(reads) == len(set(reads)) <= 2


def test_block_cache_serves_repeated_reads(grid: Path) -> None:
    cache = BlockCache(1 << 20)
    with DeltaLayerReader(grid, cache) as reader:
        reads = count_block_reads(reader)
        first = reader.get(40, *ALL)
        n = len(reads)
        assert reader.get(40, *ALL) == first and len(reads) == n
        list(reader.iter_entries())  # a scan reads past the cache and does not fill it
        assert len(cache) == n


def test_concurrent_readers_share_one_reader(grid: Path) -> None:
    entries = grid_entries()
    with DeltaLayerReader(grid, BlockCache(2000)) as reader:

        def work(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(300):
                key, lo = rng.randrange(0, 100), rng.choice([0, 10, 20, 30])
                assert reader.get(key, lo, lo + 15) == expected_get(entries, key, lo, lo + 15)

        run_in_threads(work, 8)


# -- corruption ----------------------------------------------------------------


def test_a_corrupt_block_fails_only_the_reads_that_touch_it(grid: Path) -> None:
    with DeltaLayerReader(grid) as reader:
        damaged = reader.index.blocks[5]
        healthy = reader.index.blocks[9]
    flip_byte(grid, damaged.offset + damaged.length // 2)
    with DeltaLayerReader(grid, BlockCache(1 << 20)) as reader:  # opening reads no block
        assert reader.get(healthy.first_key, healthy.first_lsn, healthy.first_lsn + 1) != []
        with pytest.raises(CorruptionError, match=rf"{grid}.*block 5 "):
            reader.get(damaged.first_key, damaged.first_lsn, damaged.first_lsn + 1)
        with pytest.raises(CorruptionError, match="block 5 "):
            reader.get_many([healthy.first_key, damaged.last_key], *ALL)
        with pytest.raises(CorruptionError, match="block 5 "):
            list(reader.iter_entries())
        with pytest.raises(CorruptionError, match="block 5 "):
            reader.verify()


def _index_offset(path: Path) -> int:
    with DeltaLayerReader(path) as reader:
        return reader.trailer.index_offset


@pytest.mark.parametrize(
    "where",
    ["magic", "version", "header ids", "header key_end", "header checksum", "index start", "index end", "trailer"],
)
def test_corrupt_header_index_or_trailer_is_detected_at_open(grid: Path, where: str) -> None:
    size = grid.stat().st_size
    index = _index_offset(grid)
    offset = {
        "magic": 0,
        "version": 4,
        "header ids": 20,
        "header key_end": 56,
        "header checksum": HEADER_SIZE - 1,
        "index start": index,
        "index end": size - TRAILER_SIZE - 1,
        "trailer": size - TRAILER_SIZE + 3,
    }[where]
    flip_byte(grid, offset)
    with pytest.raises(CorruptionError, match=str(grid)):
        DeltaLayerReader(grid)


def test_an_index_that_does_not_tile_the_file_is_detected(grid: Path) -> None:
    """Rows with valid checksums that disagree with the file are corruption too."""
    data = grid.read_bytes()
    with DeltaLayerReader(grid) as reader:
        trailer, blocks = reader.trailer, list(reader.index.blocks)
    blocks[3] = replace(blocks[3], length=blocks[3].length + 1)
    index = BlockIndex(tuple(blocks)).encode()
    body = data[: trailer.index_offset] + index
    sealed = replace(trailer, index_checksum=_seeded(index, trailer.index_offset))
    draft = body + sealed.encode()
    grid.write_bytes(body + replace(sealed, file_checksum=file_checksum_of(draft)).encode())
    with pytest.raises(CorruptionError, match="index row of block 4"):
        DeltaLayerReader(grid)


def _seeded(data: bytes, seed: int) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(data, seed=seed)


@pytest.mark.parametrize("keep", [0, 10, HEADER_SIZE, HEADER_SIZE + TRAILER_SIZE, 0.5, -1, -TRAILER_SIZE])
def test_a_truncated_file_is_detected_at_open(grid: Path, keep: float) -> None:
    size = grid.stat().st_size
    truncate(grid, int(size * keep) if isinstance(keep, float) else (keep if keep >= 0 else size + keep))
    with pytest.raises(CorruptionError, match=str(grid)):
        DeltaLayerReader(grid)


def test_trailing_garbage_is_detected_at_open(grid: Path) -> None:
    with open(grid, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CorruptionError, match="trailer"):
        DeltaLayerReader(grid)


def test_an_image_layer_is_not_a_delta_layer(tmp_path: Path) -> None:
    path = tmp_path / "x.image"
    write_image(path, [(1, b"x")])
    with pytest.raises(CorruptionError, match="magic"):
        DeltaLayerReader(path)


# -- the writer ----------------------------------------------------------------


def new_writer(path: Path, **kw: int) -> DeltaLayerWriter:
    ranges = {"key_start": 10, "key_end": 20, "lsn_start": 100, "lsn_end": 200} | kw
    return DeltaLayerWriter(path, tenant_id=TENANT, timeline_id=TIMELINE, **ranges)


@pytest.mark.parametrize(
    "key, lsn",
    [(12, 150), (12, 149), (11, 151), (9, 160), (20, 160), (13, 99), (13, 200), (2**64, 150)],
)
def test_out_of_order_or_out_of_range_put_is_rejected(tmp_path: Path, key: int, lsn: int) -> None:
    path = tmp_path / "x.delta"
    with new_writer(path) as w:
        w.put(12, 150, b"a", True)
        with pytest.raises(ValueError):
            w.put(key, lsn, b"b", False)
        w.put(12, 151, b"c", False)  # the writer is still usable
        w.finish()
    with DeltaLayerReader(path) as reader:
        assert [(e.key, e.lsn) for e in reader.iter_entries()] == [(12, 150), (12, 151)]


@pytest.mark.parametrize(
    "ranges",
    [
        {"key_start": 5, "key_end": 5},
        {"key_end": KEY_SPACE_END + 1},
        {"lsn_start": 7, "lsn_end": 3},
        {"lsn_end": 2**64},
    ],
)
def test_invalid_ranges_are_rejected(tmp_path: Path, ranges: dict) -> None:
    with pytest.raises(ValueError):
        new_writer(tmp_path / "x.delta", **ranges)
    assert list(tmp_path.iterdir()) == []


def test_malformed_ids_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeline_id"):
        DeltaLayerWriter(tmp_path / "x", tenant_id=TENANT, timeline_id="nope", key_start=0, key_end=1, lsn_start=0, lsn_end=1)
    assert list(tmp_path.iterdir()) == []


def test_abort_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.delta"
    w = new_writer(path, target_block_bytes=16)
    for key in range(10, 20):
        w.put(key, 150, b"v" * 30, True)
    w.abort()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="aborted"):
        w.put(19, 199, b"", True)
    with pytest.raises(ValueError, match="aborted"):
        w.finish()


def test_leaving_the_with_block_without_finish_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with new_writer(tmp_path / "a.delta") as w:
            w.put(10, 100, b"x", True)
            raise RuntimeError("ingest failed")
    with new_writer(tmp_path / "b.delta") as w:
        w.put(10, 100, b"x", True)
    assert list(tmp_path.iterdir()) == []


def test_finish_is_final(tmp_path: Path) -> None:
    path = tmp_path / "x.delta"
    w = new_writer(path)
    w.put(10, 100, b"x", True)
    w.finish()
    w.abort()  # does not remove a finished layer
    assert [p.name for p in tmp_path.iterdir()] == ["x.delta"]
    with pytest.raises(ValueError, match="finished"):
        w.put(11, 100, b"y", True)
    with pytest.raises(ValueError, match="finished"):
        w.finish()


_CRASHING_WRITER = """
import os, sys
from pageserver.layers.delta import DeltaLayerWriter
w = DeltaLayerWriter(sys.argv[1], tenant_id=sys.argv[2], timeline_id=sys.argv[2],
                     key_start=0, key_end=1 << 64, lsn_start=0, lsn_end=100, target_block_bytes=64)
for key in range(100):
    w.put(key, 1, b"v" * 50, True)
w._file.flush()
os._exit(0)  # the process dies before finish()
"""


def test_a_crashed_writer_leaves_only_a_tmp_file_that_is_not_a_layer(tmp_path: Path) -> None:
    name = LayerName("delta", 0, KEY_SPACE_END, 0, 100)
    path = tmp_path / name.file_name
    subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path), TENANT], check=True, cwd=Path(__file__).parents[3])
    leftover = tmp_path / (name.file_name + ".tmp")
    assert [p.name for p in tmp_path.iterdir()] == [leftover.name]
    assert leftover.stat().st_size > HEADER_SIZE
    with pytest.raises(ValueError):
        LayerName.parse(leftover.name)
    with pytest.raises(CorruptionError):
        DeltaLayerReader(leftover)
    # Writing the layer again replaces the leftover.
    entries = [DeltaEntry(k, 1, True, b"w") for k in range(3)]
    write_delta(path, entries, lsn_end=100)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with DeltaLayerReader(path) as reader:
        assert list(reader.iter_entries()) == entries


def test_closed_reader_refuses_reads(grid: Path) -> None:
    reader = DeltaLayerReader(grid)
    reader.close()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.get(0, *ALL)
