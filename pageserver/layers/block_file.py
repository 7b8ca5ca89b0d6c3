"""The block file: the layout both layer formats share (delta.py, image.py).

A layer file is a header, zstd-compressed blocks of entries, an index with one
row per block, and a fixed-size trailer that says where the index is. Every
integer is little-endian. Each format module draws its whole file; this module
holds what they share:

Header (HEADER_SIZE = 88 bytes, `LayerHeader`):

| offset | size | field                                                         |
|--------|------|---------------------------------------------------------------|
| 0      | 4    | magic: the format's (b"SDLT" delta, b"SIMG" image)            |
| 4      | 1    | format version                                                |
| 5      | 3    | reserved, zero                                                |
| 8      | 16   | tenant id (raw bytes)                                         |
| 24     | 16   | timeline id (raw bytes)                                       |
| 40     | 8    | key_start                                                     |
| 48     | 16   | key_end, a u128 (low u64, then high u64): it may be 2**64     |
| 64     | 8    | lsn_start                                                     |
| 72     | 8    | lsn_end (exclusive)                                           |
| 80     | 8    | xxhash64 of bytes 0..80                                       |

Block b (from offset HEADER_SIZE on, one after another, no gaps): the zstd
frame of the block's entry table below. Its xxhash64, seeded with its file
offset (so whole bytes in the wrong place do not validate), is in its index row
and is checked on every read.

Entry table (a decompressed block; n entries sorted by (key, lsn), strictly):

| offset   | size      | field                                                |
|----------|-----------|------------------------------------------------------|
| 0        | 4         | n                                                    |
| 4        | 4         | reserved, zero                                       |
| 8        | 8n        | keys (u64)                                           |
| 8+8n     | 8n        | lsns (u64)                                           |
| 8+16n    | 4(n+1)    | value offsets (u32) into the values; [0]=0, [n]=end  |
| 12+20n   | n         | flags (u8): bit 0 = will_init                        |
| 12+21n   | ...       | the values, concatenated                             |

The columns let a reader find a key with numpy's binary search over the keys
column and slice out only the values it returns; no loop over entries.

Index (INDEX_ROW_SIZE = 64 bytes per block, `BlockHandle`):

| offset | size | field                                                       |
|--------|------|-------------------------------------------------------------|
| 0      | 8    | first key                                                   |
| 8      | 8    | first lsn                                                   |
| 16     | 8    | last key                                                    |
| 24     | 8    | last lsn                                                    |
| 32     | 8    | file offset of the block                                    |
| 40     | 4    | compressed length                                           |
| 44     | 4    | uncompressed length (of the entry table)                    |
| 48     | 4    | entry count                                                 |
| 52     | 4    | reserved, zero                                              |
| 56     | 8    | xxhash64(compressed bytes, seed = file offset)              |

Trailer (TRAILER_SIZE = 56 bytes, the file's last bytes, `LayerTrailer`):

| offset | size | field                                                       |
|--------|------|-------------------------------------------------------------|
| 0      | 8    | index offset                                                |
| 8      | 8    | index length (bytes)                                        |
| 16     | 8    | block count                                                 |
| 24     | 8    | entry count                                                 |
| 32     | 8    | xxhash64(index bytes, seed = index offset)                  |
| 40     | 8    | file checksum: xxhash64 of every byte before this field     |
| 48     | 8    | xxhash64 of trailer bytes 0..48                             |

The file checksum (`LayerSummary.file_checksum`, what index_part.json records)
covers the whole file but its last 16 bytes, which are the file checksum itself
and the trailer checksum that guards it; so a reader knows it without reading
the file, and anyone can verify a downloaded copy with `file_checksum_of`.

What a reader trusts: opening checks the header, trailer and index (checksums,
and that the index rows tile the space between header and index in order);
every block read checks the block's checksum, its length and its entry table.
Anything wrong is a CorruptionError that names the file (and the block).

Crash consistency (`BlockFileWriter`): the writer writes `<path>.tmp`, fsyncs
it, renames it to `<path>`, then fsyncs the directory. A crash before the
rename leaves only the .tmp (never a layer: LayerName.parse rejects the name);
after it, the whole file. `<path>` is never seen half-written.

Concurrency: a reader is immutable after open and reads with os.pread
(positional, no shared file position), decompressors are per thread and the
shared `BlockCache` (block_cache.py) takes a lock, so one reader serves many
threads at once. `close`
must wait until no read is in flight (the owner holds it open meanwhile).
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import xxhash
import zstandard

from pageserver.layers.block_cache import BlockCache, FileIdentity
from pageserver.layers.names import LayerKind, LayerName, check_ranges
from strata.durable_file import fsync_dir
from strata.errors import CorruptionError
from strata.ids import MAX_U64

_HEADER = struct.Struct("<4sB3x16s16sQQQQQ")
_CHECKSUM = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size + _CHECKSUM.size
assert HEADER_SIZE == 88

_INDEX_ROW = struct.Struct("<QQQQQIII4xQ")
INDEX_ROW_SIZE = _INDEX_ROW.size
assert INDEX_ROW_SIZE == 64

_TRAILER = struct.Struct("<QQQQQQ")
TRAILER_SIZE = _TRAILER.size + _CHECKSUM.size
assert TRAILER_SIZE == 56
_FILE_CHECKSUM_AT = 40  # offset of the file checksum in the trailer
_FILE_CHECKSUM_COVERS_ALL_BUT = TRAILER_SIZE - _FILE_CHECKSUM_AT  # the file's last 16 bytes

_TABLE_HEAD = struct.Struct("<I4x")
_ENTRY_OVERHEAD = 8 + 8 + 4 + 1  # key, lsn, value offset, flags
WILL_INIT = 0x01

MAX_VALUE_BYTES = (1 << 31) - 1  # value offsets are u32; keep a block's table below 4 GiB
MAX_BLOCK_BYTES = 0xFFFFFFFF
_MAX_READ_BYTES = 4 << 20  # adjacent blocks are read with one pread up to this size
_ZSTD_LEVEL = 3
_ID_RE = re.compile(r"[0-9a-f]{32}")


def _xxh64(data: bytes | memoryview, seed: int = 0) -> int:
    return xxhash.xxh64_intdigest(data, seed=seed)


def file_checksum_of(data: bytes | memoryview) -> int:
    """The file checksum of a whole layer file's bytes (see the trailer)."""
    return _xxh64(memoryview(data)[: len(data) - _FILE_CHECKSUM_COVERS_ALL_BUT])


def _corrupt(path: Path, what: str) -> CorruptionError:
    return CorruptionError(f"layer file {path} is corrupt: {what}")


def _seal(body: bytes) -> bytes:
    """`body` followed by its xxhash64: how the header and trailer end."""
    return body + _CHECKSUM.pack(_xxh64(body))


def _unseal(data: bytes, body: struct.Struct, path: Path, what: str) -> tuple[Any, ...]:
    """The fields of a sealed `body`; CorruptionError if its length or checksum is wrong."""
    if len(data) != body.size + _CHECKSUM.size:
        raise _corrupt(path, f"{what} is {len(data)} bytes, expected {body.size + _CHECKSUM.size}")
    (checksum,) = _CHECKSUM.unpack_from(data, body.size)
    if _xxh64(memoryview(data)[: body.size]) != checksum:
        raise _corrupt(path, f"{what} checksum mismatch (a damaged or truncated file)")
    return body.unpack_from(data)


def _check_id(value: str, field: str) -> bytes:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"{field}={value!r} is malformed: expected 32 lowercase hex characters")
    return bytes.fromhex(value)


# -- header and trailer --------------------------------------------------------


@dataclass(frozen=True)
class LayerHeader:
    """The first HEADER_SIZE bytes of a layer file: what the layer covers."""

    magic: bytes
    format_version: int
    tenant_id: str
    timeline_id: str
    key_start: int
    key_end: int  # exclusive, up to 2**64: stored as a u128
    lsn_start: int
    lsn_end: int  # exclusive

    def encode(self) -> bytes:
        return _seal(
            _HEADER.pack(
                self.magic,
                self.format_version,
                _check_id(self.tenant_id, "tenant_id"),
                _check_id(self.timeline_id, "timeline_id"),
                self.key_start,
                self.key_end & MAX_U64,
                self.key_end >> 64,
                self.lsn_start,
                self.lsn_end,
            )
        )

    @classmethod
    def decode(cls, data: bytes, *, path: Path, magic: bytes, kind: LayerKind, versions: tuple[int, ...]) -> LayerHeader:
        """Raise CorruptionError naming `path` unless `data` is a valid header
        with this `magic` and one of `versions`."""
        found, version, tenant, timeline, key_start, end_lo, end_hi, lsn_start, lsn_end = _unseal(data, _HEADER, path, "header")
        if found != magic:
            raise _corrupt(path, f"magic {found!r} is not the {kind} layer magic {magic!r}")
        if version not in versions:
            raise _corrupt(path, f"unsupported {kind} layer format version {version} (this build reads {list(versions)})")
        key_end = end_hi << 64 | end_lo
        try:
            check_ranges(key_start, key_end, lsn_start, lsn_end)
        except ValueError as exc:
            raise _corrupt(path, f"header {exc}") from None
        return cls(found, version, tenant.hex(), timeline.hex(), key_start, key_end, lsn_start, lsn_end)


@dataclass(frozen=True)
class LayerTrailer:
    """The last TRAILER_SIZE bytes of a layer file: where the index is."""

    index_offset: int
    index_length: int
    block_count: int
    entry_count: int
    index_checksum: int
    file_checksum: int

    def encode(self) -> bytes:
        return _seal(_TRAILER.pack(*astuple(self)))  # the fields in table order

    @classmethod
    def decode(cls, data: bytes, *, path: Path) -> LayerTrailer:
        return cls(*_unseal(data, _TRAILER, path, "trailer"))


@dataclass(frozen=True)
class LayerSummary:
    """What a layer file holds, from its header and trailer."""

    kind: LayerKind
    tenant_id: str
    timeline_id: str
    key_start: int
    key_end: int  # exclusive, up to 2**64
    lsn_start: int
    lsn_end: int  # exclusive; lsn_start + 1 for an image layer
    entry_count: int
    file_size: int
    file_checksum: int  # file_checksum_of(the file's bytes)
    format_version: int

    @classmethod
    def of(cls, kind: LayerKind, header: LayerHeader, entry_count: int, file_size: int, file_checksum: int) -> LayerSummary:
        return cls(
            kind=kind,
            tenant_id=header.tenant_id,
            timeline_id=header.timeline_id,
            key_start=header.key_start,
            key_end=header.key_end,
            lsn_start=header.lsn_start,
            lsn_end=header.lsn_end,
            entry_count=entry_count,
            file_size=file_size,
            file_checksum=file_checksum,
            format_version=header.format_version,
        )

    def layer_name(self, generation: int = 0) -> LayerName:
        return LayerName(self.kind, self.key_start, self.key_end, self.lsn_start, self.lsn_end, generation)


# -- the index -----------------------------------------------------------------


@dataclass(frozen=True)
class BlockHandle:
    """One index row: where block `number` is and which entries it holds."""

    number: int
    first_key: int
    first_lsn: int
    last_key: int
    last_lsn: int
    offset: int
    length: int  # compressed
    raw_length: int  # the entry table's
    entry_count: int
    checksum: int

    def encode(self) -> bytes:
        return _INDEX_ROW.pack(*astuple(self)[1:])  # the fields after `number`, in table order


@dataclass(frozen=True)
class BlockIndex:
    """The blocks of a file in (key, lsn) order; they never overlap."""

    blocks: tuple[BlockHandle, ...]
    # Search columns derived from `blocks`: each block's first and last (key, lsn).
    _firsts: list[tuple[int, int]] = field(init=False, repr=False, compare=False)
    _lasts: list[tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_firsts", [(b.first_key, b.first_lsn) for b in self.blocks])
        object.__setattr__(self, "_lasts", [(b.last_key, b.last_lsn) for b in self.blocks])

    def encode(self) -> bytes:
        return b"".join(b.encode() for b in self.blocks)

    @classmethod
    def decode(cls, data: bytes, *, path: Path, header: LayerHeader, trailer: LayerTrailer) -> BlockIndex:
        """Parse and check the index rows: they must tile [HEADER_SIZE, index
        offset) in order, in (key, lsn) order, inside the header's ranges."""
        if len(data) != trailer.block_count * INDEX_ROW_SIZE:
            raise _corrupt(path, f"index is {len(data)} bytes for {trailer.block_count} blocks")
        blocks = tuple(BlockHandle(n, *row) for n, row in enumerate(_INDEX_ROW.iter_unpack(data)))
        index = cls(blocks)
        index._check(path, header, trailer)
        return index

    def _check(self, path: Path, header: LayerHeader, trailer: LayerTrailer) -> None:
        offset = HEADER_SIZE
        previous_last: tuple[int, int] | None = None
        entries = 0
        for b in self.blocks:
            where = f"index row of block {b.number}"
            if b.offset != offset or b.length == 0 or b.entry_count == 0:
                raise _corrupt(path, f"{where}: offset={b.offset} length={b.length} entries={b.entry_count}, expected offset={offset}")
            first, last = (b.first_key, b.first_lsn), (b.last_key, b.last_lsn)
            if last < first or (previous_last is not None and first <= previous_last):
                raise _corrupt(path, f"{where}: entries out of (key, lsn) order")
            if not (header.key_start <= b.first_key and b.last_key < header.key_end):
                raise _corrupt(path, f"{where}: keys outside the layer's key range")
            if not (header.lsn_start <= min(b.first_lsn, b.last_lsn) and max(b.first_lsn, b.last_lsn) < header.lsn_end):
                raise _corrupt(path, f"{where}: lsns outside the layer's lsn range")
            offset += b.length
            entries += b.entry_count
            previous_last = last
        if offset != trailer.index_offset or entries != trailer.entry_count:
            raise _corrupt(path, f"index blocks end at {offset} with {entries} entries; trailer says {trailer.index_offset} and {trailer.entry_count}")

    def overlapping(self, low: tuple[int, int], high: tuple[int, int]) -> range:
        """Numbers of the blocks that may hold entries with low <= (key, lsn) <= high."""
        return range(bisect.bisect_left(self._lasts, low), bisect.bisect_right(self._firsts, high))


# -- the entry table -----------------------------------------------------------


def _search(column: np.ndarray, value: int, side: Any) -> int:
    """np.searchsorted on a u64 column, for any Python int."""
    if value < 0:
        return 0
    if value > MAX_U64:
        return len(column)
    return int(np.searchsorted(column, np.uint64(value), side=side))


@dataclass(frozen=True, eq=False)
class EntryBlock:
    """A decoded block: numpy views of the entry table's columns over `data`."""

    keys: np.ndarray  # u64, ascending
    lsns: np.ndarray  # u64, ascending within one key
    value_offsets: np.ndarray  # u32, n + 1
    flags: np.ndarray  # u8
    data: bytes
    values_start: int

    @staticmethod
    def encode(keys: list[int], lsns: list[int], flags: bytearray, values: list[bytes]) -> bytes:
        offsets = np.array([0, *itertools.accumulate(len(v) for v in values)], dtype="<u4")
        return b"".join(
            [
                _TABLE_HEAD.pack(len(keys)),
                np.array(keys, dtype="<u8").tobytes(),
                np.array(lsns, dtype="<u8").tobytes(),
                offsets.tobytes(),
                bytes(flags),
                *values,
            ]
        )

    @classmethod
    def decode(cls, data: bytes, entry_count: int) -> EntryBlock:
        """The block's table; ValueError saying what is wrong if it is malformed."""
        if len(data) < _TABLE_HEAD.size:
            raise ValueError(f"entry table is {len(data)} bytes")
        (n,) = _TABLE_HEAD.unpack_from(data)
        values_start = _TABLE_HEAD.size + n * _ENTRY_OVERHEAD + 4
        if n != entry_count or values_start > len(data):
            raise ValueError(f"entry table holds n={n} entries in {len(data)} bytes; the index says {entry_count}")
        keys = np.frombuffer(data, "<u8", n, 8)
        lsns = np.frombuffer(data, "<u8", n, 8 + 8 * n)
        offsets = np.frombuffer(data, "<u4", n + 1, 8 + 16 * n)
        flags = np.frombuffer(data, "u1", n, 12 + 20 * n)
        if offsets[0] != 0 or int(offsets[-1]) != len(data) - values_start or bool((np.diff(offsets.astype(np.int64)) < 0).any()):
            raise ValueError("value offsets do not tile the values")
        same_key = keys[1:] == keys[:-1]
        if bool((keys[1:] < keys[:-1]).any()) or bool((same_key & (lsns[1:] <= lsns[:-1])).any()):
            raise ValueError("entries are not in strictly increasing (key, lsn) order")
        if bool((flags & ~np.uint8(WILL_INIT)).any()):
            raise ValueError("unknown entry flags")
        return cls(keys, lsns, offsets, flags, data, values_start)

    @property
    def nbytes(self) -> int:
        return len(self.data) + 256  # the table and the array objects

    def first(self) -> tuple[int, int]:
        return int(self.keys[0]), int(self.lsns[0])

    def last(self) -> tuple[int, int]:
        return int(self.keys[-1]), int(self.lsns[-1])

    def span(self, key: int, lsn_start: int, lsn_end: int) -> range:
        """Positions of the entries of `key` with lsn_start <= lsn < lsn_end."""
        lo, hi = _search(self.keys, key, "left"), _search(self.keys, key, "right")
        if lo == hi:
            return range(0)
        lsns = self.lsns[lo:hi]
        return range(lo + _search(lsns, lsn_start, "left"), lo + _search(lsns, lsn_end, "left"))

    def value(self, i: int) -> bytes:
        start = self.values_start + int(self.value_offsets[i])
        return self.data[start : self.values_start + int(self.value_offsets[i + 1])]

    def rows(self, positions: range | None = None) -> Iterator[tuple[int, int, bool, bytes]]:
        """(key, lsn, will_init, value) of the entries at `positions` (all by default)."""
        p = positions if positions is not None else range(len(self.keys))
        if not p:
            return
        keys = self.keys[p.start : p.stop].tolist()
        lsns = self.lsns[p.start : p.stop].tolist()
        flags = self.flags[p.start : p.stop].tolist()
        offsets = (self.value_offsets[p.start : p.stop + 1].astype(np.int64) + self.values_start).tolist()
        data = self.data
        for i in range(len(keys)):
            yield keys[i], lsns[i], bool(flags[i] & WILL_INIT), data[offsets[i] : offsets[i + 1]]


# -- writing -------------------------------------------------------------------


class BlockFileWriter:
    """Writes one layer file: header, then blocks as entries arrive in
    strictly increasing (key, lsn) order, then index and trailer (see the
    module docstring for the crash-safe order). Not thread-safe: one writer
    thread. Format writers subclass it and add their `put`."""

    def __init__(self, path: str | os.PathLike[str], header: LayerHeader, kind: LayerKind, target_block_bytes: int) -> None:
        if target_block_bytes <= 0:
            raise ValueError(f"target_block_bytes={target_block_bytes} must be > 0")
        check_ranges(header.key_start, header.key_end, header.lsn_start, header.lsn_end)
        header_bytes = header.encode()  # checks the ids before a file is created
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.header = header
        self.kind = kind
        self.target_block_bytes = target_block_bytes
        self._file = open(self.tmp_path, "wb")  # a leftover .tmp from a crash is overwritten
        self._hash = xxhash.xxh64()
        self._offset = 0
        self._write(header_bytes)
        self._compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self._blocks: list[BlockHandle] = []
        self._entry_count = 0
        self._last: tuple[int, int] | None = None
        # The block being filled: columns of the entry table.
        self._keys: list[int] = []
        self._lsns: list[int] = []
        self._flags = bytearray()
        self._values: list[bytes] = []
        self._pending_bytes = 0  # the table size of the block being filled
        self._state = "open"  # -> "finished" | "aborted"

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def _append(self, key: int, lsn: int, value: bytes, will_init: bool) -> None:
        if self._state != "open":
            raise ValueError(f"layer writer for {self.path} is {self._state}")
        h = self.header
        if not h.key_start <= key < h.key_end:
            raise ValueError(f"key={key:#x} is outside the layer's key range [{h.key_start:#x}, {h.key_end:#x})")
        if not h.lsn_start <= lsn < h.lsn_end:
            raise ValueError(f"lsn={lsn:#x} is outside the layer's lsn range [{h.lsn_start:#x}, {h.lsn_end:#x})")
        if self._last is not None and (key, lsn) <= self._last:
            raise ValueError(
                f"entry key={key:#x} lsn={lsn:#x} is not after the previous key={self._last[0]:#x} "
                f"lsn={self._last[1]:#x}: entries must come in strictly increasing (key, lsn) order"
            )
        value = bytes(value)
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"value of {len(value)} bytes exceeds the {MAX_VALUE_BYTES}-byte limit")
        size = _ENTRY_OVERHEAD + len(value)
        if self._keys and self._pending_bytes + size > self.target_block_bytes:
            self._flush_block()
        self._last = (key, lsn)
        self._keys.append(key)
        self._lsns.append(lsn)
        self._flags.append(WILL_INIT if will_init else 0)
        self._values.append(value)
        self._pending_bytes += size
        self._entry_count += 1
        if self._pending_bytes >= self.target_block_bytes:
            self._flush_block()  # a value larger than a block gets a block of its own

    def _flush_block(self) -> None:
        table = EntryBlock.encode(self._keys, self._lsns, self._flags, self._values)
        if len(table) > MAX_BLOCK_BYTES:
            raise ValueError(f"block of {len(table)} bytes exceeds {MAX_BLOCK_BYTES}: lower target_block_bytes")
        compressed = self._compressor.compress(table)
        handle = BlockHandle(
            number=len(self._blocks),
            first_key=self._keys[0],
            first_lsn=self._lsns[0],
            last_key=self._keys[-1],
            last_lsn=self._lsns[-1],
            offset=self._offset,
            length=len(compressed),
            raw_length=len(table),
            entry_count=len(self._keys),
            checksum=_xxh64(compressed, self._offset),
        )
        self._write(compressed)
        self._blocks.append(handle)
        self._keys, self._lsns, self._flags, self._values = [], [], bytearray(), []
        self._pending_bytes = 0

    def finish(self) -> LayerSummary:
        """Write the rest, make the file durable under its final name, and
        return its summary."""
        if self._state != "open":
            raise ValueError(f"layer writer for {self.path} is {self._state}")
        try:
            if self._keys:
                self._flush_block()
            index = BlockIndex(tuple(self._blocks)).encode()
            index_offset = self._offset
            self._write(index)
            draft = LayerTrailer(
                index_offset, len(index), len(self._blocks), self._entry_count, _xxh64(index, index_offset), file_checksum=0
            )
            self._write(draft.encode()[:_FILE_CHECKSUM_AT])  # the file checksum covers these fields too
            trailer = replace(draft, file_checksum=self._hash.intdigest())
            self._write(trailer.encode()[_FILE_CHECKSUM_AT:])
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp_path, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        return LayerSummary.of(self.kind, self.header, self._entry_count, self._offset, trailer.file_checksum)

    def abort(self) -> None:
        """Drop the unfinished file. Idempotent; does nothing after `finish`."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._file.close()  # (flushing what is buffered may fail too, e.g. out of space)
        except OSError:
            pass
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.abort()  # after an error, or left without finish(): nothing half-done stays behind


# -- reading -------------------------------------------------------------------

_decompressors = threading.local()  # zstd decompressors are not thread-safe: one per thread


def _decompress(data: bytes, raw_length: int) -> bytes:
    d = getattr(_decompressors, "zstd", None)
    if d is None:
        d = _decompressors.zstd = zstandard.ZstdDecompressor()
    if zstandard.frame_content_size(data) != raw_length:
        raise ValueError(f"zstd frame does not say {raw_length} bytes")
    out = d.decompress(data, max_output_size=raw_length)
    if len(out) != raw_length:
        raise ValueError(f"decompressed to {len(out)} bytes, expected {raw_length}")
    return out


def _runs(handles: Iterable[BlockHandle]) -> Iterator[list[BlockHandle]]:
    """`handles` (ascending) in runs of adjacent blocks of at most
    _MAX_READ_BYTES together (or one larger block): one pread each."""
    run: list[BlockHandle] = []
    for handle in handles:
        if run and (handle.number != run[-1].number + 1 or handle.offset + handle.length - run[0].offset > _MAX_READ_BYTES):
            yield run
            run = []
        run.append(handle)
    if run:
        yield run


class BlockFileReader:
    """An open layer file: validated header, trailer and index; blocks read on
    demand through the optional shared BlockCache. Format readers subclass it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        magic: bytes,
        kind: LayerKind,
        versions: tuple[int, ...],
        block_cache: BlockCache | None = None,
    ) -> None:
        self.path = Path(path)
        self.block_cache = block_cache
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._open(magic, kind, versions)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _open(self, magic: bytes, kind: LayerKind, versions: tuple[int, ...]) -> None:
        stat = os.fstat(self._fd)
        size = stat.st_size
        if size < HEADER_SIZE + TRAILER_SIZE:
            raise _corrupt(self.path, f"file is {size} bytes, shorter than a header and a trailer (truncated?)")
        self.header = LayerHeader.decode(self._pread(0, HEADER_SIZE), path=self.path, magic=magic, kind=kind, versions=versions)
        self.trailer = LayerTrailer.decode(self._pread(size - TRAILER_SIZE, TRAILER_SIZE), path=self.path)
        t = self.trailer
        if t.index_offset < HEADER_SIZE or t.index_offset + t.index_length + TRAILER_SIZE != size:
            raise _corrupt(self.path, f"trailer puts the index at {t.index_offset}+{t.index_length} in a {size}-byte file")
        index_bytes = self._pread(t.index_offset, t.index_length)
        if _xxh64(index_bytes, t.index_offset) != t.index_checksum:
            raise _corrupt(self.path, "index checksum mismatch")
        self.index = BlockIndex.decode(index_bytes, path=self.path, header=self.header, trailer=t)
        self._identity: FileIdentity = (stat.st_dev, stat.st_ino, t.file_checksum)
        self.summary = LayerSummary.of(kind, self.header, t.entry_count, size, t.file_checksum)

    def _pread(self, offset: int, length: int) -> bytes:
        if self._fd < 0:
            raise ValueError(f"layer reader for {self.path} is closed")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise _corrupt(self.path, f"short read: {len(data)} of {length} bytes at offset {offset} (truncated?)")
        return data

    def _decode_block(self, handle: BlockHandle, compressed: bytes) -> EntryBlock:
        where = f"block {handle.number} at offset {handle.offset}"
        if _xxh64(compressed, handle.offset) != handle.checksum:
            raise _corrupt(self.path, f"{where}: checksum mismatch")
        try:
            block = EntryBlock.decode(_decompress(compressed, handle.raw_length), handle.entry_count)
        except (ValueError, zstandard.ZstdError) as exc:
            raise _corrupt(self.path, f"{where}: {exc}") from None
        if block.first() != (handle.first_key, handle.first_lsn) or block.last() != (handle.last_key, handle.last_lsn):
            raise _corrupt(self.path, f"{where}: entries do not match the index row")
        return block

    def _read_blocks(self, numbers: Iterable[int], *, keep: bool = True) -> dict[int, EntryBlock]:
        """The blocks `numbers`, each read and checked once; runs of adjacent
        blocks not in the cache are read with one pread. `keep`: put what was
        read into the cache (scans pass False so they do not flush it)."""
        out: dict[int, EntryBlock] = {}
        missing: list[BlockHandle] = []
        for n in sorted(set(numbers)):
            cached = self.block_cache.get((self._identity, n)) if self.block_cache is not None else None
            if cached is not None:
                out[n] = cached
            else:
                missing.append(self.index.blocks[n])
        for run in _runs(missing):
            self._read_run(run, out, keep)
        return out

    def _read_run(self, run: list[BlockHandle], out: dict[int, EntryBlock], keep: bool) -> None:
        start = run[0].offset
        data = self._pread(start, run[-1].offset + run[-1].length - start)
        for handle in run:
            block = self._decode_block(handle, data[handle.offset - start : handle.offset - start + handle.length])
            out[handle.number] = block
            if keep and self.block_cache is not None:
                self.block_cache.put((self._identity, handle.number), block)

    def _scan(self) -> Iterator[EntryBlock]:
        """Every block in order, read in large sequential runs."""
        for run in _runs(self.index.blocks):
            read = self._read_blocks((h.number for h in run), keep=False)
            yield from (read[h.number] for h in run)

    def _lookup(self, keys: Iterable[int], lsn_start: int, lsn_end: int) -> dict[int, list[tuple[EntryBlock, range]]]:
        """For each key, the (block, positions) of its entries with lsn in
        [lsn_start, lsn_end), in order; every needed block is read once."""
        wanted: dict[int, range] = {}
        for key in keys:
            if lsn_start < lsn_end and self.header.key_start <= key < self.header.key_end:
                wanted[key] = self.index.overlapping((key, lsn_start), (key, lsn_end - 1))
            else:
                wanted[key] = range(0)
        blocks = self._read_blocks(n for numbers in wanted.values() for n in numbers)
        out: dict[int, list[tuple[EntryBlock, range]]] = {}
        for key, numbers in wanted.items():
            spans = [(blocks[n], blocks[n].span(key, lsn_start, lsn_end)) for n in numbers]
            out[key] = [(block, span) for block, span in spans if span]
        return out

    def keys(self) -> Iterator[int]:
        """The distinct keys, ascending (decompresses every block, reads only
        the keys column)."""
        previous = -1
        for block in self._scan():
            for key in np.unique(block.keys).tolist():
                if key != previous:
                    yield key
                    previous = key

    def verify(self) -> None:
        """Read the whole file: check every block (first, to name a damaged
        one), then the file checksum."""
        for _ in self._scan():
            pass
        end = self.summary.file_size - _FILE_CHECKSUM_COVERS_ALL_BUT
        hasher = xxhash.xxh64()
        for offset in range(0, end, _MAX_READ_BYTES):
            hasher.update(self._pread(offset, min(_MAX_READ_BYTES, end - offset)))
        if hasher.intdigest() != self.trailer.file_checksum:
            raise _corrupt(self.path, "file checksum mismatch")

    def close(self) -> None:
        """Close the file. Idempotent; no read may be in flight."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

