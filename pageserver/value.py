"""What a layer stores under a key at an LSN (the bytes are opaque to layers/).

| tag (1 byte) | body                                   | will_init | key kind |
|--------------|----------------------------------------|-----------|----------|
| 0 RECORD     | a serialized strata.v1.Record (patch)  | no        | page     |
| 1 IMAGE      | the page, exactly page_size bytes      | yes       | page     |
| 2 REL_STATE  | u8 exists, u32 nblocks (little-endian) | yes       | metadata |
| 3 ZERO_PATCH | a serialized Record applied to zeros   | yes       | page     |

ZERO_PATCH is a patch to a block that did not exist before it (an extension, or
a block past a truncation): it starts from the zero page, so reconstruction
never looks at older history of that block.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import CorruptionError
from strata.redo import apply_to_page
from strata.v1 import records_pb2

RECORD = 0
IMAGE = 1
REL_STATE = 2
ZERO_PATCH = 3

_REL_STATE = struct.Struct("<BI")


@dataclass(frozen=True)
class RelState:
    exists: bool
    nblocks: int

    def covers(self, blkno: int) -> bool:
        return self.exists and blkno < self.nblocks


MISSING_REL = RelState(False, 0)


def encode_rel_state(state: RelState) -> bytes:
    return bytes([REL_STATE]) + _REL_STATE.pack(1 if state.exists else 0, state.nblocks)


def decode_rel_state(value: bytes) -> RelState:
    if len(value) != 1 + _REL_STATE.size or value[0] != REL_STATE:
        raise CorruptionError(f"bad relation state value ({len(value)} bytes, tag {value[:1]!r})")
    exists, nblocks = _REL_STATE.unpack_from(value, 1)
    return RelState(bool(exists), nblocks)


def encode_image(page: bytes) -> bytes:
    return bytes([IMAGE]) + page


def encode_patch(record_bytes: bytes, from_zero: bool) -> bytes:
    return bytes([ZERO_PATCH if from_zero else RECORD]) + record_bytes


def will_init(value: bytes) -> bool:
    return value[0] != RECORD


def apply_value(page: bytearray, value: bytes, page_size: int) -> None:
    """Apply one page value (oldest first) to `page` in place."""
    tag = value[0]
    if tag == IMAGE:
        if len(value) - 1 != page_size:
            raise CorruptionError(f"page image value of {len(value) - 1} bytes, expected {page_size}")
        page[:] = memoryview(value)[1:]
    elif tag in (RECORD, ZERO_PATCH):
        if tag == ZERO_PATCH:
            page[:] = bytes(page_size)
        apply_to_page(page, records_pb2.Record.FromString(memoryview(value)[1:]))
    else:
        raise CorruptionError(f"unexpected value tag {tag} for a page key")
