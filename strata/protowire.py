"""Protobuf wire-format pieces for messages Strata encodes by hand.

Hot paths build a few messages from bytes they already hold (a stored frame's
serialized Record, a pre-serialized AppendRequest) without parsing them into
message objects first: a varint and a length-delimited field are all they need.
See https://protobuf.dev/programming-guides/encoding/.
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    """An unsigned base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, data: bytes) -> tuple[bytes, bytes, bytes]:
    """The three pieces (tag, length, data) of a length-delimited field; join them
    with the rest of a message's parts in one `b"".join`."""
    return varint(field_number << 3 | 2), varint(len(data)), data
