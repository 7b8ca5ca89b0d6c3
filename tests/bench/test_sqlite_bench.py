"""Smoke test of bench/sqlite.py: a tiny workload on both systems, one round. No timing
assertions: both systems must answer alike (run() checks) and the table must be sane."""

from __future__ import annotations

from pathlib import Path

from bench.sqlite import LOCAL, PHASES, STRATA, SqliteBenchConfig, render_markdown, run


def test_sqlite_bench_runs_both_systems(tmp_path: Path) -> None:
    cfg = SqliteBenchConfig(users=300, small_txns=5, lookups=20, rounds=1)
    results = run(cfg, tmp_path)
    for system in (LOCAL, STRATA):
        for phase in PHASES:
            assert results.seconds[(system, phase)] > 0
    assert results.db_pages > 0
    assert "misses=" in results.cache_stats
    markdown = render_markdown(results, cfg)
    for phase in PHASES:
        assert f"| {phase} |" in markdown
    assert "| **total** |" in markdown and "Target: warm queries at most 1.5x" in markdown
