"""The C append codec (walservice/_append_codec.c) against the Python path it
replaces: protobuf parsing, `validate_record` and `encode_frame` must agree
with it on every message it accepts, and it must decline what it does not."""

from __future__ import annotations

import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import InvalidArgument
from strata.redo import MAX_BLKNO, validate_record
from strata.v1 import records_pb2, wal_pb2
from walservice.append_codec import ParsedAppend, summary_passes
from walservice.segment import encode_frame, scan_segment

codec = pytest.importorskip("walservice._append_codec", reason="the C codec was not built (no compiler?)")

U32 = st.integers(0, 2**32 - 1)
BLKNO = st.one_of(st.integers(0, 64), st.sampled_from([MAX_BLKNO, MAX_BLKNO + 1]))
PAGE_SIZES = st.sampled_from([64, 512, 8192])


def splices() -> st.SearchStrategy[list[records_pb2.Splice]]:
    splice = st.builds(records_pb2.Splice, offset=st.integers(0, 600), data=st.binary(max_size=80))
    return st.lists(splice, max_size=3)


RECORDS = st.one_of(
    st.builds(lambda rel, blkno, s: records_pb2.Record(patch=records_pb2.PagePatch(rel=rel, blkno=blkno, splices=s)), U32, BLKNO, splices()),
    st.builds(
        lambda rel, blkno, n: records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=bytes(n))),
        U32,
        BLKNO,
        st.sampled_from([0, 64, 100, 512, 8192]),
    ),
    st.builds(lambda rel, n: records_pb2.Record(rel_size=records_pb2.RelSize(rel=rel, nblocks=n)), U32, U32),
    st.builds(lambda rel: records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=rel)), U32),
    st.just(records_pb2.Record()),
)
IDS = st.one_of(st.just(""), st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), st.text(max_size=8))
APPENDS = st.builds(
    lambda t, tl, recs, exp: wal_pb2.AppendRequest(tenant_id=t, timeline_id=tl, records=recs, expected_end_lsn=exp),
    IDS,
    IDS,
    st.lists(RECORDS, max_size=6),
    st.one_of(st.just(0), st.integers(0, 2**64 - 1)),
)


def spans_of(parsed: ParsedAppend) -> list[tuple[int, int]]:
    return list(struct.iter_unpack("<II", parsed.spans))


def python_accepts(request: wal_pb2.AppendRequest, page_size: int, max_batch_bytes: int) -> bool:
    """What WalServicer._batch_payloads decides (the Python path)."""
    if not request.records:
        return False
    total = 0
    try:
        for i, record in enumerate(request.records):
            validate_record(record, page_size, "records", i)
            total += len(record.SerializeToString())
    except InvalidArgument:
        return False
    return total <= max_batch_bytes


def fast_path_accepts(parsed: ParsedAppend, page_size: int, max_batch_bytes: int) -> bool:
    """What WalServicer._queue_parsed lets through without protobuf."""
    return summary_passes(parsed.suspect, parsed.payload_bytes, parsed.max_splice_end, parsed.image_len, page_size, max_batch_bytes)


@settings(max_examples=400, deadline=None)
@given(appends=st.lists(APPENDS, max_size=4), page_size=PAGE_SIZES, max_batch_bytes=st.sampled_from([100, 10_000]))
def test_parsed_appends_match_protobuf_and_the_fast_path_accepts_only_what_python_accepts(
    appends: list[wal_pb2.AppendRequest], page_size: int, max_batch_bytes: int
) -> None:
    message = wal_pb2.AppendStreamRequest(appends=appends).SerializeToString()
    parsed = codec.parse_append_stream(message)
    assert parsed is not None, "a message protobuf itself wrote is in the plain shape"
    assert len(parsed) == len(appends)
    for raw, request in zip(parsed, appends, strict=True):
        got = ParsedAppend(*raw)
        assert (got.tenant_id, got.timeline_id, got.expected_end_lsn) == (
            request.tenant_id,
            request.timeline_id,
            request.expected_end_lsn,
        )
        assert wal_pb2.AppendRequest.FromString(message[got.start : got.end]) == request
        spans = spans_of(got)
        assert [records_pb2.Record.FromString(message[o : o + n]) for o, n in spans] == list(request.records)
        assert got.payload_bytes == sum(n for _, n in spans)
        if fast_path_accepts(got, page_size, max_batch_bytes):
            assert python_accepts(request, page_size, max_batch_bytes), request
        elif python_accepts(request, page_size, max_batch_bytes):
            # Declining is always safe (protobuf decides); it only happens for a
            # kind of record the summary does not cover, which these are not.
            pytest.fail(f"the fast path declined a valid append: {got}")


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(RECORDS, min_size=1, max_size=6),
    position=st.integers(0, 2**48),
    term=st.integers(1, 2**40),
    now_us=st.integers(0, 2**62),
)
def test_encoded_frames_are_byte_for_byte_the_python_ones(
    records: list[records_pb2.Record], position: int, term: int, now_us: int
) -> None:
    message = wal_pb2.AppendStreamRequest(appends=[wal_pb2.AppendRequest(records=records)]).SerializeToString()
    (raw,) = codec.parse_append_stream(message)
    out = bytearray(b"before")
    lsns = codec.encode_frames(out, message, ParsedAppend(*raw).spans, position, term, now_us)
    expected, pos, want_lsns = bytearray(b"before"), position, []
    for i, record in enumerate(records):
        payload = record.SerializeToString()
        expected += encode_frame(pos, payload, term, now_us, i == len(records) - 1)
        pos += 40 + len(payload)
        want_lsns.append(pos)
    assert bytes(out) == bytes(expected)
    assert lsns == want_lsns


def test_encoded_frames_scan_back_as_one_batch() -> None:
    from walservice.segment import SegmentHeader

    records = [records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=i)) for i in range(5)]
    message = wal_pb2.AppendStreamRequest(appends=[wal_pb2.AppendRequest(records=records)]).SerializeToString()
    (raw,) = codec.parse_append_stream(message)
    data = bytearray(SegmentHeader(1000, "ab" * 16, "cd" * 16, 8192).encode())
    lsns = codec.encode_frames(data, message, ParsedAppend(*raw).spans, 1000, 3, 77)
    scan = scan_segment(bytes(data))
    assert scan.problem is None
    assert [f.lsn for f in scan.frames] == lsns
    assert [records_pb2.Record.FromString(f.payload) for f in scan.frames] == records
    assert [f.end_of_batch for f in scan.frames] == [False] * 4 + [True]
    assert {(f.term, f.commit_time_us) for f in scan.frames} == {(3, 77)}


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), seed=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63])))
def test_xxh64_is_xxhash(data: bytes, seed: int) -> None:
    assert codec.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


def _tag(field: int, wire_type: int) -> bytes:
    return bytes([field << 3 | wire_type])


def _len(field: int, body: bytes) -> bytes:
    assert len(body) < 128
    return _tag(field, 2) + bytes([len(body)]) + body


RECORD = _len(2, _len(3, _len(2, b"x")))  # Record{patch{splices[{data: "x"}]}}


@pytest.mark.parametrize(
    "append",
    [
        pytest.param(RECORD + _len(9, b"?"), id="unknown-field"),
        pytest.param(_len(1, b"a") + _len(1, b"b") + RECORD, id="tenant-twice"),
        pytest.param(_tag(1, 0) + b"\x01" + RECORD, id="tenant-as-varint"),
        pytest.param(_len(1, b"\xff\xfe") + RECORD, id="tenant-not-utf8"),
        pytest.param(_len(3, _len(2, b"") + _len(1, b"")), id="record-with-two-kinds"),
        pytest.param(_len(3, _len(2, _tag(2, 0) + b"\x80\x80\x80\x80\x10")), id="blkno-over-32-bits"),
        pytest.param(_len(3, _len(2, _tag(1, 0) + b"\x01" + _tag(1, 0) + b"\x02")), id="rel-twice"),
        pytest.param(_len(3, _len(2, _tag(3, 5) + b"\0\0\0\0")), id="splices-as-fixed32"),
        pytest.param(RECORD[:-1], id="truncated"),
    ],
)
def test_messages_outside_the_plain_shape_are_left_to_protobuf(append: bytes) -> None:
    assert codec.parse_append_stream(_len(1, append)) is None


def test_messages_outside_the_plain_shape_at_the_top_level_are_left_to_protobuf() -> None:
    assert codec.parse_append_stream(_len(2, RECORD)) is None
    assert codec.parse_append_stream(b"\x0a\x05ab") is None  # length past the end
    assert codec.parse_append_stream(b"") == []


def test_suspect_records_are_flagged_for_the_python_validator() -> None:
    def parsed(*records: records_pb2.Record) -> ParsedAppend:
        message = wal_pb2.AppendStreamRequest(appends=[wal_pb2.AppendRequest(records=records)]).SerializeToString()
        return ParsedAppend(*codec.parse_append_stream(message)[0])

    ok = records_pb2.Record(patch=records_pb2.PagePatch(blkno=MAX_BLKNO, splices=[records_pb2.Splice(offset=8, data=b"abc")]))
    assert not parsed(ok).suspect and parsed(ok).max_splice_end == 11
    assert parsed().suspect  # no records
    assert parsed(ok, records_pb2.Record()).suspect  # no kind
    assert parsed(records_pb2.Record(patch=records_pb2.PagePatch(blkno=1))).suspect  # no splices
    assert parsed(records_pb2.Record(patch=records_pb2.PagePatch(blkno=MAX_BLKNO + 1, splices=ok.patch.splices))).suspect
    assert parsed(records_pb2.Record(image=records_pb2.PageImage(blkno=MAX_BLKNO + 1, page=bytes(64)))).suspect
    images = [records_pb2.Record(image=records_pb2.PageImage(page=bytes(n))) for n in (64, 64, 32)]
    assert parsed(*images[:2]).image_len == 64
    assert parsed(*images).image_len == -2
    assert parsed(ok).image_len == -1


def test_encode_frames_refuses_bad_spans() -> None:
    message = b"0123456789"
    with pytest.raises(ValueError, match="past the end"):
        codec.encode_frames(bytearray(), message, struct.pack("<II", 8, 3), 0, 1, 0)
    with pytest.raises(ValueError, match="at least one"):
        codec.encode_frames(bytearray(), message, b"", 0, 1, 0)
    with pytest.raises(ValueError, match="at least one"):
        codec.encode_frames(bytearray(), message, b"\0" * 7, 0, 1, 0)
    out = bytearray(b"kept")
    with pytest.raises(ValueError):
        codec.encode_frames(out, message, struct.pack("<IIII", 0, 2, 9, 5), 0, 1, 0)
    assert out == b"kept"
