from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver.layers.block_cache import BlockCache
from pageserver.layers.block_file import HEADER_SIZE, TRAILER_SIZE, file_checksum_of
from pageserver.layers.delta import DeltaEntry
from pageserver.layers.image import ImageLayerReader, ImageLayerWriter
from pageserver.layers.names import KEY_SPACE_END, LayerName
from strata.errors import CorruptionError
from tests.pageserver.layers.builders import TENANT, TIMELINE, flip_byte, truncate, write_delta, write_image

# An image layer written by format version 1: every later build must read it.
IMAGE_V1 = bytes.fromhex(
    "53494d47010000000123456789abcdef0123456789abcdeffedcba9876543210fedcba98765432100000000000000000"
    "0a00000000000000000000000000000050000000000000005100000000000000c5f0b2677b5be9b628b52ffd203b3501"
    "00b8020007000800500005000000050000000101736576656e060020c00a01606030301878005828b52ffd2071cd0000"
    "58010009005000016e696e650500b9437d5901400c301e00160700000000000000500000000000000008000000000000"
    "00500000000000000058000000000000002f0000003b0000000200000000000000426de98609876e0b09000000000000"
    "005000000000000000090000000000000050000000000000008700000000000000220000007100000001000000000000"
    "001bde00a8b52554e7a900000000000000800000000000000002000000000000000300000000000000221bd19d5e5c53"
    "2baf0a8dc46256088a2e209c20c2bfa9d0"
)
IMAGE_V1_ENTRIES = [(7, b"seven"), (8, b""), (9, b"nine" * 20)]


def pages() -> list[tuple[int, bytes]]:
    """Keys 0, 3, 6, .. 297 with 60-byte values: a few per 256-byte block."""
    return [(key, bytes([key % 256]) * 60) for key in range(0, 300, 3)]


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    path = tmp_path / "x.image"
    write_image(path, pages(), key_start=0, key_end=300, lsn=0x40)
    return path


_keys = st.one_of(st.integers(0, 50), st.integers(2**64 - 4, 2**64 - 1), st.integers(0, 2**64 - 1))
_values = st.one_of(st.binary(max_size=40), st.binary(min_size=257, max_size=700))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=60), st.booleans())
def test_round_trip(raw: dict[int, bytes], cached: bool) -> None:
    entries = sorted(raw.items())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.image"
        summary = write_image(path, entries, lsn=77)
        assert summary.file_checksum == file_checksum_of(path.read_bytes())
        with ImageLayerReader(path, BlockCache(4096) if cached else None) as reader:
            assert reader.summary == summary
            assert (summary.kind, summary.lsn_start, summary.lsn_end, summary.entry_count) == ("image", 77, 78, len(entries))
            assert list(reader.iter_entries()) == entries
            assert list(reader.keys()) == [k for k, _ in entries]
            probes = [k for k, _ in entries] + [0, 51, 2**64 - 1]
            for key in probes:
                assert reader.get(key) == raw.get(key)
            assert reader.get_many(probes) == {k: raw.get(k) for k in probes}
            reader.verify()


def test_lookups_at_range_and_block_edges(layer: Path) -> None:
    values = dict(pages())
    with ImageLayerReader(layer) as reader:
        assert reader.lsn == 0x40
        assert reader.summary.layer_name() == LayerName.image(0, 300, 0x40)
        blocks = reader.index.blocks
        assert len(blocks) > 10
        assert reader.get(0) == values[0]  # the first key
        assert reader.get(297) == values[297]  # the last key
        for b, nxt in zip(blocks, blocks[1:]):
            assert reader.get(b.last_key) == values[b.last_key]
            assert reader.get(nxt.first_key) == values[nxt.first_key]
            assert reader.get(b.last_key + 1) is None  # between two blocks
        for key in (1, 298, 300, 2**64 - 1):
            assert reader.get(key) is None
        assert reader.get_many([3, 4, 297]) == {3: values[3], 4: None, 297: values[297]}


def test_key_end_at_the_end_of_the_key_space(tmp_path: Path) -> None:
    path = tmp_path / "top.image"
    top = 2**64 - 1
    write_image(path, [(top - 1, b"a"), (top, b"b")], key_start=top - 1, key_end=KEY_SPACE_END)
    with ImageLayerReader(path) as reader:
        assert reader.summary.key_end == KEY_SPACE_END
        assert reader.get(top) == b"b" and reader.get(top - 1) == b"a" and reader.get(2**64) is None


def test_reads_the_first_version_of_the_format(tmp_path: Path) -> None:
    path = tmp_path / "v1.image"
    path.write_bytes(IMAGE_V1)
    with ImageLayerReader(path) as reader:
        assert (reader.summary.format_version, reader.lsn, reader.summary.key_end) == (1, 0x50, 10)
        assert list(reader.iter_entries()) == IMAGE_V1_ENTRIES
        assert reader.get(9) == b"nine" * 20
        reader.verify()


def test_a_corrupt_block_fails_only_the_reads_that_touch_it(layer: Path) -> None:
    with ImageLayerReader(layer) as reader:
        damaged, healthy = reader.index.blocks[4], reader.index.blocks[2]
    flip_byte(layer, damaged.offset + 1)
    with ImageLayerReader(layer) as reader:
        assert reader.get(healthy.first_key) is not None
        with pytest.raises(CorruptionError, match=rf"{layer}.*block 4 "):
            reader.get(damaged.last_key)
        with pytest.raises(CorruptionError, match="block 4 "):
            list(reader.iter_entries())


@pytest.mark.parametrize("offset", [1, 30, HEADER_SIZE - 2, -TRAILER_SIZE - 1, -TRAILER_SIZE, -1])
def test_corrupt_header_index_or_trailer_is_detected_at_open(layer: Path, offset: int) -> None:
    flip_byte(layer, offset)
    with pytest.raises(CorruptionError, match=str(layer)):
        ImageLayerReader(layer)


@pytest.mark.parametrize("cut", [1, TRAILER_SIZE, 100])
def test_a_truncated_file_is_detected_at_open(layer: Path, cut: int) -> None:
    truncate(layer, layer.stat().st_size - cut)
    with pytest.raises(CorruptionError, match=str(layer)):
        ImageLayerReader(layer)


def test_a_delta_layer_is_not_an_image_layer(tmp_path: Path) -> None:
    path = tmp_path / "x.delta"
    write_delta(path, [DeltaEntry(1, 1, True, b"x")])
    with pytest.raises(CorruptionError, match="magic"):
        ImageLayerReader(path)


@pytest.mark.parametrize("key", [5, 4, 3, 300, 2**64])
def test_out_of_order_or_out_of_range_put_is_rejected(tmp_path: Path, key: int) -> None:
    path = tmp_path / "x.image"
    with ImageLayerWriter(path, tenant_id=TENANT, timeline_id=TIMELINE, key_start=3, key_end=300, lsn=9) as w:
        w.put(5, b"five")
        with pytest.raises(ValueError):
            w.put(key, b"again")
        w.put(6, b"six")
        w.finish()
    with ImageLayerReader(path) as reader:
        assert list(reader.iter_entries()) == [(5, b"five"), (6, b"six")]


def test_abort_leaves_no_file(tmp_path: Path) -> None:
    w = ImageLayerWriter(tmp_path / "x.image", tenant_id=TENANT, timeline_id=TIMELINE, key_start=0, key_end=10, lsn=1, target_block_bytes=8)
    for key in range(10):
        w.put(key, b"page" * 10)
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_image_at_the_last_lsn_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lsn range"):
        ImageLayerWriter(tmp_path / "x", tenant_id=TENANT, timeline_id=TIMELINE, key_start=0, key_end=1, lsn=2**64 - 1)
