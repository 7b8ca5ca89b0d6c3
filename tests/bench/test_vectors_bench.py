"""Smoke test of bench/vectors.py at a tiny size: the rows must be sane (no timing assertions)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.vectors import NPROBES, render_markdown, run_layers, run_set


def test_vectors_bench_rows_are_sane(tmp_path: Path) -> None:
    has_faiss = importlib.util.find_spec("faiss") is not None
    s = run_set(3000, 16, 16, 30, niter=5, device="cpu", log=False)
    assert [r.nprobe for r in s.strata.searches] == list(NPROBES)
    assert all(0.9 <= r.recall <= 1.0 and r.qps > 0 for r in s.strata.searches)
    assert s.strata.build_s > 0 and s.strata.mean_list == 3000 / 16 and s.lloyd_step_s > 0
    assert (s.faiss is not None) == has_faiss
    layers = run_layers(600, 16, 6, tmp_path, log=False)
    assert layers.n == 600 and layers.build_s > 0 and layers.upsert_s > 0
    md = render_markdown([s], layers, 5, None)
    assert "| 3,000 x 16 | 16 | Strata (cpu, NumPy) |" in md and "From layers: 600 x 16" in md


def test_build_verdict_met_and_not_met() -> None:
    from bench.vectors import build_verdict

    assert ": met (" in build_verdict(0.4, 0.5, 0.99, 0.995, 8)
    assert ": not met (" in build_verdict(0.6, 0.5, 0.99, 0.99, 8), "slower"
    assert ": not met (" in build_verdict(0.4, 0.5, 0.95, 0.99, 8), "worse recall"
