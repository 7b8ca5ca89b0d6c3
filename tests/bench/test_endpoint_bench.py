"""bench/endpoint.py: its verdicts both ways, its process accounting, and a tiny run of
the Strata side end to end (real walservice, pageserver and proxy). No timing assertions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.endpoint import (
    INSERT,
    SELECT,
    STRATA,
    EndpointBenchConfig,
    IdleCost,
    build_parser,
    descendants,
    idle_verdict,
    render_markdown,
    rss_bytes,
    run,
    wake_verdict,
)
from bench.report import partial_run_reasons


def test_wake_verdict_met_and_not_met() -> None:
    assert wake_verdict(31.4).endswith("31.4 ms, met.")
    assert wake_verdict(50.0).endswith("50.0 ms, not met.")


def test_idle_verdict_counts_processes_and_memory() -> None:
    base = dict(databases=1000, processes_before=5, rss_before=100 << 20)
    assert idle_verdict(IdleCost(**base, processes_after=5, rss_after=(100 << 20) + 1000 * 10 * 1024)).endswith("met.")
    assert "not met" in idle_verdict(IdleCost(**base, processes_after=5, rss_after=(100 << 20) + 1000 * 60 * 1024))
    assert "not met" in idle_verdict(IdleCost(**base, processes_after=6, rss_after=100 << 20))


def test_descendants_and_rss_see_a_child_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in descendants(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in descendants(os.getpid())
        assert rss_bytes([child.pid]) > 1 << 20
        assert rss_bytes([2**22 + 12345]) == 0  # a pid that is gone (or never was) counts nothing
    finally:
        child.kill()
        child.wait()


def test_only_the_default_command_is_a_full_run() -> None:
    parser = build_parser()
    assert partial_run_reasons(parser, parser.parse_args([])) == []
    assert partial_run_reasons(parser, parser.parse_args(["--quick"])) == ["--quick"]
    assert partial_run_reasons(parser, parser.parse_args(["--clients", "1,8"])) == ["--clients 1,8"]


def test_a_tiny_run_wakes_serves_and_counts_idle_databases(tmp_path: Path) -> None:
    cfg = EndpointBenchConfig(wakes=2, pg_starts=1, clients=(1, 4), seconds=0.3, warmup_s=0.1, idle_databases=6, idle_woken=2)
    results = asyncio.run(run(cfg, tmp_path, postgres=False))
    assert len(results.wake_ms) == 2 and all(ms > 0 for ms in results.wake_ms)
    assert len(results.warm_ms) == 10
    by_key = {(row.workload, row.clients): row for row in results.throughput}
    assert set(by_key) == {(w, n) for w in (SELECT, INSERT) for n in (1, 4)}
    assert all(row.per_second[STRATA] > 0 for row in results.throughput)
    idle = results.idle
    assert idle.databases == 6 and idle.woken == 2
    assert idle.processes_added == 0  # every woken compute was suspended again
    assert idle.disk_after > idle.disk_before
    markdown = render_markdown(results, cfg)
    assert "| Strata: point select on a suspended database (wake) | 2 |" in markdown
    assert "Target: wake p50 under 50 ms" in markdown and "Target: no process" in markdown
