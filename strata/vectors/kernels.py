"""Search kernels: distances as one matrix multiply, and top-k merges.

Exact search (compute_shim/vectors.py) and IVF list scans
(strata/vectors/ivf_index.py) both rank with these, over rows `prepare`d for
their metric: squared L2 (l2), 1 - cos (cosine), -dot (ip).
"""

from __future__ import annotations

import numpy as np

EXACT_TILE_ROWS = 65536  # rows of the collection per distance block
# The id search puts where a query has fewer than k results (distance inf); never a row's id.
NO_ID = np.uint64(np.iinfo(np.uint64).max)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the metric compares them: cosine compares unit vectors."""
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norms, np.float32(1e-30))).astype(np.float32, copy=False)
    return x


def distances(q: np.ndarray, x: np.ndarray, metric: str, x_sq: np.ndarray | None = None) -> np.ndarray:
    """[len(q), len(x)] distances of prepared rows: squared L2 (l2), 1 - cos
    (cosine), -dot (ip); as one matrix multiply (‖q‖² − 2q·x + ‖x‖²)."""
    dots = q @ x.T
    if metric == "l2":
        if x_sq is None:
            x_sq = np.einsum("ij,ij->i", x, x)
        d = np.einsum("ij,ij->i", q, q)[:, None] - 2 * dots + x_sq[None, :]
        return np.maximum(d, 0, out=d)
    if metric == "cosine":
        return 1 - dots
    return -dots


def merge_topk(ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k smallest distances (ties by id), ascending."""
    k = min(k, dists.shape[1])
    if dists.shape[1] > k:
        part = np.argpartition(dists, k - 1, axis=1)[:, :k]
        ids, dists = np.take_along_axis(ids, part, 1), np.take_along_axis(dists, part, 1)
    order = np.lexsort((ids, dists), axis=1) if dists.size else np.zeros(dists.shape, np.int64)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(dists, order, 1)


def exact_topk(q: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over prepared rows `x`, tiled over x so a block stays small."""
    best_ids = np.zeros((len(q), 0), np.uint64)
    best_d = np.zeros((len(q), 0), np.float32)
    for lo in range(0, len(x), EXACT_TILE_ROWS):
        d = distances(q, x[lo : lo + EXACT_TILE_ROWS], metric)
        tile_ids = np.broadcast_to(ids[lo : lo + EXACT_TILE_ROWS], d.shape)
        best_ids, best_d = merge_topk(np.hstack([best_ids, tile_ids]), np.hstack([best_d, d]), k)
    return best_ids, best_d
