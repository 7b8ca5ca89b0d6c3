"""Smoke test of bench/storage_cost.py: a tiny base, a few branches, real
processes on loopback. No timing assertions: the byte counts must be sane."""

from __future__ import annotations

from pathlib import Path

from bench.storage_cost import TARGET_RATIO, render_markdown, run

SIZE = 512 * 1024  # 64 pages
BRANCHES = 4


def test_storage_cost_rows_are_sane(tmp_path: Path) -> None:
    results = run(SIZE, BRANCHES, 0.05, tmp_path, log=False)
    strata, copies, sqlite = results.rows
    assert strata.base_bytes > 0
    # Each branch adds its changed pages (and an index), far less than a copy.
    assert strata.base_bytes < strata.total_bytes < strata.base_bytes * TARGET_RATIO
    assert copies.total_bytes == strata.base_bytes * (BRANCHES + 1)
    assert sqlite.base_bytes >= SIZE and sqlite.total_bytes >= sqlite.base_bytes * (BRANCHES + 1)
    markdown = render_markdown(results)
    assert "| Strata: remote storage" in markdown and "target is met" in markdown


def test_cost_verdict_met_and_not_met() -> None:
    from bench.storage_cost import TARGET_RATIO, cost_verdict

    assert cost_verdict(TARGET_RATIO - 0.01).endswith("target is met.")
    assert cost_verdict(TARGET_RATIO).endswith("target is not met.")
