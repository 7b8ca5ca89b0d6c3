"""LayerMap.walk: which values of a key a read sees, newest first, and where
the walk ends (INIT, ABSENT, OPEN), over in-memory layers and real delta and
image layer files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pageserver.keys import KEY_SPACE_END, page_key, rel_meta_key
from pageserver.layer_map import HistoricLayer, LayerMap, WalkEnd
from pageserver.layers.block_cache import BlockCache
from pageserver.layers.delta import DeltaLayerWriter
from pageserver.layers.image import ImageLayerWriter
from pageserver.layers.in_memory_layer import InMemoryLayer
from pageserver.layers.names import LayerName
from pageserver.value import RelState, encode_image, encode_patch, encode_rel_state, will_init
from tests.pageserver.world import new_id, patch

TENANT, TIMELINE = new_id(), new_id()
K = page_key(5, 3)
OTHER = page_key(5, 4)


def img(fill: int) -> bytes:
    return encode_image(bytes([fill]) * 512)


def rec(text: bytes) -> bytes:
    return encode_patch(patch(5, 3, 0, text).SerializeToString(), from_zero=False)


def memory(start: int, entries: list[tuple[int, int, bytes]], frozen: bool = True) -> InMemoryLayer:
    layer = InMemoryLayer(start)
    for key, lsn, value in entries:
        layer.put(key, lsn, value)
    if frozen:
        layer.freeze()
    return layer


def delta(
    directory: Path, entries: list[tuple[int, int, bytes]], lsn_start: int, lsn_end: int,
    key_start: int = 0, key_end: int = KEY_SPACE_END,
) -> HistoricLayer:
    name = LayerName("delta", key_start, key_end, lsn_start, lsn_end)
    writer = DeltaLayerWriter(
        directory / name.file_name, tenant_id=TENANT, timeline_id=TIMELINE,
        key_start=key_start, key_end=key_end, lsn_start=lsn_start, lsn_end=lsn_end, target_block_bytes=600,
    )
    with writer:
        for key, lsn, value in sorted(entries):
            writer.put(key, lsn, value, will_init(value))
        summary = writer.finish()
    return HistoricLayer(name, directory / name.file_name, summary.file_size, summary.file_checksum)


def image(directory: Path, entries: dict[int, bytes], lsn: int, key_start: int = 0, key_end: int = KEY_SPACE_END) -> HistoricLayer:
    name = LayerName.image(key_start, key_end, lsn)
    writer = ImageLayerWriter(
        directory / name.file_name, tenant_id=TENANT, timeline_id=TIMELINE, key_start=key_start, key_end=key_end, lsn=lsn
    )
    with writer:
        for key in sorted(entries):
            writer.put(key, entries[key])
        summary = writer.finish()
    return HistoricLayer(name, directory / name.file_name, summary.file_size, summary.file_checksum)


@pytest.fixture
def lm() -> LayerMap:
    layer_map = LayerMap(BlockCache(1 << 20))
    yield layer_map
    layer_map.close()


def lsns(result) -> list[int]:
    return [lsn for lsn, _ in result.values]


def test_in_memory_newest_first_stopping_at_an_init_value(lm: LayerMap) -> None:
    lm.frozen = [memory(1, [(K, 1, img(1)), (K, 5, rec(b"a"))]), memory(10, [(K, 12, rec(b"b")), (OTHER, 13, img(2))])]
    lm.open_layer = memory(20, [(K, 20, rec(b"c")), (K, 25, img(3)), (K, 30, rec(b"d"))], frozen=False)
    assert [l.start_lsn for l in lm.in_memory_newest_first()] == [20, 10, 1]

    r = lm.walk(K, 0, 100)
    assert (lsns(r), r.end) == ([30, 25], WalkEnd.INIT)
    r = lm.walk(K, 0, 25)  # lsn_hi is exclusive
    assert (lsns(r), r.end) == ([20, 12, 5, 1], WalkEnd.INIT)
    r = lm.walk(K, 3, 25)  # lsn_lo is inclusive; nothing defines the key above it
    assert (lsns(r), r.end) == ([20, 12, 5], WalkEnd.OPEN)
    r = lm.walk(K, 0, 100, stop_at_init=False)
    assert lsns(r) == [30, 25, 20, 12, 5, 1]
    assert lm.walk(page_key(6, 0), 0, 100).values == []
    assert lm.walk(page_key(6, 0), 0, 100).end is WalkEnd.OPEN


def test_deltas_then_the_newest_image_below(tmp_path: Path, lm: LayerMap) -> None:
    lm.historic = [
        delta(tmp_path, [(K, 1, img(1)), (K, 4, rec(b"a")), (OTHER, 5, img(9))], 1, 10),
        image(tmp_path, {K: img(7)}, 10),  # K at 10 is img(7); OTHER was zero
        delta(tmp_path, [(K, 12, rec(b"b")), (K, 15, rec(b"c"))], 10, 20),
        delta(tmp_path, [(K, 22, rec(b"d"))], 20, 30),
    ]
    r = lm.walk(K, 0, 100)
    assert (lsns(r), r.end, r.end_lsn) == ([22, 15, 12, 10], WalkEnd.INIT, 10)
    assert r.values[-1][1] == img(7)
    # Below the image: the deltas it replaced.
    r = lm.walk(K, 0, 10)
    assert (lsns(r), r.end) == ([4, 1], WalkEnd.INIT)
    # An image that does not hold a key says it was not there.
    r = lm.walk(OTHER, 0, 100)
    assert (r.values, r.end, r.end_lsn) == ([], WalkEnd.ABSENT, 10)
    assert lsns(lm.walk(OTHER, 0, 10)) == [5]
    # An image below lsn_lo is not consulted.
    r = lm.walk(K, 11, 100)
    assert (lsns(r), r.end) == ([22, 15, 12], WalkEnd.OPEN)
    # Without stopping at init values, the walk still ends at the image.
    r = lm.walk(K, 0, 100, stop_at_init=False)
    assert (lsns(r), r.end) == ([22, 15, 12, 10], WalkEnd.INIT)


def test_layers_of_other_keys_and_l0_classification(tmp_path: Path, lm: LayerMap) -> None:
    meta = rel_meta_key(0xFFFFFFFF)
    assert meta == KEY_SPACE_END - 1
    state = encode_rel_state(RelState(True, 3))
    l0 = delta(tmp_path, [(K, 1, img(1)), (meta, 2, state)], 1, 5)
    l1_low = delta(tmp_path, [(K, 6, img(2))], 5, 10, key_start=K, key_end=K + 1)
    l1_high = delta(tmp_path, [(meta, 7, encode_rel_state(RelState(True, 4)))], 5, 10, key_start=meta, key_end=KEY_SPACE_END)
    img_low = image(tmp_path, {}, 12, key_start=0, key_end=OTHER)
    lm.historic = [l1_high, img_low, l0, l1_low]
    assert lm.l0_deltas() == [l0]
    r = lm.walk(meta, 0, 100)  # the image does not cover the metadata key
    assert (lsns(r), r.end) == ([7], WalkEnd.INIT)
    r = lm.walk(K, 0, 100)  # it covers K and does not hold it
    assert (r.values, r.end) == ([], WalkEnd.ABSENT)
    assert lsns(lm.walk(K, 0, 12)) == [6]
    assert lsns(lm.walk(OTHER, 0, 100)) == []


def test_memory_above_files(tmp_path: Path, lm: LayerMap) -> None:
    lm.historic = [delta(tmp_path, [(K, 1, img(1)), (K, 3, rec(b"a"))], 1, 5)]
    lm.frozen = [memory(5, [(K, 6, rec(b"b"))])]
    lm.open_layer = memory(7, [(K, 8, rec(b"c"))], frozen=False)
    r = lm.walk(K, 0, 100)
    assert (lsns(r), r.end) == ([8, 6, 3, 1], WalkEnd.INIT)
    r = lm.walk(K, 2, 7)
    assert (lsns(r), r.end) == ([6, 3], WalkEnd.OPEN)
