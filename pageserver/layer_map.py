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

Local disk is a cache when remote storage is configured: a HistoricLayer may
not be on local disk (`local` False; attached from remote storage, or evicted),
or its local file may fail its checks. Then `reader()` / `walk` raise
`LayerDownloadNeeded` naming the layer; the caller (timeline.read) awaits the
download on the executor and retries the synchronous read (layer_cache.py).

Concurrency: owned by the event loop. Compaction and flush threads read only
frozen in-memory layers and immutable files they pinned local; `replace_historic`
swaps the list on the loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING
from dataclasses import dataclass, field
from pathlib import Path

from pageserver.layers.block_cache import BlockCache
from pageserver.layers.delta import DeltaLayerReader
from pageserver.layers.image import ImageLayerReader
from pageserver.layers.in_memory_layer import InMemoryLayer
from pageserver.layers.names import LayerName
from pageserver.value import will_init
from strata.errors import CorruptionError

if TYPE_CHECKING:
    from strata.remote_storage.interface import RemoteObject


class WalkEnd(enum.Enum):
    INIT = "init"
    ABSENT = "absent"
    OPEN = "open"


class LayerDownloadNeeded(Exception):
    """A read needs `layer` (re)downloaded from remote storage: it is not on
    local disk, or its local file failed its checks (`corrupt`)."""

    def __init__(self, layer: HistoricLayer, corrupt: CorruptionError | None = None) -> None:
        why = f"is corrupt locally ({corrupt})" if corrupt else "is not on local disk"
        super().__init__(f"layer {layer.path} {why}")
        self.layer = layer
        self.corrupt = corrupt


@dataclass(eq=False)
class HistoricLayer:
    """A layer file of this timeline. Readers open lazily and stay open.

    `remote`: the uploaded object (key, size, whole-file xxhash64) once it is
    durable in remote storage, else None. `local`: whether the file is on local
    disk. `pins`: readers on other threads (compaction) that need it local; an
    evictor never removes a pinned layer. `on_access`: the LRU's hook."""

    name: LayerName
    path: Path
    file_size: int
    file_checksum: int
    remote: RemoteObject | None = None
    local: bool = True
    pins: int = 0
    on_access: Callable[[HistoricLayer], None] | None = field(default=None, repr=False)
    _reader: DeltaLayerReader | ImageLayerReader | None = field(default=None, repr=False)

    @property
    def is_image(self) -> bool:
        return self.name.kind == "image"

    def covers_key(self, key: int) -> bool:
        return self.name.key_start <= key < self.name.key_end

    def reader(self, cache: BlockCache | None) -> DeltaLayerReader | ImageLayerReader:
        if self.on_access is not None:
            self.on_access(self)
        if self._reader is None:
            if not self.local and self.remote is not None:
                raise LayerDownloadNeeded(self)
            cls = ImageLayerReader if self.is_image else DeltaLayerReader
            try:
                self._reader = cls(self.path, block_cache=cache)
            except FileNotFoundError:
                if self.remote is None:
                    raise
                self.local = False
                raise LayerDownloadNeeded(self) from None
            except CorruptionError as exc:
                if self.remote is None:
                    raise
                raise LayerDownloadNeeded(self, exc) from exc
        return self._reader

    def read(self, cache: BlockCache | None, fn: Callable[[DeltaLayerReader | ImageLayerReader], object]):
        """`fn(reader)`, turning a CorruptionError of a layer that remote storage
        holds into LayerDownloadNeeded (the read is retried after a fresh download)."""
        reader = self.reader(cache)
        try:
            return fn(reader)
        except CorruptionError as exc:
            if self.remote is None:
                raise
            raise LayerDownloadNeeded(self, exc) from exc

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
            for lsn, value in mem.get_newest_first(key, max(mem.start_lsn, lsn_lo), hi, stop_at_init):
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
            lo, top = max(delta.name.lsn_start, floor), min(delta.name.lsn_end, hi)
            entries = delta.read(self.block_cache, lambda r: r.get_newest_first(key, lo, top, stop_at_init))
            for entry in entries:
                out.append((entry.lsn, entry.value))
                if stop_at_init and entry.will_init:
                    return WalkResult(out, WalkEnd.INIT)
        if image is not None:
            lsn = image.name.lsn_start
            value = image.read(self.block_cache, lambda r: r.get(key))
            if value is None:
                return WalkResult(out, WalkEnd.ABSENT, lsn)
            out.append((lsn, value))
            return WalkResult(out, WalkEnd.INIT, lsn)
        return WalkResult(out, WalkEnd.OPEN)

    def close(self) -> None:
        for layer in self.historic:
            layer.close()
