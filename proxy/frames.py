"""The framed protocol between the proxy and a compute process, over its stdin/stdout pipes.

One frame:

    offset  size  field
    0       1     version (FRAME_VERSION = 1)
    1       4     payload length N, big-endian uint32 (at most MAX_FRAME_BYTES)
    5       N     payload: one JSON object, UTF-8

The proxy writes requests (`{"op": "assign" | "run" | "rollback" | "exit", ...}`)
and the compute answers each with exactly one frame, in order. A pipe carries no
checksum: it is a kernel buffer between two processes, never stored. A frame of
another version, or longer than the limit, ends the conversation (`FrameError`).
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

FRAME_VERSION = 1
HEADER = struct.Struct(">BI")
MAX_FRAME_BYTES = 256 << 20


class FrameError(Exception):
    """The peer sent something that is not a frame of this version."""


def encode(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(payload)} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return HEADER.pack(FRAME_VERSION, len(payload)) + payload


def parse_header(header: bytes) -> int:
    """The payload length a frame header announces."""
    version, length = HEADER.unpack(header)
    if version != FRAME_VERSION:
        raise FrameError(f"frame version {version}, expected {FRAME_VERSION}")
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return length


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise FrameError(f"frame payload is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("frame payload is not a JSON object")
    return message


def read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    """The next frame from a blocking stream; None at a clean end of stream."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise FrameError("stream ended inside a frame header")
    length = parse_header(header)
    payload = stream.read(length)
    if len(payload) < length:
        raise FrameError("stream ended inside a frame")
    return decode_payload(payload)
