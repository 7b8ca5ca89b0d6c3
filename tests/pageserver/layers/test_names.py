from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pageserver.layers.names import KEY_SPACE_END, MAX_GENERATION, LayerName
from strata.ids import MAX_U64


def test_file_name_format() -> None:
    name = LayerName("delta", 0x1_0000_0002, KEY_SPACE_END, 0x10, 0x2A, generation=7)
    assert name.file_name == "00000000100000002-10000000000000000__0000000000000010-000000000000002A-00000007.delta"
    assert str(name) == name.file_name


def test_image_name() -> None:
    name = LayerName.image(5, 10, lsn=0xFF, generation=0xABCDEF12)
    assert (name.kind, name.lsn_start, name.lsn_end) == ("image", 0xFF, 0x100)
    assert name.file_name == "00000000000000005-0000000000000000A__00000000000000FF-0000000000000100-abcdef12.image"
    assert LayerName.parse(name.file_name) == name


@pytest.mark.parametrize(
    "name",
    [
        LayerName("delta", 0, KEY_SPACE_END, 0, MAX_U64),
        LayerName("delta", KEY_SPACE_END - 1, KEY_SPACE_END, 1, 2, MAX_GENERATION),
        LayerName("image", 3 << 32, 4 << 32, MAX_U64 - 1, MAX_U64, 1),
    ],
)
def test_round_trip_at_the_edges(name: LayerName) -> None:
    assert LayerName.parse(name.file_name) == name


@st.composite
def layer_names(draw: st.DrawFn) -> LayerName:
    key_start = draw(st.integers(0, KEY_SPACE_END - 1))
    key_end = draw(st.integers(key_start + 1, KEY_SPACE_END))
    generation = draw(st.integers(0, MAX_GENERATION))
    if draw(st.booleans()):
        return LayerName.image(key_start, key_end, draw(st.integers(0, MAX_U64 - 1)), generation)
    lsn_start = draw(st.integers(0, MAX_U64 - 1))
    lsn_end = draw(st.integers(lsn_start + 1, MAX_U64))
    return LayerName("delta", key_start, key_end, lsn_start, lsn_end, generation)


@given(layer_names())
def test_round_trip(name: LayerName) -> None:
    file_name = name.file_name
    assert LayerName.parse(file_name) == name
    assert LayerName.parse(file_name).file_name == file_name


@given(layer_names(), layer_names())
def test_distinct_names_have_distinct_file_names(a: LayerName, b: LayerName) -> None:
    assert (a == b) == (a.file_name == b.file_name)


VALID = "00000000000000005-0000000000000000A__00000000000000FF-0000000000000100-abcdef12.image"


@pytest.mark.parametrize(
    "bad",
    [
        VALID + ".tmp",  # a crashed writer's leftover
        VALID[:-6] + ".layer",
        VALID.replace("0000000000000000A", "0000000000000000a"),  # keys are upper-case hex
        VALID.replace("abcdef12", "ABCDEF12"),  # the generation is lower-case hex
        VALID[1:],  # 16 key digits
        VALID.replace("__", "_"),
        "index_part.json",
        "",
        # well-formed, but not a layer: empty or inverted ranges, an image spanning two LSNs
        "00000000000000005-00000000000000005__00000000000000FF-0000000000000100-00000000.delta",
        "00000000000000005-0000000000000000A__0000000000000100-00000000000000FF-00000000.delta",
        "00000000000000005-0000000000000000A__00000000000000FF-0000000000000101-00000000.image",
        "00000000000000005-10000000000000001__00000000000000FF-0000000000000100-00000000.delta",
    ],
)
def test_parse_rejects_what_is_not_a_layer_name(bad: str) -> None:
    with pytest.raises(ValueError):
        LayerName.parse(bad)


@pytest.mark.parametrize(
    "fields",
    [
        ("delta", 5, 5, 0, 1, 0),
        ("delta", 0, KEY_SPACE_END + 1, 0, 1, 0),
        ("delta", -1, 5, 0, 1, 0),
        ("delta", 0, 5, 3, 3, 0),
        ("delta", 0, 5, 0, MAX_U64 + 1, 0),
        ("image", 0, 5, 3, 5, 0),
        ("delta", 0, 5, 0, 1, MAX_GENERATION + 1),
        ("layer", 0, 5, 0, 1, 0),
    ],
)
def test_invalid_names_are_rejected(fields: tuple) -> None:
    with pytest.raises(ValueError):
        LayerName(*fields)
