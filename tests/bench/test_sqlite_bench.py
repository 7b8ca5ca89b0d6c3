"""Smoke test of bench/sqlite.py: a tiny workload on both systems, one round. No timing
assertions: both systems must answer alike (run() checks) and the table must be sane."""

from __future__ import annotations

from pathlib import Path

from bench.sqlite import LOCAL, PHASES, STRATA, SqliteBenchConfig, SqliteResults, render_markdown, run, warm_verdict


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
    assert "| **total, best round** |" in markdown and "Target: warm queries at most 1.5x" in markdown


def test_total_is_one_rounds_sum_not_the_sum_of_phase_bests() -> None:
    results = SqliteResults(seconds={(LOCAL, p): 1.0 for p in PHASES} | {(STRATA, p): 1.0 for p in PHASES})
    assert results.total(STRATA) == len(PHASES)
    # Phase bests from different rounds add up to 5.0; no single round was that fast.
    results.round_totals = {STRATA: [7.0, 6.5], LOCAL: [5.5]}
    assert results.total(STRATA) == 6.5 and results.total(LOCAL) == 5.5


def test_warm_verdict_met_and_not_met() -> None:
    assert warm_verdict(1.2).endswith("1.20x, met.")
    assert warm_verdict(1.51).endswith("1.51x, not met.")
