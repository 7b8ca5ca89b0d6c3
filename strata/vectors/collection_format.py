"""The vector page format: collections stored in a timeline's relations.

docs/design/0004-vectors.md explains the design; this is the byte layout.
compute_shim.VectorCollection writes and reads these pages; the index builds
(gpu/) read them from layer snapshots.
Everything is little-endian, and every page is written whole (PageImage), so
each page carries its own checksum.

Relations (rel numbers are fixed; SQLite compute uses rels below 2**30):

| rel                          | what                                              |
|------------------------------|---------------------------------------------------|
| CATALOG_REL = 0x56450000     | the catalog: collection name -> number, dim, metric |
| CATALOG_REL + 2 + 2*i        | collection i's data pages (slots)                 |
| CATALOG_REL + 3 + 2*i        | collection i's directory: meta page + page seqs   |

Every page starts with a 32-byte header:

| offset | size | field                                                          |
|--------|------|----------------------------------------------------------------|
| 0      | 4    | magic: b"SVCT" catalog, b"SVMT" meta, b"SVDR" directory, b"SVDT" data |
| 4      | 1    | FORMAT_VERSION (1)                                             |
| 5      | 3    | zero                                                           |
| 8      | 8    | xxhash64 of bytes [16, page_size)                              |
| 16     | 16   | kind-specific header fields (below)                            |

- catalog page: header fields `count` (u32, entries on this page); from byte
  32, CATALOG_ENTRY (64 bytes) each: name length (u8), name (47 bytes UTF-8,
  zero padded), dim (u32), metric (u8: 0 l2, 1 cosine, 2 ip), 7 zero bytes,
  collection number i (u32). Page b holds entries b*E .. b*E+E-1, E =
  (page_size - 32) // 64.
- meta page (directory block 0): header fields dim (u32), metric (u8), 3 zero
  bytes, slots_per_page (u32), 4 zero; from byte 32: next_seq (u64; every
  change so far has a smaller seq), nslots (u64; slots ever used, the high
  water mark), npages (u64; data pages).
- directory page b >= 1: header fields unused (zero); from byte 32, u64
  page_seq for data pages (b-1)*E .. (b-1)*E+E-1, E = (page_size - 32) // 8:
  the seq of the newest change to that data page.
- data page: header fields slot count S (u32) and dim (u32); from byte 32:
  the live bitmap (S bits, padded to 8 bytes), ids (u64[S]), seqs (u64[S]:
  the seq of the change that last wrote the slot, also set by a delete),
  rows (float32[S][dim]). S is the most slots that fit.

A change (one upsert or delete call) takes seq = next_seq, writes every
data page it touches, those pages' directory entries and the meta page with
next_seq + 1, in one Append. A reader at LSN L that knows an index built at
snapshot S (with next_seq N at S) finds everything changed after S by reading
only at L: the directory names the data pages with page_seq >= N, and in
them the slots with seq >= N changed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import xxhash

from strata.errors import CorruptionError, InvalidArgument

FORMAT_VERSION = 1
CATALOG_REL = 0x56450000
HEADER_BYTES = 32
CATALOG_ENTRY_BYTES = 64
MAX_NAME_BYTES = 47
METRICS = ("l2", "cosine", "ip")

MAGIC_CATALOG = b"SVCT"
MAGIC_META = b"SVMT"
MAGIC_DIR = b"SVDR"
MAGIC_DATA = b"SVDT"

_HEADER = struct.Struct("<4sB3xQ16s")
_CATALOG_FIELDS = struct.Struct("<I12x")
_META_FIELDS = struct.Struct("<IB3xI4x")
_META_BODY = struct.Struct("<QQQ")
_DATA_FIELDS = struct.Struct("<II8x")
_ENTRY = struct.Struct("<B47sIB7xI")


def data_rel(number: int) -> int:
    return CATALOG_REL + 2 + 2 * number


def dir_rel(number: int) -> int:
    return CATALOG_REL + 3 + 2 * number


def seal(page: bytearray, magic: bytes, fields: bytes) -> bytes:
    """Fill in the header of a page whose body (bytes 32..) is written."""
    page[16:32] = fields.ljust(16, b"\0")
    checksum = xxhash.xxh64_intdigest(memoryview(page)[16:])
    page[0:16] = _HEADER.pack(magic, FORMAT_VERSION, checksum, b"")[:16]
    return bytes(page)


def unseal(page: bytes, magic: bytes, where: str) -> bytes:
    """The kind-specific header fields of a checked page; CorruptionError otherwise."""
    got_magic, version, checksum, fields = _HEADER.unpack_from(page, 0)
    if got_magic != magic:
        raise CorruptionError(f"{where}: magic {got_magic!r}, expected {magic!r}")
    if version != FORMAT_VERSION:
        raise CorruptionError(f"{where}: vector page format version {version}, this reader knows {FORMAT_VERSION}")
    actual = xxhash.xxh64_intdigest(memoryview(page)[16:])
    if actual != checksum:
        raise CorruptionError(f"{where}: checksum {actual:016x} does not match the stored {checksum:016x}")
    return fields


# -- catalog ------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    dim: int
    metric: str
    number: int

    @property
    def data_rel(self) -> int:
        return data_rel(self.number)

    @property
    def dir_rel(self) -> int:
        return dir_rel(self.number)


def catalog_entries_per_page(page_size: int) -> int:
    return (page_size - HEADER_BYTES) // CATALOG_ENTRY_BYTES


def check_name(name: str) -> bytes:
    raw = name.encode() if isinstance(name, str) else b""
    if not raw or len(raw) > MAX_NAME_BYTES or "/" in name or name.startswith("."):
        raise InvalidArgument(
            f"collection name={name!r} is invalid: expected 1..{MAX_NAME_BYTES} bytes of UTF-8 without '/' "
            "and not starting with '.'"
        )
    return raw


def encode_catalog_page(entries: list[CatalogEntry], page_size: int) -> bytes:
    page = bytearray(page_size)
    for j, e in enumerate(entries):
        raw = check_name(e.name)
        _ENTRY.pack_into(page, HEADER_BYTES + j * CATALOG_ENTRY_BYTES, len(raw), raw, e.dim, METRICS.index(e.metric), e.number)
    return seal(page, MAGIC_CATALOG, _CATALOG_FIELDS.pack(len(entries)))


def decode_catalog_page(page: bytes, where: str) -> list[CatalogEntry]:
    (count,) = _CATALOG_FIELDS.unpack(unseal(page, MAGIC_CATALOG, where))
    out = []
    for j in range(count):
        n, raw, dim, metric, number = _ENTRY.unpack_from(page, HEADER_BYTES + j * CATALOG_ENTRY_BYTES)
        out.append(CatalogEntry(raw[:n].decode(), dim, METRICS[metric], number))
    return out


# -- meta and directory -------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    dim: int
    metric: str
    slots_per_page: int
    next_seq: int
    nslots: int
    npages: int


def encode_meta(meta: Meta, page_size: int) -> bytes:
    page = bytearray(page_size)
    _META_BODY.pack_into(page, HEADER_BYTES, meta.next_seq, meta.nslots, meta.npages)
    return seal(page, MAGIC_META, _META_FIELDS.pack(meta.dim, METRICS.index(meta.metric), meta.slots_per_page))


def decode_meta(page: bytes, where: str) -> Meta:
    dim, metric, spp = _META_FIELDS.unpack(unseal(page, MAGIC_META, where))
    next_seq, nslots, npages = _META_BODY.unpack_from(page, HEADER_BYTES)
    return Meta(dim, METRICS[metric], spp, next_seq, nslots, npages)


def dir_entries_per_page(page_size: int) -> int:
    return (page_size - HEADER_BYTES) // 8


def encode_dir_page(page_seqs: np.ndarray, page_size: int) -> bytes:
    page = bytearray(page_size)
    body = np.asarray(page_seqs, dtype="<u8").tobytes()
    page[HEADER_BYTES : HEADER_BYTES + len(body)] = body
    return seal(page, MAGIC_DIR, b"")


def decode_dir_page(page: bytes, where: str) -> np.ndarray:
    unseal(page, MAGIC_DIR, where)
    return np.frombuffer(page, dtype="<u8", offset=HEADER_BYTES, count=dir_entries_per_page(len(page))).astype(np.uint64)


# -- data pages ---------------------------------------------------------------------


@dataclass(frozen=True)
class DataLayout:
    """Where a data page keeps its columns, for one page size and dim."""

    page_size: int
    dim: int
    slots: int  # S

    @classmethod
    def of(cls, page_size: int, dim: int) -> DataLayout:
        room = page_size - HEADER_BYTES
        slots = (room * 8) // (8 * (16 + 4 * dim) + 1)
        while slots > 0 and cls(page_size, dim, slots).end > page_size:
            slots -= 1
        if slots < 1:
            largest = (room - 8 - 16) // 4
            raise InvalidArgument(f"dim={dim} does not fit a {page_size}-byte page: the largest dim is {largest}")
        return cls(page_size, dim, slots)

    @property
    def bitmap_bytes(self) -> int:
        return ((self.slots + 63) // 64) * 8

    @property
    def ids_at(self) -> int:
        return HEADER_BYTES + self.bitmap_bytes

    @property
    def seqs_at(self) -> int:
        return self.ids_at + 8 * self.slots

    @property
    def rows_at(self) -> int:
        return self.seqs_at + 8 * self.slots

    @property
    def end(self) -> int:
        return self.rows_at + 4 * self.slots * self.dim


@dataclass
class DataPages:
    """Decoded data pages, slot-major: slot s of page p is row p*S + s."""

    live: np.ndarray  # bool[n*S]
    ids: np.ndarray  # uint64[n*S]
    seqs: np.ndarray  # uint64[n*S]
    rows: np.ndarray  # float32[n*S, dim]


def encode_data_pages(layout: DataLayout, pages: DataPages) -> list[bytes]:
    s = layout.slots
    n = len(pages.ids) // s
    out = []
    for p in range(n):
        page = bytearray(layout.page_size)
        sl = slice(p * s, (p + 1) * s)
        bits = np.packbits(pages.live[sl].astype(np.uint8), bitorder="little").tobytes()
        page[HEADER_BYTES : HEADER_BYTES + len(bits)] = bits
        page[layout.ids_at : layout.seqs_at] = pages.ids[sl].astype("<u8").tobytes()
        page[layout.seqs_at : layout.rows_at] = pages.seqs[sl].astype("<u8").tobytes()
        page[layout.rows_at : layout.end] = pages.rows[sl].astype("<f4").tobytes()
        out.append(seal(page, MAGIC_DATA, _DATA_FIELDS.pack(s, layout.dim)))
    return out


def decode_data_pages(layout: DataLayout, pages: list[bytes], where: str) -> DataPages:
    """Decode many pages at once (columns are sliced out of one 2-D byte array)."""
    s, d = layout.slots, layout.dim
    for i, page in enumerate(pages):
        fields = unseal(page, MAGIC_DATA, f"{where} page {i}")
        if _DATA_FIELDS.unpack(fields) != (s, d):
            raise CorruptionError(f"{where} page {i}: slots/dim {_DATA_FIELDS.unpack(fields)}, expected {(s, d)}")
    n = len(pages)
    if n == 0:
        return DataPages(np.zeros(0, bool), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, d), np.float32))
    raw = np.frombuffer(b"".join(pages), dtype=np.uint8).reshape(n, layout.page_size)
    bits = np.unpackbits(raw[:, HEADER_BYTES : HEADER_BYTES + layout.bitmap_bytes], axis=1, bitorder="little")[:, :s]
    ids = np.ascontiguousarray(raw[:, layout.ids_at : layout.seqs_at]).view("<u8").reshape(-1).astype(np.uint64)
    seqs = np.ascontiguousarray(raw[:, layout.seqs_at : layout.rows_at]).view("<u8").reshape(-1).astype(np.uint64)
    rows = np.ascontiguousarray(raw[:, layout.rows_at : layout.end]).view("<f4").reshape(n * s, d).astype(np.float32)
    return DataPages(bits.reshape(-1).astype(bool), ids, seqs, rows)
