"""Databases served by `strata proxy`: wake, throughput and idle cost, vs PostgreSQL, in one run.

    python -m bench.endpoint            # BENCHMARKS.md section `endpoint`
    python -m bench.endpoint --quick    # fewer samples, 100 idle databases; BENCHMARKS.md untouched

The bench starts a walservice, a pageserver and `strata proxy` (`--suspend-after`
1 s, `--pool-size` 2, so a database goes back to sleep between samples) on
loopback, and a throwaway PostgreSQL cluster (bench/postgres_peer.py: fsync and
synchronous_commit on) reached with psycopg. The Strata side speaks the libSQL
protocol the official clients speak (Hrana over HTTP: one `POST /v3/pipeline`
per statement, `execute` + `close`, as `@libsql/client` sends it), through one
aiohttp session; both sides run in this process's event loop.

1. **Wake.** Strata: wait until the database's compute is suspended and the pool
   is full again, then time a point select from sending the request to its rows
   (the wake: a pre-started compute is handed the database and opens it), then the
   same request while it runs ("warm"). The peer, PostgreSQL as an instance per
   app: the cluster is stopped (`pg_ctl stop -m fast`, not timed), then timed from
   `pg_ctl start` through psycopg's first successful connection (polled every
   2 ms) to the same select's rows. Target: wake p50 under 50 ms.
2. **Throughput.** Point selects by primary key, and one-row INSERT transactions
   (autocommit: each is its own commit, fsynced on both sides), at 1, 8 and 64
   concurrent clients (Strata: each an HTTP request in flight to the one
   database; PostgreSQL: each its own psycopg connection), `--seconds` each after
   a warm-up: statements/s, p50 latency, and the ratio.
3. **Idle cost.** `--idle-databases` databases created (CreateTimeline with a name)
   and `--idle-woken` of them woken with a write and left to suspend (and the
   pageserver to drop each idle timeline's WAL stream, 10 s after its last WAL): the OS
   processes, RSS and bytes on disk all Strata processes (walservice, pageserver,
   proxy, its computes) add, per database. Target: no process and under 50 KiB RSS
   per idle database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.branch import exit_on_sigterm, load_average_note, work_directory
from bench.postgres_peer import PostgresUnavailable, ThrowawayPostgres
from bench.report import add_work_dir_arguments, add_write_argument, partial_run_reasons, percentile, publish_section
from compute_shim import Client
from tests.env import StrataEnv

WAKE_TARGET_MS = 50.0
IDLE_TARGET_KIB = 50.0
DATABASE = "bench"
ROWS = 10_000
SELECT = "point select"
INSERT = "one-row insert txn"
WORKLOADS = (SELECT, INSERT)
STRATA = "Strata"
POSTGRES = "PostgreSQL"


@dataclass(frozen=True)
class EndpointBenchConfig:
    wakes: int = 30
    pg_starts: int = 10
    clients: tuple[int, ...] = (1, 8, 64)
    seconds: float = 5.0
    warmup_s: float = 1.0
    idle_databases: int = 1000
    idle_woken: int = 20
    suspend_after_s: float = 1.0
    pool_size: int = 2
    seed: int = 11


@dataclass
class ThroughputRow:
    workload: str
    clients: int
    per_second: dict[str, float] = field(default_factory=dict)  # system -> statements/s
    p50_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class IdleCost:
    databases: int = 0
    woken: int = 0
    processes_before: int = 0
    processes_after: int = 0
    rss_before: int = 0
    rss_after: int = 0
    disk_before: int = 0
    disk_after: int = 0
    # role (walservice, pageserver, proxy + computes) -> RSS bytes, before and after
    role_rss_before: dict[str, int] = field(default_factory=dict)
    role_rss_after: dict[str, int] = field(default_factory=dict)
    create_s: float = 0.0

    @property
    def processes_added(self) -> int:
        return self.processes_after - self.processes_before

    @property
    def kib_per_database(self) -> float:
        return (self.rss_after - self.rss_before) / 1024 / max(self.databases, 1)

    @property
    def disk_kib_per_database(self) -> float:
        return (self.disk_after - self.disk_before) / 1024 / max(self.databases, 1)


@dataclass
class EndpointResults:
    wake_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    pg_start_ms: list[float] = field(default_factory=list)
    pg_warm_ms: list[float] = field(default_factory=list)
    throughput: list[ThroughputRow] = field(default_factory=list)
    idle: IdleCost = field(default_factory=IdleCost)
    postgres_version: str = ""
    notes: list[str] = field(default_factory=list)


# -- the libSQL protocol, as a client sends it ---------------------------------


def hrana_value(value: object) -> dict[str, Any]:
    if value is None:
        return {"type": "null"}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    return {"type": "text", "value": str(value)}


class HranaClient:
    """One statement per `POST /v3/pipeline` (execute, then close), as the libSQL clients
    send a statement outside a transaction. Raises on any error answer."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session, self.base_url = session, base_url

    async def execute(self, database: str, sql: str, *args: object) -> list[list[Any]]:
        body = {"baton": None, "requests": [
            {"type": "execute", "stmt": {"sql": sql, "args": [hrana_value(a) for a in args]}}, {"type": "close"}]}
        async with self.session.post(f"{self.base_url}/db/{database}/v3/pipeline", json=body) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"{sql!r} on {database}: HTTP {resp.status}: {answer}")
        result = answer["results"][0]
        if result["type"] != "ok":
            raise RuntimeError(f"{sql!r} on {database}: {result['error']}")
        return result["response"]["result"]["rows"]

    async def computes(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/computes") as resp:
            return await resp.json()  # type: ignore[no-any-return]


# -- processes and their memory -----------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid`'s children, grandchildren...: read from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass  # it exited between listing and reading
    return total


def tree_bytes(paths: list[Path]) -> int:
    total = 0
    for root in paths:
        for dirpath, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total


# -- Strata --------------------------------------------------------------------


async def wait_for(what: str, cond: Any, timeout: float = 60.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def settled(http: HranaClient, pool_size: int) -> bool:
    """No compute runs and the pool is full: the next request to a database is a wake."""
    state = await http.computes()
    return not state["computes"] and len(state["pool"]) >= pool_size


async def measure_wakes(http: HranaClient, cfg: EndpointBenchConfig, results: EndpointResults) -> None:
    rng = random.Random(cfg.seed)
    for i in range(cfg.wakes):
        await wait_for("the database to be suspended and the pool full", lambda: settled(http, cfg.pool_size))
        key = rng.randrange(1, ROWS + 1)
        started = time.perf_counter()
        rows = await http.execute(DATABASE, "SELECT v FROM kv WHERE id = ?", key)
        results.wake_ms.append((time.perf_counter() - started) * 1000)
        assert rows and rows[0][0]["value"] == f"row {key}", rows
        for _ in range(5):
            started = time.perf_counter()
            await http.execute(DATABASE, "SELECT v FROM kv WHERE id = ?", rng.randrange(1, ROWS + 1))
            results.warm_ms.append((time.perf_counter() - started) * 1000)
        print(f"  wake {i + 1}/{cfg.wakes}: {results.wake_ms[-1]:.1f} ms", flush=True)


async def closed_loop(clients: int, seconds: float, warmup_s: float, one: Any) -> tuple[float, float]:
    """`clients` tasks each running `one(task_index, rng)` back to back; statements/s and
    p50 ms of the statements that ended inside the window after the warm-up."""
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + seconds
    latencies: list[float] = []

    async def worker(index: int) -> None:
        rng = random.Random(index)
        while (now := time.perf_counter()) < window_end:
            await one(index, rng)
            done = time.perf_counter()
            if window_start <= now and done <= window_end:
                latencies.append((done - now) * 1000)

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return len(latencies) / seconds, percentile(latencies, 50)


async def run_strata(cfg: EndpointBenchConfig, work_dir: Path, results: EndpointResults) -> None:
    env = StrataEnv(work_dir / "strata")
    try:
        wal = env.walservice()
        ps = env.pageserver(wal)
        with Client(pageserver=ps.address, walservice=wal.address) as client:
            tenant = client.create_tenant(page_size=4096).tenant_id
            bench_timeline = client.create_timeline(tenant_id=tenant, name=DATABASE).timeline_id
            proxy = env.process("proxy", [
                sys.executable, "-m", "proxy", "--pageserver", ps.address, "--walservice", wal.address, "--tenant", tenant,
                "--suspend-after", str(cfg.suspend_after_s), "--pool-size", str(cfg.pool_size),
                "--max-computes", str(max(100, cfg.idle_woken + 1)),
            ])
            assert proxy.proc is not None
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
                http = HranaClient(session, f"http://{proxy.address}")
                await http.execute(DATABASE, "CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)")
                await http.execute(DATABASE, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                                   "INSERT INTO kv SELECT i, 'row ' || i FROM n", ROWS)
                print("Strata: wakes", flush=True)
                await measure_wakes(http, cfg, results)
                print("Strata: throughput", flush=True)
                for row in results.throughput:
                    one = strata_statement(http, row.workload)
                    row.per_second[STRATA], row.p50_ms[STRATA] = await closed_loop(row.clients, cfg.seconds, cfg.warmup_s, one)
                    print(f"  {row.workload} x{row.clients}: {row.per_second[STRATA]:,.0f}/s", flush=True)
                print("Strata: idle cost", flush=True)
                roots = {"walservice": wal.proc.pid, "pageserver": ps.proc.pid, "proxy and its computes": proxy.proc.pid}  # type: ignore[union-attr]
                await measure_idle(client, tenant, http, cfg, results, roots, [wal.data_dir, ps.data_dir, proxy.data_dir],
                                   ps.log_path, bench_timeline)
    finally:
        env.teardown()


def strata_statement(http: HranaClient, workload: str) -> Any:
    if workload == SELECT:
        async def select(index: int, rng: random.Random) -> None:
            await http.execute(DATABASE, "SELECT v FROM kv WHERE id = ?", rng.randrange(1, ROWS + 1))
        return select

    async def insert(index: int, rng: random.Random) -> None:
        await http.execute(DATABASE, "INSERT INTO kv (v) VALUES (?)", f"client {index}")
    return insert


def parked_after(log_path: Path, offsets: dict[str, int]) -> set[str]:
    """The timelines of `offsets` (id -> byte offset in the pageserver's log) that the
    pageserver logged `event=wal_stream_parked` for past their offset."""
    last_parked: dict[str, int] = {}  # timeline -> byte offset of its last parked line
    position = 0
    with open(log_path, "rb") as f:
        for line in f:
            if b"event=wal_stream_parked" in line:
                _, _, rest = line.partition(b" timeline=")
                last_parked[rest.split(b" ", 1)[0].decode()] = position
            position += len(line)
    return {t for t, offset in offsets.items() if last_parked.get(t, -1) >= offset}


async def measure_idle(client: Client, tenant: str, http: HranaClient, cfg: EndpointBenchConfig, results: EndpointResults,
                       roots: dict[str, int], dirs: list[Path], ps_log: Path, bench_timeline: str) -> None:
    """`roots`: role -> the pid of that Strata process (the proxy's computes are its children).
    Measured at rest: no compute but the pool, and every timeline's WAL stream dropped
    (the pageserver parks a timeline 10 s after its last WAL, pageserver/ingest.py)."""

    def log_size() -> int:
        return ps_log.stat().st_size

    async def parked(offsets: dict[str, int]) -> None:
        async def all_parked() -> bool:
            return len(await asyncio.to_thread(parked_after, ps_log, offsets)) == len(offsets)

        await wait_for("the pageserver to drop the idle timelines' WAL streams", all_parked, timeout=120, interval=0.5)

    def role_pids() -> dict[str, list[int]]:
        return {role: [pid, *descendants(pid)] for role, pid in roots.items()}

    async def at_rest() -> tuple[int, dict[str, int], int]:
        """(processes, RSS by role, disk) once nothing runs but the pool: a suspended compute
        leaves /computes before its process has exited, so wait for the process count too."""
        await wait_for("every database to be suspended and the pool full", lambda: settled(http, cfg.pool_size), timeout=120)

        async def only_pool() -> bool:
            return sum(map(len, role_pids().values())) == len(roots) + cfg.pool_size

        await wait_for("the suspended computes to exit", only_pool, timeout=60)
        await asyncio.sleep(1.0)  # let the processes that handed back their memory settle
        pids = role_pids()
        return sum(map(len, pids.values())), {role: rss_bytes(p) for role, p in pids.items()}, tree_bytes(dirs)

    idle = results.idle
    idle.databases, idle.woken = cfg.idle_databases, min(cfg.idle_woken, cfg.idle_databases)
    await parked({bench_timeline: log_size()})
    idle.processes_before, idle.role_rss_before, idle.disk_before = await at_rest()
    started = time.perf_counter()
    names = [f"idle-{i:05d}" for i in range(cfg.idle_databases)]
    offsets: dict[str, int] = {}
    for i, name in enumerate(names):
        offset = log_size()
        offsets[(await asyncio.to_thread(client.create_timeline, tenant_id=tenant, name=name)).timeline_id] = offset
        if (i + 1) % 200 == 0:
            print(f"  created {i + 1}/{len(names)} databases", flush=True)
    idle.create_s = time.perf_counter() - started
    for name, timeline in list(zip(names, offsets))[: idle.woken]:
        await http.execute(name, "CREATE TABLE notes (body TEXT)")
        await http.execute(name, "INSERT INTO notes VALUES (?)", name)
        offsets[timeline] = log_size()
    await parked(offsets)
    idle.processes_after, idle.role_rss_after, idle.disk_after = await at_rest()
    idle.rss_before, idle.rss_after = sum(idle.role_rss_before.values()), sum(idle.role_rss_after.values())


# -- PostgreSQL ----------------------------------------------------------------


def pg_connect_args(pg: ThrowawayPostgres) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "dbname": "postgres", "autocommit": True}


async def run_postgres(cfg: EndpointBenchConfig, work_dir: Path, results: EndpointResults) -> None:
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresUnavailable(f"{exc}: install the bench extra (pip install -e '.[bench]')") from None

    with ThrowawayPostgres(work_dir / "postgres", clients=()) as pg:
        with psycopg.connect(**pg_connect_args(pg)) as conn:
            results.postgres_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            conn.execute("CREATE TABLE kv (id BIGSERIAL PRIMARY KEY, v TEXT)")
            conn.execute("INSERT INTO kv SELECT i, 'row ' || i FROM generate_series(1, %s) i", (ROWS,))
            conn.execute("SELECT setval('kv_id_seq', %s)", (ROWS,))
        print("PostgreSQL: start + first query", flush=True)
        rng = random.Random(cfg.seed)
        for i in range(cfg.pg_starts):
            pg.stop_server()
            key = rng.randrange(1, ROWS + 1)
            started = time.perf_counter()
            pg.start_server(wait=False)
            conn = None
            while conn is None:
                try:
                    conn = psycopg.connect(**pg_connect_args(pg), connect_timeout=5)
                except psycopg.OperationalError:
                    if time.perf_counter() - started > 60:
                        raise
                    time.sleep(0.002)
            with conn:
                row = conn.execute("SELECT v FROM kv WHERE id = %s", (key,)).fetchone()
                results.pg_start_ms.append((time.perf_counter() - started) * 1000)
                assert row == (f"row {key}",), row
                for _ in range(5):
                    t0 = time.perf_counter()
                    conn.execute("SELECT v FROM kv WHERE id = %s", (rng.randrange(1, ROWS + 1),)).fetchone()
                    results.pg_warm_ms.append((time.perf_counter() - t0) * 1000)
            print(f"  start {i + 1}/{cfg.pg_starts}: {results.pg_start_ms[-1]:.1f} ms", flush=True)
        print("PostgreSQL: throughput", flush=True)
        for row in results.throughput:
            conns = [await psycopg.AsyncConnection.connect(**pg_connect_args(pg)) for _ in range(row.clients)]
            try:
                one = postgres_statement(conns, row.workload)
                row.per_second[POSTGRES], row.p50_ms[POSTGRES] = await closed_loop(row.clients, cfg.seconds, cfg.warmup_s, one)
            finally:
                for c in conns:
                    await c.close()
            print(f"  {row.workload} x{row.clients}: {row.per_second[POSTGRES]:,.0f}/s", flush=True)


def postgres_statement(conns: list[Any], workload: str) -> Any:
    if workload == SELECT:
        async def select(index: int, rng: random.Random) -> None:
            cur = await conns[index].execute("SELECT v FROM kv WHERE id = %s", (rng.randrange(1, ROWS + 1),))
            await cur.fetchall()
        return select

    async def insert(index: int, rng: random.Random) -> None:
        await conns[index].execute("INSERT INTO kv (v) VALUES (%s)", (f"client {index}",))
    return insert


# -- the report ----------------------------------------------------------------


def wake_verdict(p50_ms: float) -> str:
    verdict = "met" if p50_ms < WAKE_TARGET_MS else "not met"
    return f"Target: wake p50 under {WAKE_TARGET_MS:.0f} ms: {p50_ms:.1f} ms, {verdict}."


def idle_verdict(idle: IdleCost) -> str:
    met = idle.processes_added <= 0 and idle.kib_per_database < IDLE_TARGET_KIB
    return (
        f"Target: no process and under {IDLE_TARGET_KIB:.0f} KiB RSS per idle database: {idle.processes_added} processes "
        f"added, {idle.kib_per_database:.1f} KiB per database, {'met' if met else 'not met'}."
    )


def _ms(samples: list[float], q: float) -> str:
    return f"{percentile(samples, q):,.1f}" if samples else "-"


def render_markdown(results: EndpointResults, cfg: EndpointBenchConfig) -> str:
    pg = f"PostgreSQL {results.postgres_version}" if results.postgres_version else "PostgreSQL (not run)"
    lines = [
        "`strata proxy` serving a database over libSQL's HTTP protocol (one `POST /v3/pipeline` per statement, "
        f"execute + close, through aiohttp) next to {pg} over psycopg (fsync and synchronous_commit on), "
        f"both over loopback, in one run. The proxy suspends a compute after {cfg.suspend_after_s:g} s idle and keeps "
        f"{cfg.pool_size} pre-started computes. The table holds {ROWS:,} rows.",
        "",
        "### Wake: a request to a suspended database",
        "",
        "| what | samples | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
        f"| Strata: point select on a suspended database (wake) | {len(results.wake_ms)} | {_ms(results.wake_ms, 50)} | {_ms(results.wake_ms, 99)} |",
        f"| Strata: the same, compute running (warm) | {len(results.warm_ms)} | {_ms(results.warm_ms, 50)} | {_ms(results.warm_ms, 99)} |",
        f"| PostgreSQL: `pg_ctl start` to the first select's rows | {len(results.pg_start_ms)} | {_ms(results.pg_start_ms, 50)} | {_ms(results.pg_start_ms, 99)} |",
        f"| PostgreSQL: the same select, connection open (warm) | {len(results.pg_warm_ms)} | {_ms(results.pg_warm_ms, 50)} | {_ms(results.pg_warm_ms, 99)} |",
        "",
    ]
    if results.wake_ms:
        lines.append(wake_verdict(percentile(results.wake_ms, 50)))
        if results.pg_start_ms:
            lines.append(
                f"A Strata wake takes {percentile(results.wake_ms, 50) / percentile(results.pg_start_ms, 50):.2f}x "
                "the time of starting a stopped PostgreSQL instance and running the query (p50s)."
            )
    lines += [
        "",
        f"### Throughput: {cfg.seconds:g} s per row after a {cfg.warmup_s:g} s warm-up, one database",
        "",
        "| workload | clients | Strata stmt/s | PostgreSQL stmt/s | Strata ÷ PostgreSQL | Strata p50 ms | PostgreSQL p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results.throughput:
        s, p = row.per_second.get(STRATA), row.per_second.get(POSTGRES)
        ratio = f"{s / p:.2f}x" if s and p else "-"
        lines.append(
            f"| {row.workload} | {row.clients} | {s or 0:,.0f} | {f'{p:,.0f}' if p else '-'} | {ratio} "
            f"| {row.p50_ms.get(STRATA, float('nan')):.2f} | {row.p50_ms.get(POSTGRES, float('nan')):.2f} |"
        )
    idle = results.idle
    lines += [
        "",
        f"A one-row insert is one commit on both: Strata's is one conditional Append acknowledged after the walservice's "
        "fdatasync; the compute serializes a database's statements (SQLite's single writer), so more clients queue on it.",
        "",
        f"### Idle cost: {idle.databases:,} databases, {idle.woken} of them woken with a write, all suspended",
        "",
        "Measured at rest: no compute running but the pool, and every timeline's WAL stream dropped by the pageserver "
        "(`event=wal_stream_parked`, 10 s after its last WAL).",
        "",
        "| what | before | after | added per database |",
        "| --- | ---: | ---: | ---: |",
        f"| Strata OS processes (walservice, pageserver, proxy, computes) | {idle.processes_before} | {idle.processes_after} | {idle.processes_added / max(idle.databases, 1):.3f} |",
        f"| their RSS, MiB | {idle.rss_before / 2**20:,.1f} | {idle.rss_after / 2**20:,.1f} | {idle.kib_per_database:.1f} KiB |",
        *(
            f"| RSS of the {role}, MiB | {idle.role_rss_before[role] / 2**20:,.1f} | {idle.role_rss_after.get(role, 0) / 2**20:,.1f} "
            f"| {(idle.role_rss_after.get(role, 0) - idle.role_rss_before[role]) / 1024 / max(idle.databases, 1):.1f} KiB |"
            for role in idle.role_rss_before
        ),
        f"| their data on disk, MiB | {idle.disk_before / 2**20:,.1f} | {idle.disk_after / 2**20:,.1f} | {idle.disk_kib_per_database:.1f} KiB |",
        "",
        f"Creating the {idle.databases:,} databases took {idle.create_s:.1f} s ({idle.create_s / max(idle.databases, 1) * 1000:.1f} ms each, "
        "one CreateTimeline at a time).",
        "",
        idle_verdict(idle),
    ]
    lines += ["", *results.notes]
    return "\n".join(lines)


async def run(cfg: EndpointBenchConfig, work_dir: Path, *, postgres: bool = True) -> EndpointResults:
    results = EndpointResults(throughput=[ThroughputRow(w, n) for w in WORKLOADS for n in cfg.clients])
    await run_strata(cfg, work_dir, results)
    if postgres:
        try:
            await run_postgres(cfg, work_dir, results)
        except (PostgresUnavailable, subprocess.CalledProcessError) as exc:
            results.notes.append(f"PostgreSQL was not measured: {exc}")
            print(results.notes[-1], flush=True)
    return results


def build_parser() -> argparse.ArgumentParser:
    d = EndpointBenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.endpoint",
        description="strata proxy (wake, throughput, idle cost) vs PostgreSQL; writes BENCHMARKS.md section 'endpoint'.",
    )
    parser.add_argument("--wakes", type=int, default=d.wakes, help=f"wakes timed (default {d.wakes})")
    parser.add_argument("--pg-starts", type=int, default=d.pg_starts, help=f"PostgreSQL starts timed (default {d.pg_starts})")
    parser.add_argument("--clients", type=lambda s: tuple(int(x) for x in s.split(",")), default=d.clients,
                        help="concurrent clients per throughput row (default 1,8,64)")
    parser.add_argument("--seconds", type=float, default=d.seconds, help=f"seconds per throughput row (default {d.seconds:g})")
    parser.add_argument("--idle-databases", type=int, default=d.idle_databases, help=f"databases created for the idle cost (default {d.idle_databases})")
    parser.add_argument("--idle-woken", type=int, default=d.idle_woken, help=f"of them, woken with a write (default {d.idle_woken})")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false", help="Strata only")
    parser.add_argument("--quick", action="store_true", help="5 wakes, 3 starts, 1 s rows, 100 idle databases; BENCHMARKS.md untouched")
    add_write_argument(parser)
    add_work_dir_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.wakes, args.pg_starts, args.idle_databases, *args.clients) < 1 or args.seconds <= 0 or args.idle_woken < 0:
        parser.error("--wakes, --pg-starts, --idle-databases and --clients must be >= 1, --seconds > 0, --idle-woken >= 0")
    exit_on_sigterm()
    cfg = EndpointBenchConfig(
        wakes=args.wakes, pg_starts=args.pg_starts, clients=args.clients, seconds=args.seconds,
        idle_databases=args.idle_databases, idle_woken=args.idle_woken,
    )
    if args.quick:
        cfg = EndpointBenchConfig(wakes=min(cfg.wakes, 5), pg_starts=min(cfg.pg_starts, 3), clients=cfg.clients, seconds=1.0,
                                  warmup_s=0.5, idle_databases=min(cfg.idle_databases, 100), idle_woken=min(cfg.idle_woken, 5))
    load_at_start = os.getloadavg()[0]
    with work_directory(args.work_dir, args.keep) as work_dir:
        results = asyncio.run(run(cfg, work_dir, postgres=args.postgres))
    results.notes.append(load_average_note(load_at_start, os.getloadavg()[0]))
    markdown = render_markdown(results, cfg)
    print(markdown)
    publish_section(
        "endpoint", markdown, reasons=partial_run_reasons(parser, args), write=args.write, command="python -m bench.endpoint",
        title="endpoint: databases served by strata proxy vs PostgreSQL",
    )


if __name__ == "__main__":
    main()
