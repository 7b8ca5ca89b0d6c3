"""A timeline read at an LSN from the layer files its index names.

`index_layers` turns an IndexPart into the HistoricLayers of a LayerMap and
`index_truncations` into a timeline's truncation lists: the pageserver's
Timeline builds its layer map this way from its own index (layers local, or
in remote storage), and so does `open_timeline`, which reads a timeline
straight from remote storage without a pageserver: it downloads the newest
`index_part.json` of the timeline (and of each ancestor, up to its branch
point) and the layer files holding keys of `key_range` at LSNs <= the LSN,
into a SnapshotTimeline. Its pages are rebuilt by pageserver/reconstruct.py,
whose redo (strata/redo.py) is the pageserver's own, byte for byte.

This is the one pageserver module gpu/ reads layer snapshots through
(tests/test_layering.py); what it needs of the pageserver besides is
re-exported here (KEY_SPACE_END, BlockCache).

What `open_timeline` requires: the LSN must be covered by the uploaded index
(`disk_consistent_lsn` >= LSN, i.e. remote_consistent_lsn has passed it) and
not below the GC cutoff (an ancestor is read at the branch point, which GC
keeps whatever the ancestor's cutoff). A layer removed by a compaction between
reading the index and downloading it raises NotFound: open again, with the
newer index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pageserver import reconstruct
from pageserver.index_part import IndexPart
from pageserver.keys import KEY_SPACE_END, Key
from pageserver.layer_map import HistoricLayer, LayerMap
from pageserver.layers.block_cache import BlockCache
from pageserver.layers.names import LayerName
from pageserver.remote_timeline import download_index, remote_objects_of
from strata.errors import FailedPrecondition
from strata.ids import Lsn, TenantId, TimelineId

if TYPE_CHECKING:
    from strata.remote_storage.interface import RemoteObject, RemoteStorage

__all__ = [
    "KEY_SPACE_END",
    "BlockCache",
    "SnapshotTimeline",
    "index_layers",
    "index_truncations",
    "open_timeline",
]


def index_layers(
    index: IndexPart,
    directory: Path,
    *,
    remote_objects: dict[str, RemoteObject] | None = None,
    keep: Callable[[LayerName], bool] | None = None,
) -> list[HistoricLayer]:
    """The index's layer files (those `keep` accepts) as layers of a LayerMap,
    their files under `directory`; `remote_objects` names the uploaded object
    of each (file name -> object), which a read downloads when the file is not
    on local disk."""
    remote_objects = remote_objects or {}
    layers = []
    for entry in index.layers:
        name = LayerName.parse(entry.file_name)
        if keep is not None and not keep(name):
            continue
        path = directory / entry.file_name
        layers.append(
            HistoricLayer(
                name, path, entry.file_size, entry.file_checksum,
                remote=remote_objects.get(entry.file_name), local=path.exists(),
            )
        )
    return layers


def index_truncations(index: IndexPart) -> dict[int, list[tuple[Lsn, int]]]:
    """rel -> [(lsn, nblocks after)] of the timeline's own shrinks and drops,
    ascending LSN (see reconstruct.last_cut: the per-relation lists are what
    reconstruction walks on every page read, so they stay plain pairs)."""
    truncations: dict[int, list[tuple[Lsn, int]]] = {}
    for t in index.truncations:
        truncations.setdefault(t.rel, []).append((t.lsn, t.nblocks))
    return truncations


@dataclass
class SnapshotTimeline:
    """One timeline of the chain, as reconstruct.TimelineChain wants it."""

    timeline_id: TimelineId
    layer_map: LayerMap
    ancestor: SnapshotTimeline | None
    ancestor_lsn: Lsn
    truncations: dict[int, list[tuple[Lsn, int]]] = field(default_factory=dict)
    layer_bytes: int = 0

    def chain(self) -> Iterator[SnapshotTimeline]:
        """This timeline, then its ancestors."""
        tl: SnapshotTimeline | None = self
        while tl is not None:
            yield tl
            tl = tl.ancestor

    def rel_nblocks(self, rel: int, lsn: Lsn) -> int | None:
        """The relation's size at `lsn`, or None if it does not exist."""
        state, _ = reconstruct.rel_state(self, rel, lsn)
        return state.nblocks if state.exists else None

    def get_page(self, rel: int, blkno: int, lsn: Lsn, page_size: int) -> bytes:
        return reconstruct.get_page(self, rel, blkno, lsn, page_size)

    def close(self) -> None:
        for tl in self.chain():
            tl.layer_map.close()


def open_timeline(
    storage: RemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    lsn: Lsn,
    workdir: Path,
    cache: BlockCache,
    key_range: tuple[Key, Key] = (Key(0), KEY_SPACE_END),
    branch_point: bool = False,
) -> SnapshotTimeline:
    """The timeline at `lsn` from remote storage alone, its layer files (those
    holding keys in [key_range) at LSNs <= `lsn`) downloaded under
    `workdir/<timeline id>/`. `branch_point`: `lsn` is a child's branch point,
    which GC retains even below the ancestor's cutoff (pageserver/gc.py), so
    the cutoff does not apply. Blocking."""
    index = download_index(storage, tenant_id, timeline_id)
    if index.disk_consistent_lsn < lsn:
        raise FailedPrecondition(
            f"timeline {timeline_id}: remote storage holds layers up to lsn={index.disk_consistent_lsn}, "
            f"below the snapshot lsn={lsn}: call Compact and wait for remote_consistent_lsn >= {lsn}"
        )
    if index.gc_cutoff_lsn > lsn and not branch_point:
        raise FailedPrecondition(
            f"timeline {timeline_id}: lsn={lsn} is below the GC cutoff {index.gc_cutoff_lsn}: build at a retained LSN"
        )
    lo, hi = key_range
    directory = workdir / timeline_id
    directory.mkdir(parents=True, exist_ok=True)
    objects = remote_objects_of(index)
    layer_map = LayerMap(cache)
    for layer in index_layers(index, directory, keep=lambda n: n.lsn_start <= lsn and n.key_end > lo and n.key_start < hi):
        obj = objects[layer.path.name]
        storage.download_file(obj.key, layer.path, expected=obj)
        layer.local = True
        layer_map.historic.append(layer)
    ancestor = None
    if index.ancestor_timeline_id:
        ancestor = open_timeline(
            storage, tenant_id, TimelineId(index.ancestor_timeline_id), index.ancestor_lsn, workdir, cache, key_range, branch_point=True
        )
    total = sum(layer.file_size for layer in layer_map.historic)
    return SnapshotTimeline(timeline_id, layer_map, ancestor, index.ancestor_lsn, index_truncations(index), total)
