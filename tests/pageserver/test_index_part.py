"""index_part.json parsing: anything this build does not understand is CorruptionError, never ignored."""

from __future__ import annotations

import json

import pytest

from pageserver.index_part import FORMAT_VERSION, CommitTime, IndexPart, LayerEntry, RelationEntry, Truncation
from strata import checksummed_json
from strata.errors import CorruptionError


def sample() -> IndexPart:
    return IndexPart(
        tenant_id="t" * 32, timeline_id="a" * 32, ancestor_timeline_id="", ancestor_lsn=0, disk_consistent_lsn=100,
        layers=(LayerEntry("layer-1", 10, 7, 9),), generation=3, commit_times=(CommitTime(50, 1000),),
        relations=(RelationEntry(1, True, 4), RelationEntry(2, False, 0)), truncations=(Truncation(1, 60, 4),),
    )


def reencode(index: IndexPart, mutate) -> bytes:
    """The index's JSON with `mutate` applied to its fields, checksummed again (a well-formed file of another shape)."""
    body = json.loads(index.encode())
    del body["checksum"]
    version = body.pop("format_version")
    mutate(body)
    return checksummed_json.encode(body, body.pop("_version", version))


def test_round_trip() -> None:
    assert IndexPart.decode(sample().encode()) == sample()


def test_tuples_are_stored_as_arrays_as_before() -> None:
    """The dataclasses change nothing on disk: an index written before them
    (arrays of arrays) reads into them, and they are written the same way."""
    body = json.loads(sample().encode())
    assert (body["commit_times"], body["relations"], body["truncations"]) == (
        [[50, 1000]], [[1, True, 4], [2, False, 0]], [[1, 60, 4]]
    )
    old = reencode(sample(), lambda b: b.update(commit_times=[[7, 70]], relations=[[3, True, 9]], truncations=[[3, 8, 2]]))
    index = IndexPart.decode(old)
    assert index.commit_times == (CommitTime(7, 70),)
    assert index.relations == (RelationEntry(3, True, 9),)
    assert index.truncations == (Truncation(3, 8, 2),)


def test_unknown_field_is_corruption() -> None:
    data = reencode(sample(), lambda b: b.update(shard_count=4))
    with pytest.raises(CorruptionError, match=r"where.json: unknown fields \['shard_count'\]"):
        IndexPart.decode(data, "where.json")


def test_unknown_layer_field_is_corruption() -> None:
    data = reencode(sample(), lambda b: b["layers"][0].update(compression="zstd"))
    with pytest.raises(CorruptionError, match=r"layers\[0\]: unknown fields \['compression'\]"):
        IndexPart.decode(data, "where.json")


def test_wrong_version_is_corruption() -> None:
    data = reencode(sample(), lambda b: b.update(_version=FORMAT_VERSION + 1))
    with pytest.raises(CorruptionError, match=f"where.json: unsupported format_version {FORMAT_VERSION + 1}"):
        IndexPart.decode(data, "where.json")


def test_missing_field_and_bad_shapes_are_corruption() -> None:
    with pytest.raises(CorruptionError, match=r"missing fields \['disk_consistent_lsn'\]"):
        IndexPart.decode(reencode(sample(), lambda b: b.pop("disk_consistent_lsn")), "where.json")
    with pytest.raises(CorruptionError, match="wrong shape"):
        IndexPart.decode(reencode(sample(), lambda b: b.update(relations=[[1, 2]])), "where.json")
    with pytest.raises(CorruptionError, match=r"layers\[0\] is not an object"):
        IndexPart.decode(reencode(sample(), lambda b: b.update(layers=[3])), "where.json")


def test_flipped_byte_is_corruption() -> None:
    data = bytearray(sample().encode())
    data[data.index(b"100")] = ord("2")
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        IndexPart.decode(bytes(data), "where.json")


@pytest.mark.parametrize(
    "field, value",
    [("expires_at_us", 9_223_372_036_854_775_808 * 1_000_000), ("ancestor_lsn", -1), ("generation", 1 << 64), ("gc_cutoff_lsn", "7"), ("created_at_us", True)],
)
def test_a_number_out_of_uint64_is_corruption(field: str, value: object) -> None:
    """Read back under the bounds it is validated and served with (uint64):
    a ttl of 2^63 once stored an expires_at_us no TimelineInfo could carry."""
    data = reencode(sample(), lambda b: b.update({field: value}))
    with pytest.raises(CorruptionError, match=rf"where.json: {field}=.* is out of range"):
        IndexPart.decode(data, "where.json")
    assert IndexPart.decode(reencode(sample(), lambda b: b.update({field: (1 << 64) - 1}))).__dict__[field] == (1 << 64) - 1


def test_database_name_round_trips_and_an_unnamed_index_has_no_name_field() -> None:
    """`name` is optional: an unnamed timeline's index is written without it (as
    before names, so older builds read it), a named one round-trips, and a
    name that is not a DNS label reads as corruption."""
    from dataclasses import replace

    assert "name" not in json.loads(sample().encode())
    named = replace(sample(), name="agent-7")
    assert json.loads(named.encode())["name"] == "agent-7"
    assert IndexPart.decode(named.encode()) == named
    with pytest.raises(CorruptionError, match="not a database name"):
        IndexPart.decode(reencode(sample(), lambda body: body.update(name="Bad Name")))
