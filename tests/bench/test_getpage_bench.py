"""Smoke test of bench/getpage.py's Strata half, the in-process pread floor and
the in-process SQLite peer: a few pages, short deep chains, fractions of a
second per row. No timing assertions: every reader must return pages, the
chains must span layers, and every Strata row gets a ratio to the floor."""

from __future__ import annotations

from pathlib import Path

from bench.getpage import (
    DEEP_DEFAULT,
    DEEP_UNCACHED,
    PREAD,
    PREAD_OPEN,
    UNARY,
    GetPageConfig,
    Measurement,
    ReadRow,
    access_plan,
    getpages_verdict,
    postgres_plan,
    peer_pages,
    render_markdown,
    run_pread,
    run_sqlite,
    run_strata,
    sort_rows,
)

CONFIG = GetPageConfig(hot_pages=16, deep_pages=8, depth=5, batches=(1, 4), window=4, duration_s=0.2)


def test_getpage_bench_strata_rows_are_sane(tmp_path: Path) -> None:
    results = run_strata(CONFIG, tmp_path, log=False)

    assert set(results.workloads) == {"hot", "deep", DEEP_UNCACHED, DEEP_DEFAULT}
    assert results.deep_layer_files >= CONFIG.depth + 1, "each patch round is its own L0 layer file"
    expected = [(w, b) for w in ("hot", "deep", DEEP_UNCACHED, DEEP_DEFAULT) for b in (UNARY, *CONFIG.batches)]
    assert [(row.workload, row.batch) for row in results.rows] == expected
    assert results.windows == {1: 4, 4: 4}
    for row in results.rows:
        assert row.system == "Strata"
        m = row.measurement
        assert m.pages == len(m.latencies_s) * row.pages_per_request
        assert m.seconds > 0 and row.pages_per_s > 0
        assert 0 < row.p50_ms <= row.p99_ms

    pages = peer_pages(CONFIG)
    pread = run_pread(CONFIG, tmp_path, pages)
    assert [(row.workload, row.system, row.batch) for row in pread.rows] == [
        (w, s, b) for w in ("hot", "deep") for b in CONFIG.batches for s in (PREAD, PREAD_OPEN)
    ]
    for row in pread.rows:
        assert row.measurement.pages == len(row.measurement.latencies_s) * row.batch
        assert row.pages_per_s > 0 and 0 < row.p50_ms <= row.p99_ms

    sqlite = run_sqlite(CONFIG, tmp_path, pages)
    assert [(row.workload, row.batch) for row in sqlite.rows] == [(w, b) for w in ("hot", "deep") for b in CONFIG.batches]
    results.rows += pread.rows + sqlite.rows
    sort_rows(results.rows)
    markdown = render_markdown(results, CONFIG)
    assert "| hot | Strata | GetPage (unary) | 1 (unary) | 1 |" in markdown
    assert "default compaction and image-layer settings" in results.workloads[DEEP_DEFAULT]
    assert "| deep | SQLite |" in markdown
    assert f"| hot | {PREAD} |" in markdown
    strata_lines = [line for line in markdown.splitlines() if line.startswith("| ") and line.split(" | ")[1] == "Strata"]
    assert len(strata_lines) == len(expected)
    for line in strata_lines:
        floor_ratio = line.split(" | ")[8]
        assert floor_ratio.endswith("x"), f"no ratio to the pread floor: {line}"
    assert "pipelining depth" in markdown
    assert markdown.count("Target (GetPages >= 50,000 pages/s") == 4
    assert "deep (page-cache hits" in markdown, "the cached deep verdict says it measures cache hits"


def test_access_plan_is_shared_and_deterministic() -> None:
    plan = access_plan(CONFIG, 16)
    assert plan == access_plan(CONFIG, 16)
    assert [size for size, _ in plan] == [UNARY, 1, 4]
    for size, key_sets in plan:
        assert all(len(keys) == max(size, 1) and len(set(keys)) == len(keys) for keys in key_sets)


def _row(workload: str, batch: int, pages_per_s: float, concurrency: int = 4, system: str = "Strata") -> ReadRow:
    return ReadRow(workload, system, "reader", batch, Measurement((0.001,) * 10, int(pages_per_s), 1.0), concurrency)


def test_getpages_verdict_met_and_not_met() -> None:
    met = getpages_verdict("hot", [_row("hot", 16, 40_000), _row("hot", 128, 60_000)], cpus=2)
    assert "**met**: best 60,000 pages/s at batch 128" in met and "1.2x of the target" in met
    missed = getpages_verdict(DEEP_UNCACHED, [_row(DEEP_UNCACHED, 16, 500), _row(DEEP_UNCACHED, 128, 49_999)], cpus=2)
    assert "**not met**: best 49,999 pages/s" in missed
    assert "cold reads" in missed, "the verdict says what its reads are"


def test_postgres_is_compared_at_the_strata_readers_concurrency() -> None:
    # unary GetPage: 1 in flight; GetPages: the stream's window for each batch size.
    assert postgres_plan(CONFIG, 16) == [(1, 1), (1, 4), (4, 4)]
    default = GetPageConfig()
    assert postgres_plan(default, 1024) == [(1, 1), (1, 8), (16, 8), (128, 4)]
    from bench.getpage import ratios, GetPageResults

    results = GetPageResults(rows=[
        _row("hot", 16, 80_000, concurrency=8),
        _row("hot", 16, 10_000, concurrency=1, system="PostgreSQL 15"),
        _row("hot", 16, 40_000, concurrency=8, system="PostgreSQL 15"),
    ])
    assert ratios(results, results.rows[0])[-1] == "2x", "divided by the 8-client row, not the 1-client one"
