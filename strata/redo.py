"""Record validation and the redo rules (DESIGN.md, "Records and redo").

Redo is a pure function of (page, record). The pageserver's reconstruction, the
test models and the GPU snapshot scans all call `apply_to_page`, so they agree
byte for byte:

| record    | effect                                                          |
|-----------|-----------------------------------------------------------------|
| PageImage | the page becomes `page` (exactly page_size bytes)               |
| PagePatch | each splice overwrites `data` at `offset`, in order              |
| RelSize   | the relation's size becomes `nblocks` (pages past it are gone)  |
| RelDrop   | the relation and all its pages are gone                         |

Writing block b extends its relation to at least b + 1 blocks; a block never
written reads as zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from strata.errors import InvalidArgument
from strata.v1 import records_pb2

# Writing block b makes the relation b + 1 blocks long, and nblocks is a uint32.
MAX_BLKNO = 0xFFFFFFFE


def validate_record(record: records_pb2.Record, page_size: int, field: str, index: int | None = None) -> None:
    """Raise InvalidArgument naming the record (`field`, or `field[index]`, e.g.
    "records[3]") if `record` is malformed.

    This runs once per appended record on the walservice's one event loop, so it
    reads each protobuf field once (every attribute access on a message costs a
    C call and, for bytes, a copy) and formats names only on the error path."""
    kind = record.WhichOneof("kind")
    if kind == "patch":
        patch = record.patch
        if patch.blkno > MAX_BLKNO:
            _bad_blkno(patch.blkno, _name(field, index), kind)
        splices = patch.splices
        count = len(splices)
        if count == 1:
            # The common shape; indexing skips creating an iterator (half the cost).
            splice = splices[0]
            if splice.offset + len(splice.data) > page_size:
                _bad_splice(splices, page_size, _name(field, index))
        elif not count:
            raise InvalidArgument(f"{_name(field, index)}.patch.splices is empty: a patch needs at least one splice")
        else:
            for splice in splices:
                if splice.offset + len(splice.data) > page_size:
                    _bad_splice(splices, page_size, _name(field, index))
    elif kind == "image":
        image = record.image
        if image.blkno > MAX_BLKNO:
            _bad_blkno(image.blkno, _name(field, index), kind)
        n = len(image.page)
        if n != page_size:
            raise InvalidArgument(
                f"{_name(field, index)}.image.page is {n} bytes: expected exactly the page size, {page_size} bytes"
            )
    elif kind is None:
        raise InvalidArgument(f"{_name(field, index)} has no kind: set one of image, patch, rel_size, rel_drop")


def _name(field: str, index: int | None) -> str:
    return field if index is None else f"{field}[{index}]"


def _bad_blkno(blkno: int, field: str, kind: str) -> NoReturn:
    raise InvalidArgument(
        f"{field}.{kind}.blkno={blkno} is out of range: the largest block number is {MAX_BLKNO} "
        "(a relation holds at most 2^32-1 blocks)"
    )


def _bad_splice(splices: Sequence[records_pb2.Splice], page_size: int, field: str) -> NoReturn:
    """Name the first splice outside the page (the slow path of validate_record)."""
    for i, splice in enumerate(splices):
        end = splice.offset + len(splice.data)
        if end > page_size:
            raise InvalidArgument(
                f"{field}.patch.splices[{i}] covers bytes {splice.offset}..{end}, outside the "
                f"{page_size}-byte page: offset + len(data) must be <= {page_size}"
            )
    raise AssertionError("no splice is outside the page")


def apply_to_page(page: bytearray, record: records_pb2.Record) -> None:
    """Apply an image or patch record to `page` in place."""
    kind = record.WhichOneof("kind")
    if kind == "image":
        page[:] = record.image.page
    elif kind == "patch":
        for splice in record.patch.splices:
            page[splice.offset : splice.offset + len(splice.data)] = splice.data
    else:
        raise ValueError(f"record kind {kind!r} does not change a page")


def record_rel(record: records_pb2.Record) -> int:
    """The relation a record touches."""
    kind = record.WhichOneof("kind")
    return getattr(record, kind).rel


def record_block(record: records_pb2.Record) -> int | None:
    """The block a page record touches, or None for relation-level records."""
    kind = record.WhichOneof("kind")
    if kind == "image":
        return record.image.blkno
    if kind == "patch":
        return record.patch.blkno
    return None
