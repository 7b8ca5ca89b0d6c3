"""The delta layer file format: a key range's values over an LSN range.

A delta layer holds, for keys in [key_start, key_end) and LSNs in
[lsn_start, lsn_end), every value written, each with its `will_init` flag
(the value alone defines the key, so reconstruction can stop there). Entries
are stored in strictly increasing (key, lsn) order. Little-endian throughout;
the shared pieces are specified in block_file.py.

| offset          | size | section                                                      |
|-----------------|------|--------------------------------------------------------------|
| 0               | 88   | header: magic b"SDLT", FORMAT_VERSION (u8), tenant and       |
|                 |      | timeline ids, key_start (u64), key_end (u128, may be 2**64), |
|                 |      | lsn_start, lsn_end (u64), xxhash64 of the header             |
| 88              | ...  | blocks: each the zstd frame of an entry table (n; keys;      |
|                 |      | lsns; value offsets; will_init flags; values) of about       |
|                 |      | target_block_bytes; a larger value gets a block of its own   |
| index_offset    | 64/b | index: per block its first and last (key, lsn), offset,      |
|                 |      | lengths, entry count, xxhash64 of its compressed bytes       |
| file_size - 56  | 56   | trailer: index offset and length, block and entry counts,    |
|                 |      | index checksum, file checksum, trailer checksum              |

`LayerHeader` and `LayerTrailer` (block_file.py) are the frozen dataclasses
that encode and decode the header and trailer of both formats.

Looking up a key reads no block it does not need: a binary search of the index
finds the blocks whose (key, lsn) span meets [(key, lsn_start), (key, lsn_end)),
and a binary search of each block's keys column finds the entries.

Versions: 1 (this one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pageserver.layers.block_cache import BlockCache
from pageserver.layers.block_file import WILL_INIT, BlockFileReader, BlockFileWriter, LayerHeader

MAGIC = b"SDLT"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)


@dataclass(frozen=True)
class DeltaEntry:
    key: int
    lsn: int
    will_init: bool
    value: bytes


class DeltaLayerWriter(BlockFileWriter):
    """Writes a delta layer; `put` entries in strictly increasing (key, lsn)
    order, then `finish` (or `abort`). Crash-safe: see block_file.py."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tenant_id: str,
        timeline_id: str,
        key_start: int,
        key_end: int,
        lsn_start: int,
        lsn_end: int,
        target_block_bytes: int = 64 * 1024,
    ) -> None:
        header = LayerHeader(MAGIC, FORMAT_VERSION, tenant_id, timeline_id, key_start, key_end, lsn_start, lsn_end)
        super().__init__(path, header, "delta", target_block_bytes)

    def put(self, key: int, lsn: int, value: bytes, will_init: bool) -> None:
        """ValueError if (key, lsn) is outside the layer's ranges or not after the previous entry."""
        self._append(key, lsn, value, will_init)


class DeltaLayerReader(BlockFileReader):
    """An open delta layer. Opening checks the header, trailer and index;
    each block is checked when read. Safe to use from several threads."""

    def __init__(self, path: str | os.PathLike[str], block_cache: BlockCache | None = None) -> None:
        super().__init__(path, magic=MAGIC, kind="delta", versions=READABLE_VERSIONS, block_cache=block_cache)

    def get(self, key: int, lsn_start: int, lsn_end: int) -> list[DeltaEntry]:
        """The entries of `key` with lsn_start <= lsn < lsn_end, ascending LSN."""
        return self.get_many([key], lsn_start, lsn_end)[key]

    def get_newest_first(self, key: int, lsn_start: int, lsn_end: int, stop_at_init: bool = True) -> list[DeltaEntry]:
        """The entries of `key` with lsn_start <= lsn < lsn_end, newest first; with
        `stop_at_init`, only up to the newest entry that defines the key alone.

        Reads the key's blocks newest first and only as many as needed, so a key
        with many versions (a relation's size, rewritten on every extension)
        costs one block, not all of them."""
        out: list[DeltaEntry] = []
        if not (lsn_start < lsn_end and self.header.key_start <= key < self.header.key_end):
            return out
        numbers = self.index.overlapping((key, lsn_start), (key, lsn_end - 1))
        for number in reversed(numbers):
            block = self._read_blocks([number])[number]
            for i in reversed(block.span(key, lsn_start, lsn_end)):
                init = bool(block.flags[i] & WILL_INIT)
                out.append(DeltaEntry(key, int(block.lsns[i]), init, block.value(i)))
                if stop_at_init and init:
                    return out
        return out

    def get_many(self, keys: Iterable[int], lsn_start: int, lsn_end: int) -> dict[int, list[DeltaEntry]]:
        """`get` for each key (every key is in the result, maybe with []),
        reading each needed block once. Sorted keys read the file in order."""
        return {
            key: [DeltaEntry(*row) for block, span in found for row in block.rows(span)]
            for key, found in self._lookup(keys, lsn_start, lsn_end).items()
        }

    def iter_entries(self) -> Iterator[DeltaEntry]:
        """Every entry in (key, lsn) order (a scan: it does not fill the cache)."""
        for block in self._scan():
            for row in block.rows():
                yield DeltaEntry(*row)
