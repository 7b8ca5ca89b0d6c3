"""The redo rules (strata/redo.py): record validation and applying a record to a page."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import InvalidArgument
from strata.redo import MAX_BLKNO, apply_to_page, record_block, record_rel, validate_record
from strata.v1 import records_pb2

PAGE_SIZE = 512


def image(page: bytes, rel: int = 1, blkno: int = 0) -> records_pb2.Record:
    return records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=page))


def patch(*splices: tuple[int, bytes], rel: int = 1, blkno: int = 0) -> records_pb2.Record:
    return records_pb2.Record(
        patch=records_pb2.PagePatch(
            rel=rel, blkno=blkno, splices=[records_pb2.Splice(offset=o, data=d) for o, d in splices]
        )
    )


# -- validate_record -------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        image(b"\0" * PAGE_SIZE),
        image(b"\xff" * PAGE_SIZE, blkno=MAX_BLKNO),
        patch((0, b"x")),
        patch((PAGE_SIZE - 3, b"end")),  # up to the last byte exactly
        patch((PAGE_SIZE, b"")),  # empty, at the end: inside
        patch((0, b"\1" * PAGE_SIZE), (10, b"ab"), blkno=MAX_BLKNO),
        records_pb2.Record(rel_size=records_pb2.RelSize(rel=3, nblocks=0xFFFFFFFF)),
        records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=3)),
    ],
    ids=["image", "image-max-blkno", "patch", "patch-to-the-end", "empty-splice-at-end", "patch-max-blkno", "rel-size", "rel-drop"],
)
def test_valid_records_pass(record: records_pb2.Record) -> None:
    validate_record(record, PAGE_SIZE, "records[0]")


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (records_pb2.Record(), "records[4] has no kind"),
        (image(b"\0" * (PAGE_SIZE - 1)), "records[4].image.page is 511 bytes"),
        (image(b"\0" * (PAGE_SIZE + 1)), "records[4].image.page is 513 bytes"),
        (image(b""), "records[4].image.page is 0 bytes"),
        (image(b"\0" * PAGE_SIZE, blkno=0xFFFFFFFF), "records[4].image.blkno=4294967295"),
        (patch((0, b"x"), blkno=0xFFFFFFFF), "records[4].patch.blkno=4294967295"),
        (patch(), "records[4].patch.splices is empty"),
        (patch((PAGE_SIZE - 2, b"abc")), "records[4].patch.splices[0] covers bytes 510..513"),
        (patch((0, b"ok"), (PAGE_SIZE + 1, b"")), "records[4].patch.splices[1]"),
        (patch((0xFFFFFFFF, b"x")), "records[4].patch.splices[0]"),
        (patch((0, b"\0" * (PAGE_SIZE + 1))), "records[4].patch.splices[0]"),
    ],
    ids=[
        "no-kind", "image-short", "image-long", "image-empty", "image-blkno", "patch-blkno", "no-splices",
        "splice-past-end", "second-splice-outside", "splice-huge-offset", "splice-too-long",
    ],
)
def test_malformed_records_name_the_field(record: records_pb2.Record, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_record(record, PAGE_SIZE, "records[4]")
    assert str(caught.value).startswith(field)


def test_the_page_size_is_the_one_given() -> None:
    validate_record(image(b"\0" * 8192), 8192, "r")
    with pytest.raises(InvalidArgument, match="expected exactly the page size, 512 bytes"):
        validate_record(image(b"\0" * 8192), 512, "r")
    validate_record(patch((8000, b"x")), 8192, "r")
    with pytest.raises(InvalidArgument, match="outside the 512-byte page"):
        validate_record(patch((8000, b"x")), 512, "r")


# -- apply_to_page -----------------------------------------------------------------------


def test_an_image_replaces_the_page() -> None:
    page = bytearray(b"\7" * PAGE_SIZE)
    new = bytes(range(256)) * 2
    apply_to_page(page, image(new))
    assert page == new


def test_splices_overwrite_in_order() -> None:
    page = bytearray(PAGE_SIZE)
    apply_to_page(page, patch((0, b"aaaa"), (2, b"bbbb"), (PAGE_SIZE - 2, b"zz"), (3, b"")))
    assert page[:6] == b"aabbbb"
    assert page[6 : PAGE_SIZE - 2] == bytes(PAGE_SIZE - 8)
    assert page[PAGE_SIZE - 2 :] == b"zz"
    assert len(page) == PAGE_SIZE


def test_a_later_splice_wins_where_they_overlap() -> None:
    page = bytearray(PAGE_SIZE)
    apply_to_page(page, patch((10, b"second"), (10, b"FIRST!")))
    assert page[10:16] == b"FIRST!"
    apply_to_page(page, patch((12, b"xy")))
    assert page[10:16] == b"FIxyT!"


def test_patches_apply_on_top_of_an_image() -> None:
    page = bytearray(PAGE_SIZE)
    for record in (image(b"\1" * PAGE_SIZE), patch((5, b"\2\2")), image(b"\3" * PAGE_SIZE), patch((0, b"\4"))):
        apply_to_page(page, record)
    assert page == b"\4" + b"\3" * (PAGE_SIZE - 1)


@pytest.mark.parametrize(
    "record",
    [records_pb2.Record(rel_size=records_pb2.RelSize(rel=1, nblocks=2)), records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=1)), records_pb2.Record()],
    ids=["rel-size", "rel-drop", "no-kind"],
)
def test_records_that_do_not_change_a_page_are_refused(record: records_pb2.Record) -> None:
    page = bytearray(b"\5" * PAGE_SIZE)
    with pytest.raises(ValueError, match="does not change a page"):
        apply_to_page(page, record)
    assert page == b"\5" * PAGE_SIZE


splices_strategy = st.lists(
    st.integers(0, PAGE_SIZE).flatmap(lambda offset: st.tuples(st.just(offset), st.binary(max_size=PAGE_SIZE - offset))),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(base=st.binary(min_size=PAGE_SIZE, max_size=PAGE_SIZE), splices=splices_strategy)
def test_a_valid_patch_is_byte_overwrites_in_order(base: bytes, splices: list[tuple[int, bytes]]) -> None:
    record = patch(*splices)
    validate_record(record, PAGE_SIZE, "r")  # every splice here stays inside the page
    page = bytearray(base)
    apply_to_page(page, record)
    expected = list(base)
    for offset, data in splices:
        for i, byte in enumerate(data):
            expected[offset + i] = byte
    assert page == bytes(expected)


# -- which key a record touches -------------------------------------------------------------


def test_record_rel_and_block() -> None:
    assert (record_rel(image(b"", rel=9, blkno=4)), record_block(image(b"", rel=9, blkno=4))) == (9, 4)
    assert (record_rel(patch((0, b""), rel=8, blkno=MAX_BLKNO)), record_block(patch(rel=8, blkno=MAX_BLKNO))) == (8, MAX_BLKNO)
    size = records_pb2.Record(rel_size=records_pb2.RelSize(rel=7, nblocks=3))
    drop = records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=6))
    assert (record_rel(size), record_block(size), record_rel(drop), record_block(drop)) == (7, None, 6, None)
