"""The walservice's per-record hot path: the C codec when it was built.

`walservice/_append_codec.c` (built by `pip install` as an optional extension)
walks a serialized AppendStreamRequest and encodes each Append's frames straight
from the wire bytes, which takes the per-record cost on the event loop from
about 3 us (protobuf field walk, re-serialization, two xxhash calls in Python)
to a fraction of one. `native` is that module, or None where it could not be
built or `STRATA_APPEND_CODEC=python` is set (the tests run the walservice both
ways); the walservice then parses every message with protobuf and encodes frames
in Python (walservice/segment.py), with the same results.

`parse_append_stream(message)` returns, per AppendRequest of the message, a
tuple laid out as `ParsedAppend` names (or None for a message to parse with
protobuf instead; see the C file for what it accepts).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import NamedTuple


class ParsedAppend(NamedTuple):
    """What `native.parse_append_stream` gives for one AppendRequest (it returns
    plain tuples in this order; this names the fields)."""

    tenant_id: str
    timeline_id: str
    expected_end_lsn: int
    start: int  # the AppendRequest's bytes are message[start:end]
    end: int
    spans: bytes  # (offset u32, length u32) little-endian per Record: its bytes in the message
    payload_bytes: int  # the records' bytes together
    max_splice_end: int  # the largest offset + len(data) of any patch splice (0 without)
    image_len: int  # the images' page length; -1 without images, -2 when they differ
    suspect: bool  # the Python validator must judge it (it may well be refused)


def summary_passes(
    suspect: bool, payload_bytes: int, max_splice_end: int, image_len: int, page_size: int, max_batch_bytes: int
) -> bool:
    """Whether a parsed append's summary proves it valid for a timeline of
    `page_size` under the batch limit (False: let protobuf and
    `strata.redo.validate_record` judge it, and name what is wrong)."""
    return not (
        suspect or payload_bytes > max_batch_bytes or max_splice_end > page_size or image_len not in (-1, page_size)
    )


def _load() -> ModuleType | None:
    if os.environ.get("STRATA_APPEND_CODEC", "").lower() == "python":
        return None
    try:
        from walservice import _append_codec
    except ImportError:
        return None
    return _append_codec


native: ModuleType | None = _load()
