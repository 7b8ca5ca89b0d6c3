"""Clustered synthetic vectors for tests and benchmarks (seeded, float32)."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 0.25, chunk: int = 262144) -> np.ndarray:
    """n rows around `clusters` Gaussian centres (unit normal centres, per-row
    noise of std `spread`), generated in chunks to bound temporaries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        out[lo : lo + m] = centres[rng.integers(clusters, size=m)]
        out[lo : lo + m] += rng.normal(scale=spread, size=(m, dim)).astype(np.float32)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """ann-benchmarks recall@k: the share of the true k nearest that were found."""
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth))
    return hits / (len(truth) * k)
