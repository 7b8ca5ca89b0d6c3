"""Small metadata files as JSON with a version and a checksum.

The object carries `format_version` and `checksum`: xxhash64 (16 hex digits) of
the canonical JSON (sorted keys, no spaces) of every other field. Used by the
pageserver's index_part.json and tenant.json.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

from strata.errors import CorruptionError


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return f"{xxhash.xxh64_intdigest(canonical):016x}"


def encode(body: dict[str, Any], format_version: int) -> bytes:
    body = dict(body, format_version=format_version)
    body["checksum"] = _checksum(body)
    return json.dumps(body, sort_keys=True, indent=1).encode()


def decode(data: bytes, where: str, format_version: int) -> dict[str, Any]:
    """The fields without `checksum` and `format_version`; CorruptionError if bad."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise CorruptionError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(body, dict) or "checksum" not in body:
        raise CorruptionError(f"{where}: no checksum field")
    stored = body.pop("checksum")
    if _checksum(body) != stored:
        raise CorruptionError(f"{where}: checksum mismatch")
    version = body.pop("format_version", None)
    if version != format_version:
        raise CorruptionError(f"{where}: unsupported format_version {version} (this build reads {format_version})")
    return body


def check_fields(body: dict[str, Any], known: set[str], where: str, required: set[str] | None = None) -> None:
    """CorruptionError unless `body` (as `decode` returned it) has only `known`
    fields and every `required` one: a field this build does not know means a
    writer with another format, whose meaning would be silently lost."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise CorruptionError(
            f"{where}: unknown fields {unknown} (this build knows {sorted(known)}): written by a newer or "
            "different format; refusing to read it"
        )
    missing = sorted((required or set()) - set(body))
    if missing:
        raise CorruptionError(f"{where}: missing fields {missing}")


def check_ints(body: dict[str, Any], where: str, bounds: dict[str, tuple[int, int]]) -> None:
    """CorruptionError unless each field of `bounds` that `body` has is an int in
    its inclusive (low, high) range: stored values are read back under the same
    bounds the request that wrote them was validated against."""
    for name, (low, high) in bounds.items():
        if name in body:
            value = body[name]
            if type(value) is not int or not low <= value <= high:
                raise CorruptionError(f"{where}: {name}={value!r} is out of range (expected an integer from {low} to {high})")
