"""gpu/xp.py and gpu/kmeans.py on NumPy (the same code path CuPy runs)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from gpu import Device, assign, kmeans, train_batched
from gpu.synthetic import clustered
from strata.errors import FailedPrecondition, InvalidArgument


def test_device_selection() -> None:
    assert Device.get("cpu").xp is np
    with pytest.raises(InvalidArgument, match="device='tpu'"):
        Device.get("tpu")
    if importlib.util.find_spec("cupy") is None:
        assert Device.get("auto").name == "cpu"
        with pytest.raises(FailedPrecondition, match="cupy does not import"):
            Device.get("gpu")


def test_segment_sum_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    labels = rng.integers(0, 9, size=500)
    labels[labels == 4] = 5  # an empty segment
    want = np.stack([x[labels == j].sum(axis=0) for j in range(9)])
    np.testing.assert_allclose(Device.get("cpu").segment_sum(x, labels, 9), want, rtol=1e-5, atol=1e-5)


def test_kmeans_finds_well_separated_clusters() -> None:
    x = clustered(6000, 16, clusters=12, seed=4, spread=0.1)
    dev = Device.get("cpu")
    for init in ("random", "kmeans++"):
        c, stats = kmeans(dev, x, 12, niter=15, init=init, seed=1, tol=0)
        labels, dist = assign(dev, x, c, want_dist=True)
        assert c.shape == (12, 16) and 1 <= stats.iterations <= 15
        if stats.converged:  # a fixed point: one more step would change nothing
            again, _ = kmeans(dev, x, 12, niter=stats.iterations + 3, init=init, seed=1, tol=0)
            np.testing.assert_array_equal(again, c)
        if init == "kmeans++":
            # Every centre found: each row sits at noise distance (16 · 0.1² = 0.16) from its centroid.
            assert float(dist.mean()) < 0.2
            assert len(np.unique(labels)) == 12
        want = ((x[:, None, :] - c[None]) ** 2).sum(axis=2)
        np.testing.assert_array_equal(labels, want.argmin(axis=1))
        np.testing.assert_allclose(dist, want.min(axis=1), rtol=1e-3, atol=1e-3)


def test_tiles_smaller_than_the_data_give_the_same_labels() -> None:
    x = clustered(3000, 8, clusters=5, seed=2)
    c = x[:40].copy()
    big = Device.get("cpu")
    small = Device("cpu", np, tile_bytes=4 * (2 * 40 + 8) * 256)  # 256-row tiles
    assert small.tile_rows(40, 8) == 256
    np.testing.assert_array_equal(assign(big, x, c)[0], assign(small, x, c)[0])


def test_batched_training_equals_training_one_by_one() -> None:
    a = clustered(900, 8, clusters=6, seed=5)
    b = clustered(400, 8, clusters=6, seed=6)  # shorter: padded and masked in the batch
    dev = Device.get("cpu")
    inits = [a[:6].copy(), b[:6].copy()]
    # tol=0: a batch stops only when all its collections settle, so with a
    # tolerance one that settled first could take more steps than alone.
    together, _ = train_batched(dev, [a, b], 6, niter=8, init_centroids=inits, tol=0)
    alone = [train_batched(dev, [s], 6, niter=8, init_centroids=[i], tol=0)[0][0] for s, i in zip((a, b), inits)]
    for t, s in zip(together, alone):
        np.testing.assert_allclose(t, s, rtol=1e-4, atol=1e-4)
    with pytest.raises(InvalidArgument, match="one dim"):
        train_batched(dev, [a, b[:, :4]], 6)


def test_tolerance_stops_once_few_rows_move() -> None:
    x = clustered(10000, 16, clusters=40, seed=7, spread=1.0)  # overlapping clusters: rows keep moving; all are the sample
    dev = Device.get("cpu")
    moved: list[int] = []
    full, full_stats = kmeans(dev, x, 64, niter=30, seed=3, tol=0)
    early, early_stats = kmeans(dev, x, 64, niter=30, seed=3, tol=0.02, progress=lambda ev, f: moved.append(f["moved"]))
    assert early_stats.converged and early_stats.iterations < full_stats.iterations
    # Every step it took moved at least 2% of the rows; the one it stopped at
    # (not reported: its centroids were not computed) moved fewer.
    assert moved[0] == len(x) and all(m >= 0.02 * len(x) for m in moved)
    # Nearly as tight as running on: the steps it skipped gain under 1%.
    assert early_stats.inertia[0] <= full_stats.inertia[0] * 1.01
    with pytest.raises(InvalidArgument, match="tol=1.5"):
        kmeans(dev, x, 8, tol=1.5)
