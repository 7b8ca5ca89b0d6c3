"""Writing layer files: L0 flush, L0 -> L1 compaction, image layers.

These functions run on the executor and read only frozen in-memory layers and
immutable layer files; the caller commits their output (index first, then the
layer map) on the event loop (Timeline.commit_layers).

- `write_l0_delta`: a frozen in-memory layer becomes one L0 delta covering the
  whole key space over its LSN range.
- `compact_l0`: the L0 deltas (contiguous LSN ranges) are merged in (key, LSN)
  order and cut into L1 deltas of about `l1_target_bytes`, at key boundaries;
  the L1 files together cover every key the L0s hold (from the first key to one
  past the last) over the L0s' LSN range, so they replace the L0s exactly. An
  L1 never spans the whole key space: that is what marks an L0.
- `create_image_layers`: for each key partition with `image_threshold` or more
  deltas above its newest image, an image layer at LSN X holding every page
  that is not all zeros and every existing relation's state; a key it does not
  hold is a zero page / a missing relation at X. Reads then stop there.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pageserver import reconstruct
from pageserver.keys import KEY_SPACE_END, key_rel, rel_key_range, rel_meta_key
from pageserver.layer_map import HistoricLayer
from pageserver.layers.delta import DeltaLayerWriter
from pageserver.layers.image import ImageLayerWriter
from pageserver.layers.in_memory_layer import InMemoryLayer
from pageserver.layers.names import LayerName
from pageserver.value import encode_image, encode_rel_state

if TYPE_CHECKING:
    from pageserver.layers.block_cache import BlockCache
    from pageserver.timeline import Timeline


def write_l0_delta(path: Path, mem: InMemoryLayer, tenant_id: str, timeline_id: str):
    writer = DeltaLayerWriter(
        path,
        tenant_id=tenant_id,
        timeline_id=timeline_id,
        key_start=0,
        key_end=KEY_SPACE_END,
        lsn_start=mem.start_lsn,
        lsn_end=mem.end_lsn,
    )
    try:
        for key, lsn, value, init in mem.sorted_entries():
            writer.put(key, lsn, value, init)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def compact_l0(
    l0: list[HistoricLayer],
    directory: Path,
    tenant_id: str,
    timeline_id: str,
    generation: int,
    target_bytes: int,
    block_cache: BlockCache | None,
) -> list[HistoricLayer]:
    """Merge L0 deltas into key-partitioned L1 deltas over the same LSN range."""
    lsn_start, lsn_end = l0[0].name.lsn_start, l0[-1].name.lsn_end
    streams = [layer.reader(block_cache).iter_entries() for layer in l0]
    merged = heapq.merge(*streams, key=lambda e: (e.key, e.lsn))
    out: list[HistoricLayer] = []
    pending: list = []  # entries of the file being built
    size = 0
    file_key_start = -1

    def write(entries: list, key_start: int, key_end: int) -> None:
        name = LayerName("delta", key_start, key_end, lsn_start, lsn_end, generation)
        path = directory / name.file_name
        writer = DeltaLayerWriter(
            path, tenant_id=tenant_id, timeline_id=timeline_id,
            key_start=key_start, key_end=key_end, lsn_start=lsn_start, lsn_end=lsn_end,
        )
        try:
            for e in entries:
                writer.put(e.key, e.lsn, e.value, e.will_init)
            summary = writer.finish()
        except BaseException:
            writer.abort()
            raise
        out.append(HistoricLayer(name, path, summary.file_size, summary.file_checksum))

    for entry in merged:
        if file_key_start < 0:
            file_key_start = entry.key
        # An L1 never spans the whole key space, or it would read as an L0 (and,
        # compacted from one L0, get that L0's very name): cut before the last
        # possible key when the file starts at key 0.
        whole = file_key_start == 0 and entry.key == KEY_SPACE_END - 1
        if (size >= target_bytes or whole) and pending and entry.key != pending[-1].key:
            write(pending, file_key_start, entry.key)
            file_key_start, pending, size = entry.key, [], 0
        pending.append(entry)
        size += len(entry.value) + 24
    if pending:
        write(pending, file_key_start, pending[-1].key + 1)
    return out


def relation_aligned(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Key ranges widened to whole relations (pages and metadata key), merged
    where they overlap."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        start, end = rel_key_range(key_rel(start))[0], rel_key_range(key_rel(end - 1))[1]
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def image_partitions(timeline: Timeline, image_threshold: int) -> list[tuple[int, int]]:
    """Key ranges (those of the newest L1 deltas, widened to whole relations)
    whose delta depth above their newest image reached the threshold.

    An image layer always holds whole relations: reconstruction drops a page's
    values older than a truncation by reading the relation's metadata history,
    and an image of the metadata key ends that history. Were the metadata key
    imaged at X and a page of the same relation not, a page walk could reach
    below X, past a truncation the metadata walk no longer sees."""
    historic = timeline.layer_map.historic
    l1 = [l for l in historic if not l.is_image and not (l.name.key_start == 0 and l.name.key_end == KEY_SPACE_END)]
    if not l1:
        return []
    newest_end = max(l.name.lsn_end for l in l1)
    ranges = relation_aligned((l.name.key_start, l.name.key_end) for l in l1 if l.name.lsn_end == newest_end)
    wanted = []
    for start, end in ranges:
        overlapping = [l for l in historic if l.name.key_start < end and l.name.key_end > start]
        image_lsn = max((l.name.lsn_start for l in overlapping if l.is_image and l.name.key_start <= start and l.name.key_end >= end), default=-1)
        depth = sum(1 for l in overlapping if not l.is_image and l.name.lsn_start > image_lsn)
        if depth >= image_threshold:
            wanted.append((start, end))
    return wanted


def create_image_layers(
    timeline: Timeline,
    partitions: list[tuple[int, int]],
    rels: Iterable[int],
    lsn: int,
    generation: int,
) -> list[HistoricLayer]:
    """Image layers at `lsn` for each key partition (runs on the executor).

    `rels`: every relation the timeline may have had (its relation directory),
    so the keys to write are each existing relation's blocks and metadata key."""
    page_size = timeline.page_size
    zero = bytes(page_size)
    states = {rel: reconstruct.rel_state(timeline, rel, lsn)[0] for rel in sorted(rels)}
    out: list[HistoricLayer] = []
    for start, end in partitions:
        name = LayerName("image", start, end, lsn, lsn + 1, generation)
        path = timeline.directory / name.file_name
        writer = ImageLayerWriter(
            path, tenant_id=timeline.tenant_id, timeline_id=timeline.timeline_id, key_start=start, key_end=end, lsn=lsn
        )
        try:
            for rel, state in states.items():
                rel_start, rel_end = rel_key_range(rel)
                if not state.exists or rel_end <= start or rel_start >= end:
                    continue
                first = max(start, rel_start) - rel_start
                last = min(end - rel_start, state.nblocks)
                for blkno in range(first, last):
                    page = reconstruct.get_page(timeline, rel, blkno, lsn, page_size)
                    if page != zero:
                        writer.put(rel_start + blkno, encode_image(page))
                meta = rel_meta_key(rel)
                if start <= meta < end:
                    writer.put(meta, encode_rel_state(state))
            summary = writer.finish()
        except BaseException:
            writer.abort()
            raise
        out.append(HistoricLayer(name, path, summary.file_size, summary.file_checksum))
    return out
