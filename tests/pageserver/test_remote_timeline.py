"""remote_timeline.py units: a layer file is read back against its index entry before it is uploaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash

from pageserver.index_part import LayerEntry
from pageserver.layers.block_file import file_checksum_of
from pageserver.remote_timeline import verify_layer_file
from strata.errors import CorruptionError


def test_verify_layer_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    path = tmp_path / "layer"
    path.write_bytes(data)
    entry = LayerEntry("layer", len(data), file_checksum_of(data))
    assert verify_layer_file(path, entry) == xxhash.xxh64_intdigest(data)

    flipped = bytearray(data)
    flipped[1234] ^= 0x08
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptionError, match="changed on local disk; not uploading"):
        verify_layer_file(path, entry)
    path.write_bytes(data[:-1])
    with pytest.raises(CorruptionError, match="its index entry says"):
        verify_layer_file(path, entry)
