"""strata/vectors/kernels.py: matrix-multiply distances against float64."""

from __future__ import annotations

import numpy as np

from strata.vectors.kernels import distances


def test_distances_match_float64() -> None:
    rng = np.random.default_rng(3)
    x, q = rng.normal(size=(30, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    want = ((q[:, None, :].astype(np.float64) - x[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(distances(q, x, "l2"), want, rtol=1e-4, atol=1e-4)
