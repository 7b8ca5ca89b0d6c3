"""Garbage collection of a timeline: the PITR window, which layers no retained
LSN needs, and the remote objects that go with them.

Retained LSNs of a timeline (docs/design/0003-remote-storage.md, "GC"):
- every LSN at or above its `gc_cutoff_lsn` (the PITR window: the LSN of the
  last commit at or before now - pitr_seconds, never above disk_consistent_lsn,
  never moving back);
- every child timeline's branch point (`ancestor_lsn`), also below the cutoff,
  and every branch point a CreateTimeline in flight reserved.

A layer (delta [lsn_start, lsn_end) or image at lsn_start) is *needed at* a
retained LSN P when a page walk from P can reach it: it starts at or below P
and no image layers with an LSN in [its last LSN, P] cover its whole key range
(a walk stops at the newest image at or below P). A layer whose last LSN is
above the cutoff is always kept (reads in the window walk it). Everything else
is garbage: GC removes it from the index, deletes the local file, and the
upload queue deletes the remote object only after the index without it is
uploaded (remote_timeline.py, step 5).

Deltas below the cutoff are freed only once an image at or above their end
covers them, so GC writes one image layer of the whole key space at the cutoff
when that frees enough deltas (`image_would_free`, `image_worth_writing`).

Remote housekeeping in the same pass: layer objects of this timeline that no
index names (uploads a crash left unindexed; `RemoteTimelineClient.sweep`), and
vector index objects (`vector_indexes/<collection>/<LSN as 16 upper-case hex>.ivf`,
written by gpu/; the key layout is strata/vectors/ivf_index.py's) below the cutoff except, per collection, the newest one below
it (what a read at the cutoff uses) and the newest at or below each child's
branch point: `vector_objects_to_delete`.

Concurrency: runs on the event loop under the tenant's compaction_lock (the
only other writer of layer lists), so no compaction reads a layer GC removes.
The cutoff is raised (in memory) before anything is chosen, so reads and
branches below it are refused from then on; reads that started earlier check
again after reading (service.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pageserver.keys import KEY_SPACE_END
from pageserver.layers.names import LayerName
from strata.remote_storage.layout import parse_vector_index_key



@dataclass(frozen=True)
class GcResult:
    """What one GC pass of a timeline did."""

    cutoff_lsn: int
    removed_layers: int = 0
    removed_bytes: int = 0
    images_created: int = 0
    leaked_objects: int = 0  # unindexed layer objects deleted
    vector_objects: int = 0  # vector index objects deleted


def covered(key_start: int, key_end: int, ranges: Iterable[tuple[int, int]]) -> bool:
    """Whether the union of the half-open `ranges` covers [key_start, key_end)."""
    at = key_start
    for start, end in sorted(ranges):
        if start > at:
            return False
        at = max(at, end)
        if at >= key_end:
            return True
    return at >= key_end


def needed_at(layer: LayerName, point: int, images: list[LayerName]) -> bool:
    """Whether a page walk from LSN `point` can reach `layer`."""
    if layer.lsn_start > point:
        return False
    last = layer.lsn_end - 1
    if last > point:
        return True  # it holds values at or below `point` and above it: the walk reads it
    over = [
        (m.key_start, m.key_end)
        for m in images
        if m != layer
        and last <= m.lsn_start <= point
        # an image at the same LSN as an image layer does not supersede it
        # (else two such would each remove the other)
        and (layer.kind == "delta" or m.lsn_start > last)
        and m.key_start < layer.key_end
        and m.key_end > layer.key_start
    ]
    return not covered(layer.key_start, layer.key_end, over)


def garbage(layers: list[LayerName], cutoff: int, branch_points: Iterable[int]) -> list[LayerName]:
    """The layers that no LSN at or above `cutoff` and no branch point needs."""
    points = sorted({cutoff, *(b for b in branch_points if b < cutoff)})
    images = [l for l in layers if l.kind == "image"]
    return [
        l for l in layers
        if l.lsn_end - 1 <= cutoff and not any(needed_at(l, p, images) for p in points)
    ]


def cutoff_image(cutoff: int, generation: int) -> LayerName:
    """The whole-key-space image GC writes at the cutoff."""
    return LayerName("image", 0, KEY_SPACE_END, cutoff, cutoff + 1, generation)


def image_would_free(layers: list[LayerName], cutoff: int, branch_points: Iterable[int], generation: int) -> list[LayerName]:
    """The deltas that an image of the whole key space at `cutoff` would free
    beyond what is garbage already (empty: writing it gains nothing)."""
    points = list(branch_points)
    image = cutoff_image(cutoff, generation)
    if image in layers:
        return []
    now = set(garbage(layers, cutoff, points))
    then = garbage([*layers, image], cutoff, points)
    return [l for l in then if l != image and l not in now and l.kind == "delta"]


def image_worth_writing(freed_layers: int, freed_bytes: int, logical_size: int, image_threshold: int) -> bool:
    """Whether to write the image at the cutoff: it frees at least
    `image_threshold` deltas (compaction's rule for images), or at least a
    quarter of the timeline's logical size in bytes (about what the image costs,
    compressed), so a big timeline is not imaged again for a few small deltas."""
    return freed_layers > 0 and (freed_layers >= image_threshold or 4 * freed_bytes >= logical_size)


def vector_objects_to_delete(prefix: str, keys: Iterable[str], cutoff: int, branch_points: Iterable[int] = ()) -> list[str]:
    """Vector index objects under `prefix` (`.../vector_indexes/`) to delete:
    per collection, every one with an LSN below `cutoff` that no retained LSN
    uses. A search at LSN P uses the newest index at or below P, so the
    retained LSNs below the cutoff keep: the newest index below the cutoff
    (reads at the cutoff) and, for each child's branch point below the cutoff,
    the newest index at or below it (the child's reads before it has its own
    index, and its warm-started builds). Keys that do not look like
    `<collection>/<16 hex>.ivf` are left alone."""
    below: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        parsed = parse_vector_index_key(prefix, key)
        if parsed is not None and parsed.lsn < cutoff:
            below.setdefault(parsed.collection, []).append((parsed.lsn, key))
    points = [p for p in branch_points if p < cutoff]
    out: list[str] = []
    for entries in below.values():
        entries.sort()
        used = {entries[-1][1]}
        for point in points:
            at_or_below = [key for lsn, key in entries if lsn <= point]
            if at_or_below:
                used.add(at_or_below[-1])
        out.extend(key for _, key in entries if key not in used)
    return sorted(out)


def unindexed_layer_objects(prefix: str, keys: Iterable[str], keep: set[str], generation: int) -> list[str]:
    """Layer objects directly under the timeline `prefix` that `keep` does not
    name, written by this generation or an older one (a newer generation's
    objects belong to the pageserver that fenced us)."""
    out = []
    for key in keys:
        name = key[len(prefix):]
        if "/" in name or name in keep:
            continue
        try:
            parsed = LayerName.parse(name)
        except ValueError:
            continue
        if parsed.generation <= generation:
            out.append(key)
    return out
