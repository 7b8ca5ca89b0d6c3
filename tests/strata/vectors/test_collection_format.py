"""strata/vectors/collection_format.py: round trips, and checksums that catch a flipped bit."""

from __future__ import annotations

import numpy as np
import pytest

from strata.vectors import collection_format as vf
from strata.errors import CorruptionError


def test_data_pages_round_trip_and_detect_a_flipped_bit() -> None:
    rng = np.random.default_rng(0)
    layout = vf.DataLayout.of(8192, 100)
    n = 3 * layout.slots
    pages = vf.DataPages(rng.random(n) < 0.5, rng.integers(0, 1 << 63, n).astype(np.uint64),
                         rng.integers(0, 99, n).astype(np.uint64), rng.normal(size=(n, 100)).astype(np.float32))
    encoded = vf.encode_data_pages(layout, pages)
    assert [len(p) for p in encoded] == [8192] * 3 and layout.end <= 8192
    back = vf.decode_data_pages(layout, encoded, "test")
    for a, b in zip((back.live, back.ids, back.seqs, back.rows), (pages.live, pages.ids, pages.seqs, pages.rows)):
        np.testing.assert_array_equal(a, b)
    for pos in (0, 4, 9, 40, layout.rows_at + 7, 8191):
        page = bytearray(encoded[1])
        page[pos] ^= 0x20
        with pytest.raises(CorruptionError, match="test page 1"):
            vf.decode_data_pages(layout, [encoded[0], bytes(page)], "test")


def test_catalog_meta_and_directory_round_trip() -> None:
    entries = [vf.CatalogEntry("a", 3, "l2", 0), vf.CatalogEntry("émbeddings", 768, "cosine", 1)]
    assert vf.decode_catalog_page(vf.encode_catalog_page(entries, 4096), "c") == entries
    meta = vf.Meta(768, "ip", 2, next_seq=9, nslots=17, npages=9)
    assert vf.decode_meta(vf.encode_meta(meta, 4096), "m") == meta
    seqs = np.arange(5, dtype=np.uint64) * 3
    assert vf.decode_dir_page(vf.encode_dir_page(seqs, 4096), "d")[:5].tolist() == seqs.tolist()
    page = bytearray(vf.encode_meta(meta, 4096))
    page[4] = 2  # a newer format version
    with pytest.raises(CorruptionError, match="version 2"):
        vf.decode_meta(bytes(page), "m")
    with pytest.raises(CorruptionError, match="magic"):
        vf.decode_meta(vf.encode_dir_page(seqs, 4096), "m")
