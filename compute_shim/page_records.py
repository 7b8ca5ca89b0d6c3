"""A commit's page records: each changed page as the smaller of a PagePatch (its
changed byte ranges) and a PageImage, computed for all of a commit's pages in one
vectorised NumPy pass (compute_shim/sqlite.py ships them as one Append)."""

from __future__ import annotations

import numpy as np

from strata.v1 import records_pb2

SPLICE_OVERHEAD = 8  # bytes a splice costs beyond its data (protobuf tags, lengths, offset)
# Unchanged runs up to this many bytes are carried inside one splice. Measured on
# bench/sqlite_workload.py (20,000 users, 6,888 changed pages): 16 bytes gives 65,566
# splices and 19.4 MB of records, 64 bytes 46,066 splices and 20.0 MB (+3%) for 30% less
# commit CPU (building splices is the cost); 128 bytes costs +15% bytes.
MERGE_GAP = 64


def page_records(rel: int, pages: list[tuple[int, bytes, bytes]]) -> list[tuple[int, records_pb2.Record]]:
    """For each changed (blkno, old, new), the smaller of a PagePatch and a PageImage.

    A patch holds the changed 8-byte words of `old` (runs closer than `MERGE_GAP` bytes
    merged into one splice); unchanged pages get no record. Pages are at least 512
    bytes, a multiple of 8, so whole words tile them. All pages are compared in one
    vectorised pass: a commit is CPU-bound on this when it writes thousands of pages."""
    if not pages:
        return []
    page_size = len(pages[0][2])
    words = page_size // 8  # pages are at least 512 bytes, a multiple of 8
    olds = np.frombuffer(b"".join(old for _, old, _ in pages), dtype=np.uint64).reshape(len(pages), words)
    news = np.frombuffer(b"".join(new for _, _, new in pages), dtype=np.uint64).reshape(len(pages), words)
    rows, cols = np.nonzero(olds != news)  # changed words, by page then offset
    if len(rows) == 0:
        return []
    # A run of changed words ends at a new page or a gap of more than MERGE_GAP bytes.
    starts = np.flatnonzero(np.concatenate(([True], (rows[1:] != rows[:-1]) | (np.diff(cols) > MERGE_GAP // 8))))
    ends = np.concatenate((starts[1:] - 1, [len(rows) - 1]))
    run_page = rows[starts]
    run_lo, run_hi = cols[starts] * 8, (cols[ends] + 1) * 8
    patch_bytes = np.bincount(run_page, weights=run_hi - run_lo + SPLICE_OVERHEAD, minlength=len(pages))
    changed = np.bincount(rows, minlength=len(pages)) > 0
    out: list[tuple[int, records_pb2.Record]] = []
    splices: dict[int, list[records_pb2.Splice]] = {}
    as_patch = (patch_bytes < page_size).tolist()
    for i, lo, hi in zip(run_page.tolist(), run_lo.tolist(), run_hi.tolist()):
        if as_patch[i]:
            splices.setdefault(i, []).append(records_pb2.Splice(offset=lo, data=pages[i][2][lo:hi]))
    for i in np.flatnonzero(changed).tolist():
        blkno, _, new = pages[i]
        if as_patch[i]:
            out.append((blkno, records_pb2.Record(patch=records_pb2.PagePatch(rel=rel, blkno=blkno, splices=splices[i]))))
        else:
            out.append((blkno, records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=new))))
    return out


def patch_or_image(rel: int, blkno: int, old: bytes, new: bytes) -> records_pb2.Record | None:
    """One page's record (see `page_records`); None if the pages are equal."""
    records = page_records(rel, [(blkno, old, new)])
    return records[0][1] if records else None
