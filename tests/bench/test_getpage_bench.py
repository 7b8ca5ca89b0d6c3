"""Smoke test of bench/getpage.py's Strata half (and the in-process SQLite peer):
a few pages, short deep chains, fractions of a second per row. No timing
assertions: every reader must return pages, and the chains must span layers."""

from __future__ import annotations

from pathlib import Path

from bench.getpage import UNARY, GetPageConfig, peer_pages, render_markdown, run_sqlite, run_strata

CONFIG = GetPageConfig(hot_pages=16, deep_pages=8, depth=5, batches=(1, 4), window=4, duration_s=0.2)


def test_getpage_bench_strata_rows_are_sane(tmp_path: Path) -> None:
    results = run_strata(CONFIG, tmp_path, log=False)

    assert set(results.workloads) == {"hot", "deep"}
    assert results.deep_layer_files >= CONFIG.depth + 1, "each patch round is its own L0 layer file"
    expected = [(w, b) for w in ("hot", "deep") for b in (UNARY, *CONFIG.batches)]
    assert [(row.workload, row.batch) for row in results.rows] == expected
    for row in results.rows:
        assert row.system == "Strata"
        m = row.measurement
        assert m.pages == len(m.latencies_s) * row.pages_per_request
        assert m.seconds > 0 and row.pages_per_s > 0
        assert 0 < row.p50_ms <= row.p99_ms

    sqlite = run_sqlite(CONFIG, tmp_path, peer_pages(CONFIG))
    assert [(row.workload, row.batch) for row in sqlite.rows] == [(w, b) for w in ("hot", "deep") for b in CONFIG.batches]
    results.rows += sqlite.rows
    markdown = render_markdown(results, CONFIG)
    assert "| hot | Strata | GetPage (unary) | 1 (unary) |" in markdown
    assert "| deep | SQLite |" in markdown
