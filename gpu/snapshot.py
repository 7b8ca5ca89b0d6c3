"""Read a timeline at an LSN straight from the layer files in remote storage.

No page goes through the pageserver: `open_snapshot` opens the timeline with
pageserver/snapshot_reader.py (`open_timeline`: the uploaded index of the
timeline and its ancestors, the layer files that hold keys of the vector
relations, rel >= CATALOG_REL, at LSNs <= the snapshot LSN) and rebuilds pages
with the pageserver's own reconstruction and redo, byte for byte.

What it requires (snapshot_reader.py has the details): the snapshot LSN
covered by the uploaded index and not below the GC cutoff; `ensure_uploaded`
calls Compact (which flushes the in-memory layer) and waits for
remote_consistent_lsn. A layer removed by a compaction between reading
the index and downloading it makes the open start over with the newer index.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compute_shim.client import Client
from pageserver.snapshot_reader import KEY_SPACE_END, BlockCache, SnapshotTimeline, open_timeline
from strata.errors import DeadlineExceeded, NotFound
from strata.logs import event_logger
from strata.remote_storage.interface import RemoteStorage
from strata.vectors.collection_format import CATALOG_REL

log = event_logger("gpu")

VECTOR_KEYS = (CATALOG_REL << 32, KEY_SPACE_END)
OPEN_ATTEMPTS = 3


@dataclass
class LayerSnapshot:
    """A PageSource (compute_shim/vectors.py) over downloaded layer files."""

    timeline: SnapshotTimeline
    lsn: int
    page_size: int
    workdir: Path

    def rel_nblocks(self, rel: int) -> int | None:
        return self.timeline.rel_nblocks(rel, self.lsn)

    def pages(self, rel: int, blknos: Sequence[int]) -> list[bytes]:
        return [self.timeline.get_page(rel, b, self.lsn, self.page_size) for b in blknos]

    def close(self) -> None:
        self.timeline.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def open_snapshot(storage: RemoteStorage, tenant_id: str, timeline_id: str, lsn: int, page_size: int, workdir: Path) -> LayerSnapshot:
    """The timeline at `lsn`, from remote storage alone."""
    t0 = time.monotonic()
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            tl = open_timeline(storage, tenant_id, timeline_id, lsn, workdir, BlockCache(256 << 20), VECTOR_KEYS)
        except NotFound:
            if attempt == OPEN_ATTEMPTS:
                raise
            continue  # a layer was replaced by compaction meanwhile: read the newer index
        nbytes = sum(t.layer_bytes for t in tl.chain())
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
