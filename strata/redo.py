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

from strata.errors import InvalidArgument
from strata.v1 import records_pb2

# Writing block b makes the relation b + 1 blocks long, and nblocks is a uint32.
MAX_BLKNO = 0xFFFFFFFE


def validate_record(record: records_pb2.Record, page_size: int, field: str) -> None:
    """Raise InvalidArgument naming `field` (e.g. "records[3]") if `record` is malformed."""
    kind = record.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"{field} has no kind: set one of image, patch, rel_size, rel_drop")
    if kind in ("image", "patch"):
        blkno = getattr(record, kind).blkno
        if blkno > MAX_BLKNO:
            raise InvalidArgument(
                f"{field}.{kind}.blkno={blkno} is out of range: the largest block number is {MAX_BLKNO} "
                "(a relation holds at most 2^32-1 blocks)"
            )
    if kind == "image":
        n = len(record.image.page)
        if n != page_size:
            raise InvalidArgument(
                f"{field}.image.page is {n} bytes: expected exactly the page size, {page_size} bytes"
            )
    elif kind == "patch":
        if not record.patch.splices:
            raise InvalidArgument(f"{field}.patch.splices is empty: a patch needs at least one splice")
        for i, splice in enumerate(record.patch.splices):
            end = splice.offset + len(splice.data)
            if end > page_size:
                raise InvalidArgument(
                    f"{field}.patch.splices[{i}] covers bytes {splice.offset}..{end}, outside the "
                    f"{page_size}-byte page: offset + len(data) must be <= {page_size}"
                )


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
