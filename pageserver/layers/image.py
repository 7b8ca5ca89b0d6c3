"""The image layer file format: a key range's values at one LSN.

An image layer at LSN L holds, for keys in [key_start, key_end), the value of
each key at L that defines it alone (a page image, a relation's state); a key
of the range that it does not hold had no value at L. Its LSN range is
[L, L + 1). Little-endian throughout; the shared pieces are specified in
block_file.py.

| offset          | size | section                                                      |
|-----------------|------|--------------------------------------------------------------|
| 0               | 88   | header: magic b"SIMG", FORMAT_VERSION (u8), tenant and       |
|                 |      | timeline ids, key_start (u64), key_end (u128, may be 2**64), |
|                 |      | lsn_start = L, lsn_end = L + 1 (u64), xxhash64 of the header |
| 88              | ...  | blocks: each the zstd frame of an entry table (n; keys;      |
|                 |      | lsns; value offsets; flags; values) of about                 |
|                 |      | target_block_bytes; a larger value gets a block of its own   |
| index_offset    | 64/b | index: per block its first and last (key, lsn), offset,      |
|                 |      | lengths, entry count, xxhash64 of its compressed bytes       |
| file_size - 56  | 56   | trailer: index offset and length, block and entry counts,    |
|                 |      | index checksum, file checksum, trailer checksum              |

`LayerHeader` and `LayerTrailer` (block_file.py) are the frozen dataclasses
that encode and decode the header and trailer of both formats.

Entries share the delta layer's entry table, so one block codec, index and read
path serve both formats: every entry has lsn = L and will_init set. Those two
columns are constant, so zstd stores them in a few bytes per block.

Versions: 1 (this one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from pageserver.layers.block_cache import BlockCache
from pageserver.layers.block_file import BlockFileReader, BlockFileWriter, LayerHeader

MAGIC = b"SIMG"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)


class ImageLayerWriter(BlockFileWriter):
    """Writes an image layer; `put` values in strictly increasing key order,
    then `finish` (or `abort`). Crash-safe: see block_file.py."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tenant_id: str,
        timeline_id: str,
        key_start: int,
        key_end: int,
        lsn: int,
        target_block_bytes: int = 64 * 1024,
    ) -> None:
        header = LayerHeader(MAGIC, FORMAT_VERSION, tenant_id, timeline_id, key_start, key_end, lsn, lsn + 1)
        super().__init__(path, header, "image", target_block_bytes)
        self.lsn = lsn

    def put(self, key: int, value: bytes) -> None:
        """ValueError if `key` is outside the layer's range or not after the previous key."""
        self._append(key, self.lsn, value, True)


class ImageLayerReader(BlockFileReader):
    """An open image layer. Opening checks the header, trailer and index;
    each block is checked when read. Safe to use from several threads."""

    def __init__(self, path: str | os.PathLike[str], block_cache: BlockCache | None = None) -> None:
        super().__init__(path, magic=MAGIC, kind="image", versions=READABLE_VERSIONS, block_cache=block_cache)

    @property
    def lsn(self) -> int:
        return self.header.lsn_start

    def get(self, key: int) -> bytes | None:
        """The value of `key`, or None if the layer does not hold it."""
        return self.get_many([key])[key]

    def get_many(self, keys: Iterable[int]) -> dict[int, bytes | None]:
        """`get` for each key (absent ones map to None), reading each needed
        block once. Sorted keys read the file in order."""
        return {
            key: found[0][0].value(found[0][1].start) if found else None
            for key, found in self._lookup(keys, self.lsn, self.lsn + 1).items()
        }

    def iter_entries(self) -> Iterator[tuple[int, bytes]]:
        """Every (key, value) in key order (a scan: it does not fill the cache)."""
        for block in self._scan():
            for key, _, _, value in block.rows():
                yield key, value
