"""Branch creation, side by side with PostgreSQL and with copying a SQLite file.

    python -m bench.branch                       # 1 MiB, 100 MiB and 1 GiB ancestors
    python -m bench.branch --quick               # 1 and 16 MiB, a few samples, no BENCHMARKS.md
    python -m bench.branch --sizes 1,100 --samples 100

What is timed, per ancestor size:

- **Strata**: `CreateTimeline(ancestor_timeline_id=main, ancestor_lsn=<its end>)`
  over loopback gRPC, client-side wall time of each call. The ancestor is loaded
  through the walservice (Append of 8 KiB PageImage records, `--pages-per-append`
  per Append, `--appends-in-flight` Appends at once from threads), the bench waits
  until the pageserver ingested the last LSN (a GetPage at that LSN waits for it),
  then `Compact` so the ancestor lives in layer files, not in memory. One untimed
  warm-up branch first; every branch is kept (they are what an agent would use).
  The pageserver runs with its defaults except a 512 MiB block cache and image
  layers kept out of reach (`DEFAULT_PAGESERVER_ARGS` says why).
- **PostgreSQL 15** `CREATE DATABASE b_i TEMPLATE tmpl STRATEGY <s>` (WAL_LOG is
  PG15's default, FILE_COPY the pre-15 behaviour), timed by psql's `\\timing` in one
  session; each copy is dropped (untimed) before the next. The template holds one
  table of ~1 KiB text rows filling the size (plus PG's ~7.5 MiB of catalogs, which
  the copy also copies: the table shows the template's `pg_database_size`). A
  throwaway cluster (initdb as the unprivileged `postgres` OS user, fsync on,
  random loopback port) in the work directory, stopped and removed at the end.
- **SQLite**: `shutil.copyfile` of a real SQLite database of the size (8 KiB pages,
  ~1 KiB text rows) plus `fsync` of the copy: the cost of "branching" a file-based
  database by copying it. The copy is deleted (untimed) before the next.

Results go into BENCHMARKS.md (section `branch`) through bench/report.py.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from compute_shim import Client
from pageserver.layers.names import KEY_SPACE_END, LayerName
from strata.v1 import records_pb2
from bench.postgres_peer import PostgresUnavailable, ThrowawayPostgres
from bench.report import add_work_dir_arguments, add_write_argument, partial_run_reasons, percentile, publish_section
from tests.env import StrataEnv

MIB = 1024 * 1024
PAGE_SIZE = 8192
BENCH_REL = 1
DEFAULT_SIZES_MIB = (1.0, 100.0, 1024.0)
QUICK_SIZES_MIB = (1.0, 16.0)
PG_STRATEGIES = ("WAL_LOG", "FILE_COPY")
SQLITE_ROW_TEXT_BYTES = 1024
STRATA_TARGET_P50_MS = 5.0
MAX_COMPACT_CALLS = 5


# -- numbers ------------------------------------------------------------------


def format_size(size_bytes: int) -> str:
    if size_bytes >= 1024 * MIB and size_bytes % (1024 * MIB) == 0:
        return f"{size_bytes // (1024 * MIB)} GiB"
    if size_bytes >= MIB:
        return f"{size_bytes / MIB:.1f} MiB".replace(".0 MiB", " MiB")
    return f"{size_bytes / 1024:.1f} KiB".replace(".0 KiB", " KiB")


@dataclass(frozen=True)
class BranchRow:
    """One system's branch (or copy) times for one ancestor size."""

    size_bytes: int  # the data size asked for
    system: str
    samples_s: tuple[float, ...]
    data_bytes: int  # what that system actually holds for the ancestor
    note: str = ""

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_s, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples_s, 99) * 1000


@dataclass(frozen=True)
class LoadRow:
    """How long putting the ancestor's data in place took (not what is compared)."""

    size_bytes: int
    system: str
    seconds: float
    detail: str


@dataclass
class BranchResults:
    branch_rows: list[BranchRow] = field(default_factory=list)
    load_rows: list[LoadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. why a peer is missing


# -- Strata ---------------------------------------------------------------------


def page_bytes(rel: int, blkno: int, page_size: int = PAGE_SIZE) -> bytes:
    """A deterministic page: an id header, half random (incompressible), half zeros,
    like a half-full heap page."""
    header = struct.pack("<IIQ", rel, blkno, 0x5354524154410000 | (blkno & 0xFFFF))
    body = random.Random(rel << 32 | blkno).randbytes(page_size // 2 - len(header))
    return header + body + bytes(page_size - page_size // 2)


@dataclass(frozen=True)
class LayerCensus:
    """What a timeline's directory holds, by kind of layer file."""

    l0_deltas: int
    other_deltas: int  # L1: a key partition
    images: int

    def __str__(self) -> str:
        return f"{self.l0_deltas} L0 + {self.other_deltas} L1 delta, {self.images} image layer files"


def layer_census(pageserver_data_dir: Path, tenant_id: str, timeline_id: str) -> LayerCensus:
    counts = {"l0": 0, "delta": 0, "image": 0}
    for path in (pageserver_data_dir / "tenants" / tenant_id / "timelines" / timeline_id).iterdir():
        try:
            name = LayerName.parse(path.name)
        except ValueError:
            continue  # index_part.json, temp files
        full_range = name.key_start == 0 and name.key_end == KEY_SPACE_END
        counts["l0" if name.kind == "delta" and full_range else name.kind] += 1
    return LayerCensus(counts["l0"], counts["delta"], counts["image"])


@dataclass(frozen=True)
class StrataLoad:
    pages: int
    end_lsn: int
    append_s: float  # until every Append was acknowledged (durable in the walservice)
    ingest_s: float  # ... and the pageserver had ingested the last LSN
    compact_s: float  # Compact: in-memory layers flushed, L0s compacted
    compact_calls: int
    physical_bytes: int  # the ancestor's layer files


def load_relation(
    client: Client,
    tenant_id: str,
    timeline_id: str,
    *,
    rel: int,
    npages: int,
    pages_per_append: int,
    appends_in_flight: int,
    compact_until: Callable[[], bool] | None = None,
    timeout_s: float = 3600.0,
) -> StrataLoad:
    """Write blocks 0..npages-1 of `rel` as PageImage records through the
    walservice and wait until the pageserver ingested them. With `compact_until`,
    then call Compact until it says True (at most MAX_COMPACT_CALLS times):
    a Compact that finds an automatic compaction running waits for that one,
    which may leave L0 layers behind."""

    def append_batch(first: int) -> int:
        records = [
            records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=b, page=page_bytes(rel, b)))
            for b in range(first, min(first + pages_per_append, npages))
        ]
        return client.append(tenant_id=tenant_id, timeline_id=timeline_id, records=records, timeout=120).end_lsn

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=appends_in_flight, thread_name_prefix="bench-append") as pool:
        end_lsn = max(pool.map(append_batch, range(0, npages, pages_per_append)))
    appended = time.perf_counter()
    # A read at end_lsn waits until the pageserver ingested it.
    last = client.get_page(tenant_id=tenant_id, timeline_id=timeline_id, rel=rel, blkno=npages - 1, lsn=end_lsn, timeout=timeout_s)
    if last.page != page_bytes(rel, npages - 1):
        raise AssertionError(f"rel={rel} blkno={npages - 1} read back different bytes than were written")
    ingested = time.perf_counter()
    physical = calls = 0
    while compact_until is not None and calls < MAX_COMPACT_CALLS:
        physical = client.compact(tenant_id=tenant_id, timeline_id=timeline_id, timeout=timeout_s).physical_size
        calls += 1
        if compact_until():
            break
    compacted = time.perf_counter()
    return StrataLoad(npages, end_lsn, appended - start, ingested - start, compacted - ingested, calls, physical)


def time_branch_creation(client: Client, tenant_id: str, ancestor_id: str, ancestor_lsn: int, samples: int) -> tuple[list[float], str]:
    """`samples` timed CreateTimeline calls after one untimed warm-up; returns the
    times and the last branch's id."""
    client.create_timeline(tenant_id=tenant_id, ancestor_timeline_id=ancestor_id, ancestor_lsn=ancestor_lsn)
    times: list[float] = []
    branch_id = ""
    for _ in range(samples):
        start = time.perf_counter()
        info = client.create_timeline(tenant_id=tenant_id, ancestor_timeline_id=ancestor_id, ancestor_lsn=ancestor_lsn)
        times.append(time.perf_counter() - start)
        branch_id = info.timeline_id
    return times, branch_id


# Defaults (Neon's, scaled) except image layers: with one relation of N blocks,
# `create_image_layers` reconstructs every page and each reconstruction reads
# every version of the relation's size key (one per extension), so an image pass
# over a 1 GiB relation is O(N^2) (131072^2 entries; it ran for over 14 minutes
# without finishing). The bench keeps images out of reach so the 1 GiB ancestor
# can be built; BENCHMARKS.md says so.
DEFAULT_PAGESERVER_ARGS = ("--block-cache-bytes", str(512 * MIB), "--image-threshold", "1000000")


def run_strata(
    sizes_bytes: Sequence[int],
    samples: int,
    work_dir: Path,
    *,
    pages_per_append: int = 128,
    appends_in_flight: int = 4,
    pageserver_args: Sequence[str] = DEFAULT_PAGESERVER_ARGS,
    log: bool = True,
) -> BranchResults:
    """Start a walservice and a pageserver under `work_dir`; per size, load a fresh
    tenant's main timeline and time branches of it."""
    results = BranchResults()
    env = StrataEnv(work_dir / "strata")
    try:
        wal = env.walservice()
        ps = env.pageserver(wal, *pageserver_args)
        with Client(pageserver=ps.address, walservice=wal.address, timeout=60) as client:
            for size in sizes_bytes:
                npages = max(1, size // PAGE_SIZE)
                tenant = client.create_tenant(page_size=PAGE_SIZE).tenant_id
                main = client.create_timeline(tenant_id=tenant).timeline_id
                if log:
                    print(f"strata: loading {format_size(size)} ({npages} pages) ...", file=sys.stderr, flush=True)
                load = load_relation(
                    client, tenant, main, rel=BENCH_REL, npages=npages,
                    pages_per_append=pages_per_append, appends_in_flight=appends_in_flight,
                    compact_until=lambda: layer_census(ps.data_dir, tenant, main).l0_deltas == 0,
                )
                census = layer_census(ps.data_dir, tenant, main)
                mib_per_s = npages * PAGE_SIZE / MIB / max(load.ingest_s, 1e-9)
                results.load_rows.append(
                    LoadRow(
                        size, "Strata: Append -> ingested", load.ingest_s,
                        f"{mib_per_s:.1f} MiB/s ({load.append_s:.1f} s until the last Append was acknowledged, "
                        f"{pages_per_append} pages per Append, {appends_in_flight} in flight)",
                    )
                )
                results.load_rows.append(
                    LoadRow(size, "Strata: Compact", load.compact_s,
                            f"{load.compact_calls} call(s), until no L0 was left: {format_size(load.physical_bytes)} in {census}")
                )
                times, branch_id = time_branch_creation(client, tenant, main, load.end_lsn, samples)
                # The branch sees the ancestor's pages: check one.
                page = client.get_page(tenant_id=tenant, timeline_id=branch_id, rel=BENCH_REL, blkno=npages // 2).page
                if page != page_bytes(BENCH_REL, npages // 2):
                    raise AssertionError(f"branch {branch_id} reads different bytes for blkno={npages // 2} than its ancestor holds")
                results.branch_rows.append(
                    BranchRow(size, "Strata CreateTimeline (gRPC, loopback)", tuple(times), load.physical_bytes, f"layer files: {census}")
                )
                if log:
                    row = results.branch_rows[-1]
                    print(f"strata: {format_size(size)}: p50 {row.p50_ms:.2f} ms p99 {row.p99_ms:.2f} ms", file=sys.stderr, flush=True)
    finally:
        env.teardown()
    return results


# -- PostgreSQL -------------------------------------------------------------------


_TIMING = re.compile(r"^Time: ([0-9.]+) ms", re.MULTILINE)


def fill_template(pg: ThrowawayPostgres, name: str, size_bytes: int) -> int:
    """A database `name` with one table of ~1 KiB text rows taking about `size_bytes`
    (7 rows per 8 KiB heap page), vacuumed and checkpointed; returns its size."""
    rows = max(1, size_bytes // PAGE_SIZE) * 7
    pg.sql(f"CREATE DATABASE {name}")
    pg.script(
        "CREATE TABLE t (id int PRIMARY KEY, payload text);\n"
        f"INSERT INTO t SELECT g, repeat(md5(g::text), {SQLITE_ROW_TEXT_BYTES // 32}) FROM generate_series(1, {rows}) g;\n"
        "VACUUM (FREEZE, ANALYZE) t;\n",
        database=name,
    )
    pg.sql("CHECKPOINT")
    return int(pg.sql(f"SELECT pg_database_size('{name}')"))


def time_create_database(pg: ThrowawayPostgres, template: str, strategy: str, samples: int) -> list[float]:
    """`samples` timed CREATE DATABASE ... TEMPLATE, each copy dropped before the next."""
    lines = ["\\timing on"]
    for i in range(samples):
        lines.append(f"CREATE DATABASE bench_copy_{i} TEMPLATE {template} STRATEGY {strategy};")
        lines.append(f"DROP DATABASE bench_copy_{i};")
    out = pg.script("\n".join(lines) + "\n")
    times = [float(m) / 1000 for m in _TIMING.findall(out)]
    if len(times) != 2 * samples:
        raise RuntimeError(f"expected {2 * samples} timings from psql, got {len(times)}:\n{out[-2000:]}")
    return times[0::2]


def run_postgres(sizes_bytes: Sequence[int], samples: int, work_dir: Path, strategies: Sequence[str] = PG_STRATEGIES, log: bool = True) -> BranchResults:
    results = BranchResults()
    try:
        with ThrowawayPostgres(work_dir / "postgres", settings={"shared_buffers": "256MB"}) as pg:
            version = pg.version
            for size in sizes_bytes:
                template = f"tmpl_{size}"
                start = time.perf_counter()
                db_bytes = fill_template(pg, template, size)
                results.load_rows.append(
                    LoadRow(size, f"PostgreSQL {version}: fill the template", time.perf_counter() - start,
                            f"INSERT ... generate_series, VACUUM FREEZE, CHECKPOINT; pg_database_size {format_size(db_bytes)}")
                )
                for strategy in strategies:
                    if log:
                        print(f"postgres: {format_size(size)} STRATEGY {strategy} x{samples} ...", file=sys.stderr, flush=True)
                    times = time_create_database(pg, template, strategy, samples)
                    default = " (PG15 default)" if strategy == "WAL_LOG" else ""
                    results.branch_rows.append(
                        BranchRow(size, f"PostgreSQL {version} CREATE DATABASE TEMPLATE, STRATEGY {strategy}{default}", tuple(times), db_bytes,
                                  "template's pg_database_size, catalogs included")
                    )
                pg.sql(f"DROP DATABASE {template}")
    except PostgresUnavailable as exc:
        results.notes.append(f"PostgreSQL could not be started, so it is missing here: {exc}")
    return results


# -- SQLite -----------------------------------------------------------------------


def make_sqlite_database(path: Path, size_bytes: int) -> int:
    """A real SQLite database (8 KiB pages, ~1 KiB text rows) of at least `size_bytes`."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
        next_id = 0
        chunk = 2000
        while path.stat().st_size < size_bytes:
            rows = ((next_id + i, f"{next_id + i:032x}" * (SQLITE_ROW_TEXT_BYTES // 32)) for i in range(chunk))
            with conn:
                conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
            next_id += chunk
            remaining_pages = (size_bytes - path.stat().st_size) // PAGE_SIZE
            chunk = max(1, min(20000, remaining_pages * 7))
    finally:
        conn.close()
    return path.stat().st_size


def copy_and_fsync(source: Path, destination: Path) -> None:
    shutil.copyfile(source, destination)
    fd = os.open(destination, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_sqlite_copy(sizes_bytes: Sequence[int], samples: int, work_dir: Path, log: bool = True) -> BranchResults:
    results = BranchResults()
    directory = work_dir / "sqlite"
    directory.mkdir(parents=True, exist_ok=True)
    for size in sizes_bytes:
        source = directory / f"db_{size}.sqlite"
        start = time.perf_counter()
        file_bytes = make_sqlite_database(source, size)
        results.load_rows.append(LoadRow(size, f"SQLite {sqlite3.sqlite_version}: build the file", time.perf_counter() - start, format_size(file_bytes)))
        if log:
            print(f"sqlite: {format_size(size)} copy+fsync x{samples} ...", file=sys.stderr, flush=True)
        times = []
        copy = directory / "copy.sqlite"
        for _ in range(samples):
            start = time.perf_counter()
            copy_and_fsync(source, copy)
            times.append(time.perf_counter() - start)
            copy.unlink()
        source.unlink()
        results.branch_rows.append(BranchRow(size, f"SQLite {sqlite3.sqlite_version} file: shutil.copyfile + fsync", tuple(times), file_bytes))
    return results


# -- report -------------------------------------------------------------------------


def _strata_p50(rows: Sequence[BranchRow], size: int) -> float | None:
    for row in rows:
        if row.size_bytes == size and row.system.startswith("Strata"):
            return row.p50_ms
    return None


def ratio_text(peer_ms: float, strata_ms: float | None) -> str:
    if not strata_ms:
        return "n/a"
    ratio = peer_ms / strata_ms
    return f"{ratio:,.1f}x slower" if ratio >= 1 else f"{1 / ratio:,.1f}x faster"


FLAT_RATIO = 2.0  # "flat": the largest ancestor's p50 within this factor of the smallest's


def branch_verdict(p50_by_size: Sequence[tuple[int, float]]) -> str:
    """The target line: Strata's CreateTimeline p50 under STRATA_TARGET_P50_MS at
    every ancestor size, and flat (largest within FLAT_RATIO of the smallest);
    `p50_by_size` is (ancestor bytes, p50 ms), ascending size."""
    (low_size, low), (high_size, high) = p50_by_size[0], p50_by_size[-1]
    missed = [format_size(size) for size, p50 in p50_by_size if p50 >= STRATA_TARGET_P50_MS]
    growth = high / low if low else float("inf")
    met = not missed and growth <= FLAT_RATIO
    return (
        f"Target: Strata p50 under {STRATA_TARGET_P50_MS:g} ms at every size, flat: **{'met' if met else 'not met'}**. "
        f"p50 goes from {low:,.2f} ms at {format_size(low_size)} to {high:,.2f} ms at {format_size(high_size)} "
        f"({growth:.1f}x; flat means at most {FLAT_RATIO:g}x); "
        + (f"at or over {STRATA_TARGET_P50_MS:g} ms at: {', '.join(missed)}." if missed else f"under {STRATA_TARGET_P50_MS:g} ms at every size.")
    )


def render_markdown(results: BranchResults, *, samples: int, peer_samples: int) -> str:
    sizes = sorted({r.size_bytes for r in results.branch_rows})
    lines = [
        f"Branch creation: the time to get a writable copy-on-write branch of an ancestor, "
        f"vs. the peers' ways of getting a copy. Strata: {samples} timed CreateTimeline "
        f"calls per size over loopback gRPC (one untimed warm-up); peers: {peer_samples} each. "
        f"Target: Strata p50 under {STRATA_TARGET_P50_MS:g} ms at every size, flat.",
        "",
        "| ancestor | system | n | p50 ms | p99 ms | p50 vs Strata | data the system holds |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for size in sizes:
        strata = _strata_p50(results.branch_rows, size)
        for row in (r for r in results.branch_rows if r.size_bytes == size):
            ratio = "1x" if row.system.startswith("Strata") else ratio_text(row.p50_ms, strata)
            data = format_size(row.data_bytes) + (f" ({row.note})" if row.note else "")
            lines.append(f"| {format_size(size)} | {row.system} | {len(row.samples_s)} | {row.p50_ms:,.2f} | {row.p99_ms:,.2f} | {ratio} | {data} |")
    strata_rows = [r for r in results.branch_rows if r.system.startswith("Strata")]
    if strata_rows:
        lines += ["", branch_verdict([(r.size_bytes, r.p50_ms) for r in strata_rows])]
    lines += ["", "Setting the data up (not part of the comparison):", "", "| ancestor | what | seconds | detail |", "| --- | --- | ---: | --- |"]
    for row in results.load_rows:
        lines.append(f"| {format_size(row.size_bytes)} | {row.system} | {row.seconds:,.1f} | {row.detail} |")
    for note in results.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def print_summary(results: BranchResults) -> None:
    print(f"{'ancestor':>10}  {'p50 ms':>10}  {'p99 ms':>10}  {'vs Strata':>10}  system")
    for row in results.branch_rows:
        strata = _strata_p50(results.branch_rows, row.size_bytes)
        ratio = f"{row.p50_ms / strata:,.1f}x" if strata else "-"
        print(f"{format_size(row.size_bytes):>10}  {row.p50_ms:>10,.2f}  {row.p99_ms:>10,.2f}  {ratio:>10}  {row.system}")
    for load in results.load_rows:
        print(f"load {format_size(load.size_bytes):>10}  {load.seconds:>8,.1f} s  {load.system}: {load.detail}")
    for note in results.notes:
        print(note)


def load_average_note(start: float, end: float) -> str:
    """The machine's 1-minute load average around the run: on a small shared
    machine, other work skews the numbers, so the table says how busy it was."""
    return f"1-minute load average when the run started / ended: {start:.2f} / {end:.2f} (on {os.cpu_count()} CPUs)."


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(part) * MIB) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants MiB numbers separated by commas, like 1,100,1024; got {text!r}") from None
    if not sizes or any(s < PAGE_SIZE for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes: every size must be at least one 8 KiB page; got {text!r}")
    return sizes


@contextmanager
def work_directory(requested: Path | None, keep: bool) -> Iterator[Path]:
    """A fresh directory for one run's data, under `requested` (made if missing) or $TMPDIR."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="strata-bench-", dir=requested))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.branch",
        description="Time Strata branch creation against PostgreSQL CREATE DATABASE ... TEMPLATE and copying a SQLite file, "
        "and write the table into BENCHMARKS.md (section 'branch').",
    )
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="ancestor sizes in MiB, comma-separated (default 1,100,1024)")
    parser.add_argument("--samples", type=int, default=50, help="timed Strata branches per size (default 50)")
    parser.add_argument("--peer-samples", type=int, default=20, help="timed PostgreSQL / SQLite copies per size and method (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 and 16 MiB, 10 samples, 3 peer samples; BENCHMARKS.md untouched")
    parser.add_argument("--pages-per-append", type=int, default=128, help="8 KiB PageImage records per Append while loading (default 128)")
    parser.add_argument("--appends-in-flight", type=int, default=4, help="concurrent Appends while loading (default 4)")
    parser.add_argument("--pageserver-args", default=" ".join(DEFAULT_PAGESERVER_ARGS),
                        help=f"flags for the pageserver (default {' '.join(DEFAULT_PAGESERVER_ARGS)!r}: image layers are kept out of reach, see the module's comment)")
    parser.add_argument("--pg-strategies", default=",".join(PG_STRATEGIES), help="CREATE DATABASE strategies to time (default WAL_LOG,FILE_COPY)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL peer")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite peer")
    add_write_argument(parser)
    add_work_dir_arguments(parser)
    return parser


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the servers and the PostgreSQL cluster are stopped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        sizes = args.sizes or [int(s * MIB) for s in QUICK_SIZES_MIB]
        samples, peer_samples = min(args.samples, 10), min(args.peer_samples, 3)
    else:
        sizes = args.sizes or [int(s * MIB) for s in DEFAULT_SIZES_MIB]
        samples, peer_samples = args.samples, args.peer_samples
    strategies = [s.strip().upper() for s in args.pg_strategies.split(",") if s.strip()]
    load_at_start = os.getloadavg()[0]
    with work_directory(args.work_dir, args.keep) as work_dir:
        results = run_strata(
            sizes, samples, work_dir, pages_per_append=args.pages_per_append, appends_in_flight=args.appends_in_flight,
            pageserver_args=shlex.split(args.pageserver_args),
        )
        results.notes.insert(0, f"Strata pageserver flags: `{args.pageserver_args}` (defaults otherwise).")
        for peer in (
            None if args.no_postgres else lambda: run_postgres(sizes, peer_samples, work_dir, strategies),
            None if args.no_sqlite else lambda: run_sqlite_copy(sizes, peer_samples, work_dir),
        ):
            if peer is not None:
                more = peer()
                results.branch_rows += more.branch_rows
                results.load_rows += more.load_rows
                results.notes += more.notes
    results.branch_rows.sort(key=lambda r: r.size_bytes)
    results.notes.append(load_average_note(load_at_start, os.getloadavg()[0]))
    print_summary(results)
    publish_section(
        "branch", render_markdown(results, samples=samples, peer_samples=peer_samples),
        reasons=partial_run_reasons(parser, args), write=args.write, command="python -m bench.branch",
        title="branch: CreateTimeline vs CREATE DATABASE ... TEMPLATE vs copying a SQLite file",
    )


if __name__ == "__main__":
    main()
