"""Smoke test of bench/wal_append.py's Strata half against a started walservice:
1 and 8 writers, 1 and 16 records per Append, half a second each, no PostgreSQL.
No timing assertions: the rows must be sane."""

from __future__ import annotations

import math
from pathlib import Path

from bench.wal_append import WalAppendResults, render_markdown, run_benchmark
from tests.env import StrataEnv

CONFIGS = [(1, 1), (8, 1), (1, 16), (8, 16)]
ROW_KEYS = {
    "system", "writers", "batch", "commits", "seconds", "commits_per_s", "records_per_s", "mb_per_s",
    "p50_ms", "p99_ms", "machine_cpu_busy", "server_cores", "client_cores",
}


def test_wal_append_bench_strata_rows_are_sane(strata_env: StrataEnv, tmp_path: Path) -> None:
    walservice = strata_env.walservice()

    results = run_benchmark(
        CONFIGS, duration_s=0.5, warmup_s=0.1, work_dir=tmp_path, target=walservice.address, postgres=False, log=False
    )

    assert [(m.writers, m.batch) for m in results.strata] == CONFIGS
    assert results.postgres == []
    for m in results.strata:
        row = m.as_dict()
        assert set(row) == ROW_KEYS
        assert row["system"] == "Strata"
        assert row["commits"] > 0 and len(m.latencies_s) == row["commits"]
        for key in ("commits_per_s", "records_per_s", "mb_per_s", "p50_ms", "p99_ms"):
            assert row[key] > 0 and math.isfinite(row[key]), (key, row)
        assert row["p50_ms"] <= row["p99_ms"]
        assert row["records_per_s"] == row["commits_per_s"] * row["batch"]

    markdown = render_markdown(results, duration_s=0.5, warmup_s=0.1)
    assert "| 8 | 16 |" in markdown
    assert f"an existing walservice at {walservice.address}" in markdown


def test_wal_append_bench_against_a_running_cluster(strata_env: StrataEnv, tmp_path: Path) -> None:
    """R5: `--target A,B,C` benchmarks an already running cluster."""
    from bench.wal_append import build_parser

    nodes = strata_env.walservice_cluster(3)
    target = ",".join(n.address for n in nodes)
    assert build_parser().parse_args(["--target", target]).target == target
    results = run_benchmark([(1, 1), (8, 1)], duration_s=0.5, warmup_s=2.0, work_dir=tmp_path, target=target, postgres=False, log=False)
    # (The warmup covers each fresh timeline's first election.)
    assert [m.writers for m in results.strata] == [1, 8]
    assert all(m.commits > 0 for m in results.strata)
    assert f"an existing walservice cluster at {target}" in render_markdown(results, duration_s=0.5, warmup_s=2.0)


def test_wal_append_bench_renders_without_postgres() -> None:
    results = WalAppendResults(notes=["PostgreSQL could not be started, so it is missing from this table: test"])
    markdown = render_markdown(results, duration_s=1, warmup_s=0)
    assert "could not be started" in markdown


def test_replication_bench_quick_rows_are_sane(tmp_path: Path) -> None:
    """bench/wal_append.py --replication in miniature: 1 node vs 3 nodes at 1 and 8
    writers, then a leader kill; the rows are sane and the stall was measured."""
    from bench.wal_append import render_replication, run_replication

    results = run_replication((1, 8), duration_s=0.5, warmup_s=0.1, work_dir=tmp_path, failover_s=2.0, log=False)

    assert [m.writers for m in results.single] == [1, 8] == [m.writers for m in results.cluster]
    for m in results.single + results.cluster:
        assert m.commits > 0 and m.p50_ms <= m.p99_ms
    f = results.failover
    assert f is not None and f.acked_before > 0 and f.acked_after > 0
    assert 0 < f.stall_s < math.inf
    markdown = render_replication(results, duration_s=0.5, warmup_s=0.1)
    assert "| 8 |" in markdown and "Leader killed" in markdown


def test_target_verdict_met_and_not_met() -> None:
    from bench.wal_append import Measurement, target_verdict

    def results(strata_commits: int, postgres_commits: int) -> WalAppendResults:
        return WalAppendResults(
            strata=[Measurement("Strata", 64, 1, strata_commits, 1.0), Measurement("Strata", 64, 16, strata_commits, 1.0)],
            postgres=[Measurement("PostgreSQL", 64, 1, postgres_commits, 1.0), Measurement("PostgreSQL", 64, 16, postgres_commits, 1.0)],
        )

    met = target_verdict(results(30_000, 20_000))
    assert met.count(": met") == 2 and "ratio 1.50" in met
    missed = target_verdict(results(15_000, 20_000))
    assert missed.count(": not met") == 2 and "ratio 0.75" in missed
    alone = target_verdict(WalAppendResults(strata=[Measurement("Strata", 64, 1, 1000, 1.0)]))
    assert "no PostgreSQL number to compare with" in alone
