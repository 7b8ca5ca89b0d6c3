"""Which layers hold a key's values at which LSNs, for one timeline.

A timeline's layers, newest first: the open in-memory layer, frozen in-memory
layers waiting to be written, then historic layer files: L0 deltas (all keys,
disjoint LSN ranges), L1 deltas (a key partition over an LSN range; they replace
the L0s they were compacted from) and image layers (a key range at one LSN).
For one key the delta layers never overlap in LSN, so a walk from the read LSN
downwards meets each value once.

`LayerMap.walk(key, lsn_lo, lsn_hi, stop_at_init)` returns the key's values with
LSN in [lsn_lo, lsn_hi), newest first, and how the walk ended:
- INIT: it reached a value that defines the key by itself (an image, a zero
  patch, a relation state) or an image layer holding the key;
- ABSENT: an image layer covering the key at an LSN >= lsn_lo does not hold it,
  so at that LSN the page was zero / the relation did not exist;
- OPEN: it reached lsn_lo or the timeline's start without either; the caller
  continues in the ancestor timeline.

Concurrency: owned by the event loop. Compaction and flush threads read only
frozen in-memory layers and immutable files; `replace_historic` swaps the list
on the loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from pageserver.in_memory_layer import InMemoryLayer
from pageserver.layers.block_file import BlockCache
from pageserver.layers.delta import DeltaLayerReader
from pageserver.layers.image import ImageLayerReader
from pageserver.layers.names import LayerName
from pageserver.value import will_init


class WalkEnd(enum.Enum):
    INIT = "init"
    ABSENT = "absent"
    OPEN = "open"


@dataclass
class HistoricLayer:
    """A layer file of this timeline. Readers open lazily and stay open."""

    name: LayerName
    path: Path
    file_size: int
    file_checksum: int
    _reader: DeltaLayerReader | ImageLayerReader | None = field(default=None, repr=False)

    @property
    def is_image(self) -> bool:
        return self.name.kind == "image"

    def covers_key(self, key: int) -> bool:
        return self.name.key_start <= key < self.name.key_end

    def reader(self, cache: BlockCache | None) -> DeltaLayerReader | ImageLayerReader:
        if self._reader is None:
            cls = ImageLayerReader if self.is_image else DeltaLayerReader
            self._reader = cls(self.path, block_cache=cache)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


@dataclass
class WalkResult:
    values: list[tuple[int, bytes]]  # newest first
    end: WalkEnd
    end_lsn: int = 0  # for INIT/ABSENT from an image layer: its LSN


class LayerMap:
    def __init__(self, block_cache: BlockCache | None = None) -> None:
        self.block_cache = block_cache
        self.open_layer: InMemoryLayer | None = None
        self.frozen: list[InMemoryLayer] = []  # oldest first
        self.historic: list[HistoricLayer] = []

    def in_memory_newest_first(self) -> list[InMemoryLayer]:
        layers = list(reversed(self.frozen))
        if self.open_layer is not None:
            layers.insert(0, self.open_layer)
        return layers

    def l0_deltas(self) -> list[HistoricLayer]:
        from pageserver.keys import KEY_SPACE_END

        return sorted(
            (l for l in self.historic if not l.is_image and l.name.key_start == 0 and l.name.key_end == KEY_SPACE_END),
            key=lambda l: l.name.lsn_start,
        )

    def replace_historic(self, remove: list[HistoricLayer], add: list[HistoricLayer]) -> None:
        gone = {id(l) for l in remove}
        self.historic = [l for l in self.historic if id(l) not in gone] + add

    def walk(self, key: int, lsn_lo: int, lsn_hi: int, stop_at_init: bool = True) -> WalkResult:
        out: list[tuple[int, bytes]] = []
        hi = lsn_hi
        for mem in self.in_memory_newest_first():
            if mem.start_lsn >= hi:
                continue
            for lsn, value in reversed(mem.get(key, max(mem.start_lsn, lsn_lo), hi)):
                out.append((lsn, value))
                if stop_at_init and will_init(value):
                    return WalkResult(out, WalkEnd.INIT)
            hi = min(hi, mem.start_lsn)
            if hi <= lsn_lo:
                return WalkResult(out, WalkEnd.OPEN)

        candidates = [l for l in self.historic if l.covers_key(key) and l.name.lsn_start < hi and l.name.lsn_end > lsn_lo]
        image = max((l for l in candidates if l.is_image), key=lambda l: l.name.lsn_start, default=None)
        floor = max(lsn_lo, image.name.lsn_start + 1) if image is not None else lsn_lo
        deltas = sorted(
            (l for l in candidates if not l.is_image and l.name.lsn_end > floor),
            key=lambda l: l.name.lsn_end,
            reverse=True,
        )
        for delta in deltas:
            entries = delta.reader(self.block_cache).get(key, max(delta.name.lsn_start, floor), min(delta.name.lsn_end, hi))
            for entry in reversed(entries):
                out.append((entry.lsn, entry.value))
                if stop_at_init and entry.will_init:
                    return WalkResult(out, WalkEnd.INIT)
        if image is not None:
            lsn = image.name.lsn_start
            value = image.reader(self.block_cache).get(key)
            if value is None:
                return WalkResult(out, WalkEnd.ABSENT, lsn)
            out.append((lsn, value))
            return WalkResult(out, WalkEnd.INIT, lsn)
        return WalkResult(out, WalkEnd.OPEN)

    def close(self) -> None:
        for layer in self.historic:
            layer.close()
