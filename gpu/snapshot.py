"""Read a timeline at an LSN straight from the layer files in remote storage.

No page goes through the pageserver: `open_snapshot` downloads
`index_part.json` of the timeline (and of each ancestor, up to its branch
point), downloads the layer files that hold keys of the vector relations
(rel >= CATALOG_REL) at LSNs <= the snapshot LSN, builds a LayerMap over them
and rebuilds pages with pageserver/reconstruct.py, whose redo
(strata/redo.py) is the pageserver's own, byte for byte.

What it requires: the snapshot LSN must be covered by the uploaded index
(`disk_consistent_lsn` >= LSN, i.e. remote_consistent_lsn has passed it) and
not below the GC cutoff (an ancestor is read at the branch point, which GC
keeps whatever the ancestor's cutoff); `ensure_uploaded` calls Compact (which
flushes the in-memory layer) and waits for remote_consistent_lsn. A layer
removed by a compaction between reading the index and downloading it makes
the open start over with the newer index.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compute_shim.client import Client
from pageserver import reconstruct
from pageserver.index_part import IndexPart
from pageserver.keys import KEY_SPACE_END
from pageserver.layer_map import HistoricLayer, LayerMap
from pageserver.layers.block_file import BlockCache
from pageserver.layers.names import LayerName
from pageserver.remote_storage import RemoteStorage
from pageserver.remote_timeline import download_index, remote_objects_of
from strata.errors import DeadlineExceeded, FailedPrecondition, NotFound
from strata.logs import event_logger
from strata.vectors.collection_format import CATALOG_REL

log = event_logger("gpu")

VECTOR_KEYS = (CATALOG_REL << 32, KEY_SPACE_END)
OPEN_ATTEMPTS = 3


@dataclass
class SnapshotTimeline:
    """One timeline of the chain, as reconstruct.TimelineChain wants it."""

    timeline_id: str
    layer_map: LayerMap
    ancestor: SnapshotTimeline | None
    ancestor_lsn: int
    truncations: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    layer_bytes: int = 0


@dataclass
class LayerSnapshot:
    """A PageSource (compute_shim/vectors.py) over downloaded layer files."""

    timeline: SnapshotTimeline
    lsn: int
    page_size: int
    workdir: Path

    def rel_nblocks(self, rel: int) -> int | None:
        state, _ = reconstruct.rel_state(self.timeline, rel, self.lsn)
        return state.nblocks if state.exists else None

    def pages(self, rel: int, blknos: Sequence[int]) -> list[bytes]:
        return [reconstruct.get_page(self.timeline, rel, b, self.lsn, self.page_size) for b in blknos]

    def close(self) -> None:
        tl: SnapshotTimeline | None = self.timeline
        while tl is not None:
            tl.layer_map.close()
            tl = tl.ancestor
        shutil.rmtree(self.workdir, ignore_errors=True)


def _open_timeline(
    storage: RemoteStorage, tenant_id: str, timeline_id: str, lsn: int, workdir: Path, cache: BlockCache,
    branch_point: bool = False,
) -> SnapshotTimeline:
    """`branch_point`: `lsn` is a child's branch point, which GC retains even
    below the ancestor's cutoff (pageserver/gc.py), so the cutoff does not apply."""
    index: IndexPart = download_index(storage, tenant_id, timeline_id)
    if index.disk_consistent_lsn < lsn:
        raise FailedPrecondition(
            f"timeline {timeline_id}: remote storage holds layers up to lsn={index.disk_consistent_lsn}, "
            f"below the snapshot lsn={lsn}: call Compact and wait for remote_consistent_lsn >= {lsn}"
        )
    if index.gc_cutoff_lsn > lsn and not branch_point:
        raise FailedPrecondition(
            f"timeline {timeline_id}: lsn={lsn} is below the GC cutoff {index.gc_cutoff_lsn}: build at a retained LSN"
        )
    objects = remote_objects_of(index)
    directory = workdir / timeline_id
    directory.mkdir(parents=True, exist_ok=True)
    layer_map = LayerMap(cache)
    total = 0
    for entry in index.layers:
        name = LayerName.parse(entry.file_name)
        if name.lsn_start > lsn or name.key_end <= VECTOR_KEYS[0] or name.key_start >= VECTOR_KEYS[1]:
            continue
        path = directory / entry.file_name
        storage.download_file(objects[entry.file_name].key, path, expected=objects[entry.file_name])
        layer_map.historic.append(HistoricLayer(name, path, entry.file_size, entry.file_checksum))
        total += entry.file_size
    truncations: dict[int, list[tuple[int, int]]] = {}
    for rel, cut_lsn, nblocks in index.truncations:
        truncations.setdefault(rel, []).append((cut_lsn, nblocks))
    ancestor = None
    if index.ancestor_timeline_id:
        ancestor = _open_timeline(
            storage, tenant_id, index.ancestor_timeline_id, index.ancestor_lsn, workdir, cache, branch_point=True
        )
    return SnapshotTimeline(timeline_id, layer_map, ancestor, index.ancestor_lsn, truncations, total)


def open_snapshot(storage: RemoteStorage, tenant_id: str, timeline_id: str, lsn: int, page_size: int, workdir: Path) -> LayerSnapshot:
    """The timeline at `lsn`, from remote storage alone."""
    t0 = time.monotonic()
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            tl = _open_timeline(storage, tenant_id, timeline_id, lsn, workdir, BlockCache(256 << 20))
        except NotFound:
            if attempt == OPEN_ATTEMPTS:
                raise
            continue  # a layer was replaced by compaction meanwhile: read the newer index
        nbytes, chain = 0, tl
        while chain is not None:
            nbytes += chain.layer_bytes
            chain = chain.ancestor
        log.info("snapshot_opened", tenant=tenant_id, timeline=timeline_id, lsn=lsn, layer_bytes=nbytes, ms=round((time.monotonic() - t0) * 1000))
        return LayerSnapshot(tl, lsn, page_size, workdir)
    raise AssertionError("unreachable")


def ensure_uploaded(client: Client, tenant_id: str, timeline_id: str, lsn: int, timeout: float = 120.0) -> None:
    """Make remote storage hold the timeline (and its ancestors up to their
    branch points) through `lsn`: Compact if needed, then wait."""
    info = client.get_timeline(tenant_id=tenant_id, timeline_id=timeline_id)
    if info.ancestor_timeline_id and info.ancestor_lsn:
        ensure_uploaded(client, tenant_id, info.ancestor_timeline_id, info.ancestor_lsn, timeout)
    if info.remote_consistent_lsn >= lsn:
        return
    deadline = time.monotonic() + timeout
    if info.disk_consistent_lsn < lsn:
        client.compact(tenant_id=tenant_id, timeline_id=timeline_id, timeout=timeout)
    while True:
        info = client.get_timeline(tenant_id=tenant_id, timeline_id=timeline_id)
        if info.remote_consistent_lsn >= lsn:
            return
        if info.disk_consistent_lsn < lsn:
            client.compact(tenant_id=tenant_id, timeline_id=timeline_id, timeout=timeout)
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                f"timeline {timeline_id}: remote_consistent_lsn={info.remote_consistent_lsn} did not reach lsn={lsn} "
                f"within {timeout}s: is the pageserver running with --remote-storage?"
            )
        time.sleep(0.05)
