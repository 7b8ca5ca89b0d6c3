"""Smoke test of bench/attach.py: a tiny tenant, attached twice on empty
pageservers. No timing assertions: the rows must be sane."""

from __future__ import annotations

from pathlib import Path

from bench.attach import render_markdown, run

SIZE = 256 * 1024  # 32 pages
SAMPLES = 2


def test_attach_bench_rows_are_sane(tmp_path: Path) -> None:
    results = run(SIZE, SAMPLES, tmp_path, log=False)
    assert results.tenant_bytes > 0 and results.tenant_objects >= 3  # tenant.json, generation, index, layers
    strata, download, start = results.rows
    for row in results.rows:
        assert len(row.samples_s) == SAMPLES and all(s > 0 for s in row.samples_s)
    assert strata.system.startswith("Strata") and download.system.startswith("peer")
    markdown = render_markdown(results, SAMPLES)
    assert "| Strata: AttachTenant + first GetPage" in markdown
