"""Smoke test of bench/branch.py's Strata half: tiny ancestors, a few branches,
real processes on loopback. No timing assertions: the rows must be sane."""

from __future__ import annotations

from pathlib import Path

from bench.branch import BranchResults, render_markdown, run_strata

SIZES = [64 * 1024, 256 * 1024]  # 8 and 32 pages
SAMPLES = 5


def test_branch_bench_strata_rows_are_sane(tmp_path: Path) -> None:
    results = run_strata(SIZES, SAMPLES, tmp_path, pages_per_append=8, appends_in_flight=2, log=False)

    assert [row.size_bytes for row in results.branch_rows] == SIZES
    for row in results.branch_rows:
        assert row.system.startswith("Strata")
        assert len(row.samples_s) == SAMPLES
        assert all(0 < s < 30 for s in row.samples_s)
        assert 0 < row.p50_ms <= row.p99_ms
        assert row.data_bytes > 0, "after Compact the ancestor lives in layer files"
    loads = [row for row in results.load_rows if row.system.startswith("Strata: Append")]
    assert [row.size_bytes for row in loads] == SIZES
    assert all(row.seconds > 0 for row in loads)

    markdown = render_markdown(results, samples=SAMPLES, peer_samples=0)
    assert "| 64 KiB | Strata CreateTimeline" in markdown
    assert "| 256 KiB | Strata CreateTimeline" in markdown


def test_branch_bench_renders_a_missing_peer_note() -> None:
    results = BranchResults(notes=["PostgreSQL could not be started, so it is missing here: test"])
    assert "could not be started" in render_markdown(results, samples=1, peer_samples=1)


def test_branch_verdict_met_and_not_met() -> None:
    from bench.branch import MIB, branch_verdict

    met = branch_verdict([(MIB, 3.1), (100 * MIB, 3.6), (1024 * MIB, 3.8)])
    assert "**met**" in met and "under 5 ms at every size" in met
    slow = branch_verdict([(MIB, 3.1), (1024 * MIB, 5.2)])
    assert "**not met**" in slow and "at or over 5 ms at: 1 GiB" in slow
    growing = branch_verdict([(MIB, 1.0), (1024 * MIB, 4.5)])
    assert "**not met**" in growing and "4.5x; flat means at most 2x" in growing
