"""page@LSN and relation size@LSN, through the ancestor chain.

The redo rules (DESIGN.md): page@LSN is the zero page with every record of LSN
<= that LSN applied in order; a relation's size is set by RelSize, removed by
RelDrop, and grows when a block at or past its end is written; blocks at or past
a truncation are gone, so a block re-extended later starts from zeros.

How a page is rebuilt:
1. the relation's state at the LSN (its metadata key): NOT_FOUND if it does not
   exist, OUT_OF_RANGE if the block is at or past its end;
2. the block's values walking back from the LSN to the first one that defines
   the page alone (image, zero patch, or an image layer), through ancestors;
3. a truncation or drop that cut the block (each timeline keeps the list of its
   own; ancestors' count up to the branch point) drops the values before it
   (start from zeros);
4. apply the remaining values oldest first.

A timeline is anything with `layer_map`, `ancestor` (or None) and `ancestor_lsn`.
"""

from __future__ import annotations

from typing import Protocol

from pageserver.keys import page_key, rel_meta_key
from pageserver.layer_map import LayerMap, WalkEnd
from pageserver.value import MISSING_REL, RelState, apply_value, decode_rel_state
from strata.errors import NotFound, OutOfRange


class TimelineChain(Protocol):
    layer_map: LayerMap
    ancestor: TimelineChain | None
    ancestor_lsn: int
    truncations: dict[int, list[tuple[int, int]]]  # rel -> [(lsn, nblocks after)], its own


def collect(timeline: TimelineChain, key: int, lsn: int, lsn_lo: int = 0, stop_at_init: bool = True) -> tuple[list[tuple[int, bytes]], WalkEnd]:
    """Values of `key` with lsn_lo <= LSN <= lsn, newest first, across ancestors."""
    out: list[tuple[int, bytes]] = []
    tl: TimelineChain | None = timeline
    hi = lsn + 1
    while tl is not None and hi > lsn_lo:
        result = tl.layer_map.walk(key, lsn_lo, hi, stop_at_init)
        out.extend(result.values)
        if result.end is not WalkEnd.OPEN:
            return out, result.end
        hi = min(hi, tl.ancestor_lsn + 1)
        tl = tl.ancestor
    return out, WalkEnd.OPEN


def rel_state(timeline: TimelineChain, rel: int, lsn: int) -> tuple[RelState, int]:
    """The relation's state at `lsn` and the LSN it was set at (0: never)."""
    values, end = collect(timeline, rel_meta_key(rel), lsn)
    if not values:
        return MISSING_REL, 0
    newest_lsn, value = values[0]
    return decode_rel_state(value), newest_lsn


def check_block(timeline: TimelineChain, rel: int, blkno: int, lsn: int) -> int:
    """Raise NotFound/OutOfRange unless the block exists at `lsn`; return the
    LSN of the relation's latest state change."""
    state, state_lsn = rel_state(timeline, rel, lsn)
    if not state.exists:
        raise NotFound(f"rel={rel} does not exist at lsn={lsn}")
    if blkno >= state.nblocks:
        raise OutOfRange(f"rel={rel} blkno={blkno} is past the relation's end at lsn={lsn}: it has {state.nblocks} blocks")
    return state_lsn


def last_cut(timeline: TimelineChain, rel: int, blkno: int, lsn: int) -> int | None:
    """The LSN of the newest shrink or drop at or below `lsn` that cut `blkno`:
    each timeline of the chain lists its own (a branch's all lie above its
    ancestor_lsn), so the ancestor's count up to the branch point."""
    best: int | None = None
    tl: TimelineChain | None = timeline
    hi = lsn
    while tl is not None:
        for cut_lsn, nblocks in tl.truncations.get(rel, ()):
            if cut_lsn <= hi and nblocks <= blkno and (best is None or cut_lsn > best):
                best = cut_lsn
        hi = min(hi, tl.ancestor_lsn)
        tl = tl.ancestor
    return best


def get_page(timeline: TimelineChain, rel: int, blkno: int, lsn: int, page_size: int) -> bytes:
    check_block(timeline, rel, blkno, lsn)
    values, _ = collect(timeline, page_key(rel, blkno), lsn)
    if values:
        # Drop what a truncation (or drop) of this block at or below `lsn` made history.
        cut = last_cut(timeline, rel, blkno, lsn)
        if cut is not None and cut >= values[-1][0]:
            values = [(l, v) for l, v in values if l > cut]
    page = bytearray(page_size)
    for _, value in reversed(values):
        apply_value(page, value, page_size)
    return bytes(page)
