"""Layer file names: what a layer covers, readable from its name alone.

    {key_start:017X}-{key_end:017X}__{lsn_start:016X}-{lsn_end:016X}-{generation:08x}.{kind}

- keys: half-open [key_start, key_end); 17 upper-case hex digits because
  key_end may be 2**64 (the end of the whole key space), one past the last u64.
- LSNs: half-open [lsn_start, lsn_end), 16 upper-case hex digits (u64). An
  image layer at LSN L has lsn_start = L and lsn_end = L + 1.
- generation: 8 lower-case hex digits (u32), the attach generation of the
  pageserver that wrote it, so two writers never produce the same name.
- kind: `delta` or `image`.

Parsing is strict (exact digit counts and case), so `parse(n).file_name == n`
and anything else in a timeline directory, such as a `<name>.tmp` left by a
crashed writer, is not a layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pageserver.keys import KEY_SPACE_END, Key
from strata.ids import MAX_U64, Lsn

LayerKind = Literal["delta", "image"]

MAX_GENERATION = 0xFFFFFFFF

_NAME_RE = re.compile(r"([0-9A-F]{17})-([0-9A-F]{17})__([0-9A-F]{16})-([0-9A-F]{16})-([0-9a-f]{8})\.(delta|image)")


def check_ranges(key_start: int, key_end: int, lsn_start: int, lsn_end: int) -> None:
    """Raise ValueError unless [key_start, key_end) and [lsn_start, lsn_end) are
    non-empty ranges of the key space (u64, end up to 2**64) and of u64 LSNs."""
    if not 0 <= key_start < key_end <= KEY_SPACE_END:
        raise ValueError(
            f"key range [{key_start:#x}, {key_end:#x}) is invalid: expected 0 <= key_start < key_end <= 2**64"
        )
    if not 0 <= lsn_start < lsn_end <= MAX_U64:
        raise ValueError(
            f"lsn range [{lsn_start:#x}, {lsn_end:#x}) is invalid: expected 0 <= lsn_start < lsn_end <= 2**64-1"
        )


@dataclass(frozen=True)
class LayerName:
    """A layer's identity: its kind, key range, LSN range and generation."""

    kind: LayerKind
    key_start: Key
    key_end: Key  # exclusive, up to KEY_SPACE_END (2**64)
    lsn_start: Lsn
    lsn_end: Lsn  # exclusive; lsn_start + 1 for an image layer
    generation: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("delta", "image"):
            raise ValueError(f"layer kind={self.kind!r} is invalid: expected 'delta' or 'image'")
        check_ranges(self.key_start, self.key_end, self.lsn_start, self.lsn_end)
        if self.kind == "image" and self.lsn_end != self.lsn_start + 1:
            raise ValueError(
                f"image layer lsn range [{self.lsn_start:#x}, {self.lsn_end:#x}) is invalid: "
                "an image layer at LSN L has lsn_end = L + 1"
            )
        if not 0 <= self.generation <= MAX_GENERATION:
            raise ValueError(f"generation={self.generation} is invalid: expected a u32")

    @classmethod
    def image(cls, key_start: Key, key_end: Key, lsn: Lsn, generation: int = 0) -> LayerName:
        return cls("image", key_start, key_end, lsn, Lsn(lsn + 1), generation)

    @property
    def file_name(self) -> str:
        return (
            f"{self.key_start:017X}-{self.key_end:017X}__"
            f"{self.lsn_start:016X}-{self.lsn_end:016X}-{self.generation:08x}.{self.kind}"
        )

    @classmethod
    def parse(cls, name: str) -> LayerName:
        """The LayerName of a file name; ValueError if it is not a layer file name."""
        match = _NAME_RE.fullmatch(name)
        if match is None:
            raise ValueError(
                f"{name!r} is not a layer file name: expected "
                "{key_start:017X}-{key_end:017X}__{lsn_start:016X}-{lsn_end:016X}-{generation:08x}.{delta|image}"
            )
        key_start, key_end, lsn_start, lsn_end, generation = (int(g, 16) for g in match.groups()[:5])
        kind: LayerKind = "delta" if match.group(6) == "delta" else "image"
        return cls(kind, Key(key_start), Key(key_end), Lsn(lsn_start), Lsn(lsn_end), generation)

    def __str__(self) -> str:
        return self.file_name
