"""SQLite on Strata pages vs the same SQLite on a local file, in one run.

    python -m bench.sqlite                  # 20,000 users / 80,000 orders; BENCHMARKS.md section `sqlite`
    python -m bench.sqlite --quick          # 2,000 users; BENCHMARKS.md untouched

The same apsw build of SQLite runs the same statements on both systems:

- **local file**: a database file in the work directory, `journal_mode=WAL`,
  `synchronous=FULL` (every commit fsyncs the WAL), in this process.
- **Strata**: `compute_shim.connect_sqlite` on a fresh timeline of a walservice and a
  pageserver started by the bench (defaults), over loopback gRPC: every commit is one
  conditional Append, acknowledged after the walservice's fdatasync.

Both use SQLite's default page cache (`cache_size=-2000`, 2 MB) and the tenant's page
size (`--page-size`, 4096). Phases, each timed on both:

1. **workload**: bench/sqlite_workload.py (tables, indexes, bulk inserts, updates,
   deletes, ALTER TABLE, VACUUM), one transaction per step;
2. **small transactions**: `--small-txns` single-row UPDATE transactions, one commit each;
3. **queries, cold**: a new connection (Strata: also a new Client, so an empty compute
   page cache; local: the OS page cache stays warm, nothing is dropped) runs the query
   set: every query of the workload module plus `--lookups` point lookups by primary
   key and by a unique index;
4. **queries, warm**: the same query set again on that connection;
5. **queries, warm, 64-page SQLite cache**: again, with SQLite's own cache cut to 64
   pages, so most page reads leave SQLite: the local file's come from the OS page
   cache, Strata's from the compute page cache.

The answers of every query must be equal on both systems (the bench checks).
Results go into BENCHMARKS.md (section `sqlite`). Target: warm queries at most 1.5x
the local file.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from bench import sqlite_workload as wl
from bench.branch import exit_on_sigterm, load_average_note, work_directory
from bench.report import add_work_dir_arguments, add_write_argument, partial_run_reasons, publish_section
from compute_shim import Client, connect_sqlite
from tests.env import StrataEnv

TARGET_WARM_RATIO = 1.5
SMALL_CACHE = "queries, warm, 64-page SQLite cache"
PHASES = ("workload", "small transactions", "queries, cold", "queries, warm", SMALL_CACHE)
LOCAL = "local file"
STRATA = "Strata"


@dataclass(frozen=True)
class SqliteBenchConfig:
    users: int = 20_000
    small_txns: int = 200
    lookups: int = 2_000
    page_size: int = 4096
    seed: int = 7
    rounds: int = 3  # each round runs both systems afresh; the table keeps each phase's best


@dataclass
class SqliteResults:
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # (system, phase) -> seconds
    # system -> each round's whole run (its phases summed), when rounds were combined
    round_totals: dict[str, list[float]] = field(default_factory=dict)
    db_pages: int = 0
    cache_stats: str = ""
    notes: list[str] = field(default_factory=list)

    def ratio(self, phase: str) -> float:
        return self.seconds[(STRATA, phase)] / self.seconds[(LOCAL, phase)]

    def total(self, system: str) -> float:
        """The best single round's total: one round's phases summed (not the sum of
        each phase's best, which may come from different rounds)."""
        if self.round_totals.get(system):
            return min(self.round_totals[system])
        return sum(self.seconds[(system, p)] for p in PHASES)


def query_set(db: apsw.Connection, cfg: SqliteBenchConfig) -> list[object]:
    """The workload's queries plus point lookups; returns every answer (for comparing systems)."""
    rng = random.Random(cfg.seed)
    out: list[object] = [wl.answers(db)]
    by_id = db.cursor()
    for _ in range(cfg.lookups):
        uid = rng.randrange(1, cfg.users + 1)
        out.append(by_id.execute("SELECT id, full_name, tier FROM users WHERE id = ?", (uid,)).fetchall())
        email = f"u{rng.randrange(1, cfg.users + 1):05d}@example.com"
        out.append(by_id.execute("SELECT id, score FROM users WHERE email = ?", (email,)).fetchall())
    return out


def small_transactions(db: apsw.Connection, cfg: SqliteBenchConfig) -> None:
    rng = random.Random(cfg.seed + 1)
    for _ in range(cfg.small_txns):
        db.execute("UPDATE orders SET amount = amount + 1 WHERE id = ?", (rng.randrange(1, cfg.users * 4 + 1),))


def timed(results: SqliteResults, system: str, phase: str, fn: Callable[[], object]) -> object:
    started = time.perf_counter()
    value = fn()
    results.seconds[(system, phase)] = time.perf_counter() - started
    print(f"  {system:<10} {phase:<20} {results.seconds[(system, phase)] * 1000:9.1f} ms", flush=True)
    return value


def run_local(cfg: SqliteBenchConfig, work_dir: Path, results: SqliteResults) -> list[object]:
    path = work_dir / "local.db"

    def connect() -> apsw.Connection:
        db = apsw.Connection(str(path))
        for pragma in (f"PRAGMA page_size={cfg.page_size}", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"):
            db.execute(pragma).fetchall()  # one at a time: apsw stops a script at a statement's first row
        settings = (db.execute("PRAGMA journal_mode").fetchone()[0], db.execute("PRAGMA synchronous").fetchone()[0])
        assert settings == ("wal", 2), f"the local peer must run in WAL mode with synchronous=FULL, got {settings}"
        return db

    db = connect()
    timed(results, LOCAL, "workload", lambda: wl.run_workload(db, cfg.users))
    timed(results, LOCAL, "small transactions", lambda: small_transactions(db, cfg))
    db.close()
    db = connect()
    cold = timed(results, LOCAL, "queries, cold", lambda: query_set(db, cfg))
    warm = timed(results, LOCAL, "queries, warm", lambda: query_set(db, cfg))
    db.execute("PRAGMA cache_size=64")
    small = timed(results, LOCAL, SMALL_CACHE, lambda: query_set(db, cfg))
    assert cold == warm == small
    db.close()
    return cold  # type: ignore[return-value]


def run_strata(cfg: SqliteBenchConfig, work_dir: Path, results: SqliteResults) -> list[object]:
    env = StrataEnv(work_dir / "strata")
    try:
        wal = env.walservice()
        ps = env.pageserver(wal)
        with Client(pageserver=ps.address, walservice=wal.address) as client:
            tenant = client.create_tenant(page_size=cfg.page_size).tenant_id
            timeline = client.create_timeline(tenant_id=tenant).timeline_id
            db = connect_sqlite(client, tenant, timeline)
            timed(results, STRATA, "workload", lambda: wl.run_workload(db, cfg.users))
            timed(results, STRATA, "small transactions", lambda: small_transactions(db, cfg))
            results.db_pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.close()
        with Client(pageserver=ps.address, walservice=wal.address) as fresh:
            db = connect_sqlite(fresh, tenant, timeline)
            cold = timed(results, STRATA, "queries, cold", lambda: query_set(db, cfg))
            warm = timed(results, STRATA, "queries, warm", lambda: query_set(db, cfg))
            db.execute("PRAGMA cache_size=64")
            small = timed(results, STRATA, SMALL_CACHE, lambda: query_set(db, cfg))
            results.cache_stats = str(fresh.page_cache.stats())
            db.close()
        assert cold == warm == small
        return cold  # type: ignore[return-value]
    finally:
        env.teardown()


def run(cfg: SqliteBenchConfig, work_dir: Path) -> SqliteResults:
    """`cfg.rounds` rounds, each both systems from scratch; each phase's best round is kept
    (the machine is shared: the best round is the least disturbed one)."""
    rounds: list[SqliteResults] = []
    for i in range(cfg.rounds):
        print(f"round {i + 1} of {cfg.rounds}", flush=True)
        results = SqliteResults()
        round_dir = work_dir / f"round{i}"
        round_dir.mkdir()
        local = run_local(cfg, round_dir, results)
        strata = run_strata(cfg, round_dir, results)
        if local != strata:
            raise AssertionError("Strata and the local file answered the query set differently")
        rounds.append(results)
    best = SqliteResults(db_pages=rounds[-1].db_pages, cache_stats=rounds[-1].cache_stats)
    best.round_totals = {system: [r.total(system) for r in rounds] for system in (LOCAL, STRATA)}
    spread: dict[str, float] = {}
    for key in rounds[0].seconds:
        samples = [r.seconds[key] for r in rounds]
        best.seconds[key] = min(samples)
        spread[key[0]] = max(spread.get(key[0], 0.0), max(samples) / min(samples) - 1)
    best.notes.append(
        f"Best of {cfg.rounds} rounds per phase and system; the worst round of a phase was up to "
        f"{spread.get(LOCAL, 0) * 100:.0f}% slower for the local file, {spread.get(STRATA, 0) * 100:.0f}% for Strata."
    )
    return best


def warm_verdict(ratio: float) -> str:
    """The target line: warm queries at most TARGET_WARM_RATIO x the local file."""
    verdict = "met" if ratio <= TARGET_WARM_RATIO else "not met"
    return f"Target: warm queries at most {TARGET_WARM_RATIO}x the local file: {ratio:.2f}x, {verdict}."


def render_markdown(results: SqliteResults, cfg: SqliteBenchConfig) -> str:
    lines = [
        f"The same SQLite (apsw, SQLite {apsw.sqlite_lib_version()}) workload on a local file (`journal_mode=WAL`, "
        "`synchronous=FULL`) and on Strata (`compute_shim.connect_sqlite`: one conditional append per commit on the "
        f"connection's AppendStream over loopback gRPC), in one run: {cfg.users:,} users and {cfg.users * 4:,} orders, {cfg.page_size}-byte pages "
        f"({results.db_pages:,} pages at the end), SQLite's default 2 MB page cache on both. Phases: the workload of "
        "bench/sqlite_workload.py (one transaction per step: tables, indexes, bulk inserts, updates, deletes, ALTER "
        f"TABLE, VACUUM), {cfg.small_txns} single-row UPDATE transactions, then a query set (the workload's queries "
        f"and {cfg.lookups:,} point lookups each by primary key and by a unique index) on a new connection "
        "(Strata: a new Client too, so an empty compute page cache; local: the OS page cache stays warm) and again "
        "on that warm connection, then once more with SQLite's own cache cut to 64 pages (page reads leave SQLite: "
        "the local file's hit the OS page cache, Strata's the compute page cache). Both systems' answers are checked equal.",
        "",
        "| phase | local file ms | Strata ms | Strata ÷ local |",
        "| --- | ---: | ---: | ---: |",
    ]
    for phase in PHASES:
        lines.append(
            f"| {phase} | {results.seconds[(LOCAL, phase)] * 1000:,.1f} | {results.seconds[(STRATA, phase)] * 1000:,.1f} "
            f"| {results.ratio(phase):.2f}x |"
        )
    total_ratio = results.total(STRATA) / results.total(LOCAL)
    lines.append(
        f"| **total, best round** | {results.total(LOCAL) * 1000:,.1f} | {results.total(STRATA) * 1000:,.1f} | {total_ratio:.2f}x |"
    )
    lines += [
        "",
        f"Phase rows: each phase's best of {cfg.rounds} round(s) per system. The total is measured, not added up from "
        "those: each system's fastest whole round (its phases summed within that one round).",
        "",
        warm_verdict(results.ratio("queries, warm")),
        "",
        f"Strata compute page cache after the query phases: {results.cache_stats}.",
    ]
    lines += ["", *results.notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sqlite",
        description="SQLite on Strata pages vs a local SQLite file (WAL, synchronous=FULL); writes BENCHMARKS.md section 'sqlite'.",
    )
    parser.add_argument("--users", type=int, default=SqliteBenchConfig.users, help="users (orders: 4 per user; default 20000)")
    parser.add_argument("--small-txns", type=int, default=SqliteBenchConfig.small_txns, help="single-row UPDATE transactions (default 200)")
    parser.add_argument("--lookups", type=int, default=SqliteBenchConfig.lookups, help="point lookups per index in the query set (default 2000)")
    parser.add_argument("--page-size", type=int, default=SqliteBenchConfig.page_size, help="tenant and SQLite page size (default 4096)")
    parser.add_argument("--rounds", type=int, default=SqliteBenchConfig.rounds, help="rounds of both systems; each phase's best is kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="2,000 users, 50 small transactions, 200 lookups, 1 round; BENCHMARKS.md untouched")
    add_write_argument(parser)
    add_work_dir_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        cfg = SqliteBenchConfig(
            users=min(args.users, 2000), small_txns=min(args.small_txns, 50), lookups=min(args.lookups, 200),
            page_size=args.page_size, rounds=1,
        )
    else:
        cfg = SqliteBenchConfig(
            users=args.users, small_txns=args.small_txns, lookups=args.lookups, page_size=args.page_size, rounds=args.rounds
        )
    load_at_start = os.getloadavg()[0]
    with work_directory(args.work_dir, args.keep) as work_dir:
        results = run(cfg, work_dir)
    results.notes.append(load_average_note(load_at_start, os.getloadavg()[0]))
    markdown = render_markdown(results, cfg)
    print(markdown)
    publish_section(
        "sqlite", markdown, reasons=partial_run_reasons(parser, args), write=args.write, command="python -m bench.sqlite",
        title="sqlite: SQLite on Strata pages vs a local SQLite file",
    )


if __name__ == "__main__":
    main()
