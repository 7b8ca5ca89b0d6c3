"""Page reads over loopback, next to the floor (`os.pread` of the same pages from
a local file, in one process), SQLite and PostgreSQL.

    python -m bench.getpage                 # 5 s per row, 100-deep chains
    python -m bench.getpage --quick         # 0.5 s per row, 20-deep chains, BENCHMARKS.md untouched

Three workloads, each read at the latest LSN with uniformly random keys (every
page is read once first, to check its bytes; with the pageserver's page cache on,
that pass fills the cache):

- **hot**: `--hot-pages` 8 KiB pages written last (PageImage records), still in
  the pageserver's open in-memory layer (default tunables: 64 MiB checkpoint).
- **deep**: `--deep-pages` pages each written as an image and then patched
  `--depth` times (a 64-byte PagePatch per round, no image in between), each
  round its own L0 delta layer: a second pageserver runs with
  `--checkpoint-bytes 1` (every ingested WAL batch is frozen and flushed), the
  bench waits for each round to be ingested before appending the next, and the
  compaction / image / stall thresholds are set out of reach, so a read walks
  `depth + 1` layer files and applies `depth` patches to an image. This
  pageserver keeps its default page cache, so the timed reads hit it.
- **deep, page cache off**: the same chains on a third pageserver run with
  `--page-cache-bytes 0`, so every read walks the chain (`--no-uncached-deep`
  skips it). The peers' rows for it are the deep rows (the same pages).
- **deep, default compaction, page cache off**: the same chains written the
  same way (one L0 per round) to a fourth pageserver that keeps the default
  compaction, image-layer and stall settings, then one `Compact` (what its
  background compaction does on its own), page cache off: cold reads of the
  layers a default pageserver leaves (`--no-default-deep` skips it).

The "deep" verdict measures page-cache hits (the check pass fills the cache);
the two "page cache off" verdicts measure reads that walk layer files.

Readers, each for `--duration` seconds on one connection:

- Strata `GetPage`, unary, one call at a time;
- Strata `GetPages` with 1, 16 and 128 pages per message, pipelined: `--window`
  messages in flight (at most `--max-pages-in-flight` pages, at least 2
  messages) on one bidi stream (a request generator gated by a semaphore
  released as responses arrive, so the stream is not round-trip bound): latency
  is per message, send to response;
- the floor: `os.pread` of the same pages (same count, page size, keys in the
  same order, same batch sizes) from a local file the bench writes under its
  work directory, in this process, page cache warm (nothing is dropped). Two
  variants: the file opened once and every read a bare `pread` (the floor), and
  the file opened and closed around each batch ("open per request");
- SQLite (stdlib sqlite3, in this process, no network: the local-file baseline):
  `SELECT page FROM pages WHERE key = ?` for batch 1, `... WHERE key IN (...)`
  with the batch's keys otherwise, a blob per 8 KiB page, cache warm;
- PostgreSQL 15 over loopback TCP with pgbench (psycopg is not installed):
  `SELECT page FROM pages WHERE key = :k` / `key = ANY(ARRAY(...))` of the
  batch's distinct pseudo-random keys, 8 KiB bytea rows stored uncompressed
  (STORAGE EXTERNAL), prepared statements, with as many clients as the Strata
  reader it is compared with has requests in flight (1 for the unary GetPage,
  the GetPages window for each batch size): the Strata ÷ PostgreSQL ratios are
  at equal concurrency. pgbench's per-transaction log gives the latencies.
  bytea travels as hex text (16 KiB per page).

The peers store the same bytes the Strata reads return (for the deep workload:
the pages' final states). Every Strata row is reported as a ratio to the floor
(and to SQLite and PostgreSQL), and GetPages against the issue's target of
50,000 pages/s on 2 cores. Results go into BENCHMARKS.md (section `getpage`).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.postgres_peer import PostgresUnavailable, ThrowawayPostgres
from bench.report import add_work_dir_arguments, add_write_argument, partial_run_reasons, percentile, publish_section
from bench.branch import (
    PAGE_SIZE,
    exit_on_sigterm,
    layer_census,
    load_average_note,
    load_relation,
    page_bytes,
    work_directory,
)
from compute_shim import Client
from strata.page_limits import MAX_PAGES_PER_MESSAGE
from strata.v1 import page_pb2, page_pb2_grpc, records_pb2
from tests.env import StrataEnv

HOT_REL = 1
DEEP_REL = 2
PATCH_BYTES = 64
DEFAULT_BATCHES = (1, 16, 128)
UNARY = 0  # the "batch" of a unary GetPage row
TARGET_PAGES_PER_S = 50_000  # the target for GetPages, on 2 cores
PREAD = "pread"  # the floor: one fd, a bare os.pread per page
PREAD_OPEN = "pread, open per request"  # os.open + os.pread per page + os.close per batch
SYSTEM_ORDER = ("Strata", PREAD, PREAD_OPEN, "SQLite", "PostgreSQL")
DEEP_UNCACHED = "deep, page cache off"  # the deep chains on a pageserver run with --page-cache-bytes 0
# The deep chains on a pageserver with the default compaction and image-layer
# settings (Compact after loading, as its background compaction would), page cache off.
DEEP_DEFAULT = "deep, default compaction, page cache off"
WORKLOAD_ORDER = ("hot", "deep", DEEP_UNCACHED, DEEP_DEFAULT)
# What each workload's verdict measures, said next to it.
VERDICT_SCOPE = {
    "hot": "pages in the open in-memory layer",
    "deep": "page-cache hits: the check pass filled the pageserver's page cache, so no timed read walks a chain",
    DEEP_UNCACHED: "cold reads: every read walks the whole chain of L0 layer files",
    DEEP_DEFAULT: "cold reads of the layers the default compaction and image-layer settings leave",
}


def peer_workload(workload: str) -> str:
    """The peers' workload holding the same pages (the other deep rows read the deep pages)."""
    return "deep" if workload in (DEEP_UNCACHED, DEEP_DEFAULT) else workload
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
DEEP_PAGESERVER_ARGS = (
    "--checkpoint-bytes", "1",
    "--compaction-threshold", "1000000",
    "--image-threshold", "1000000",
    "--l0-stall-threshold", "1000000",
)
# One L0 per round as above, but compaction, image layers and stalls at their defaults.
DEEP_DEFAULT_PAGESERVER_ARGS = ("--checkpoint-bytes", "1", "--page-cache-bytes", "0")


@dataclass(frozen=True)
class GetPageConfig:
    hot_pages: int = 1024
    deep_pages: int = 256
    depth: int = 100
    batches: tuple[int, ...] = DEFAULT_BATCHES
    window: int = 8  # GetPages messages in flight ...
    max_pages_in_flight: int = 512  # ... but no more pages than this (at least 2 messages)
    duration_s: float = 5.0
    seed: int = 42
    uncached_deep: bool = True  # also read the deep chains on a pageserver with its page cache off
    default_deep: bool = True  # ... and on one with the default compaction / image settings, cache off

    def window_for(self, batch: int) -> int:
        return max(2, min(self.window, self.max_pages_in_flight // batch))


@dataclass(frozen=True)
class Measurement:
    latencies_s: tuple[float, ...]  # per call (unary) or per message
    pages: int
    seconds: float


@dataclass(frozen=True)
class ReadRow:
    workload: str  # "hot" or "deep"
    system: str  # "Strata", PREAD, PREAD_OPEN, "SQLite", "PostgreSQL <version>"
    method: str
    batch: int  # pages per request; UNARY for Strata GetPage
    measurement: Measurement
    concurrency: int = 1  # requests in flight: GetPages messages on the stream, pgbench clients

    @property
    def pages_per_request(self) -> int:
        return max(self.batch, 1)

    @property
    def pages_per_s(self) -> float:
        return self.measurement.pages / self.measurement.seconds if self.measurement.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.measurement.latencies_s, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.measurement.latencies_s, 99) * 1000


@dataclass
class GetPageResults:
    rows: list[ReadRow] = field(default_factory=list)
    workloads: dict[str, str] = field(default_factory=dict)  # workload -> what it is
    deep_layer_files: int = 0  # L0 layer files the deep chains span
    windows: dict[int, int] = field(default_factory=dict)  # GetPages batch -> messages in flight
    notes: list[str] = field(default_factory=list)


# -- the pages ------------------------------------------------------------------


def patch_splice(blkno: int, round_no: int, page_size: int = PAGE_SIZE) -> tuple[int, bytes]:
    """Round `round_no`'s (1-based) splice of deep page `blkno`: 64 bytes somewhere."""
    rng = random.Random(blkno << 20 | round_no)
    offset = rng.randrange(0, page_size - PATCH_BYTES + 1)
    return offset, rng.randbytes(PATCH_BYTES)


def deep_page(blkno: int, depth: int, page_size: int = PAGE_SIZE) -> bytes:
    """What a deep page reads after its image and `depth` patches (the redo rules)."""
    page = bytearray(page_bytes(DEEP_REL, blkno, page_size))
    for round_no in range(1, depth + 1):
        offset, data = patch_splice(blkno, round_no, page_size)
        page[offset : offset + len(data)] = data
    return bytes(page)


def hot_page(blkno: int) -> bytes:
    return page_bytes(HOT_REL, blkno)


def access_plan(config: GetPageConfig, npages: int) -> list[tuple[int, list[list[int]]]]:
    """The keys every reader of a workload reads, in order: (UNARY, one key per
    call) first, then (batch size, key sets) per batch size. The Strata readers
    and the pread floor cycle through the same lists."""
    rng = random.Random(config.seed)
    plan: list[tuple[int, list[list[int]]]] = [(UNARY, [[rng.randrange(npages)] for _ in range(4096)])]
    for batch in config.batches:
        size = min(batch, npages)
        plan.append((size, [rng.sample(range(npages), size) for _ in range(max(16, 4096 // size))]))
    return plan


# -- Strata ---------------------------------------------------------------------


def wait_until_flushed(client: Client, tenant_id: str, timeline_id: str, lsn: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get_timeline(tenant_id=tenant_id, timeline_id=timeline_id).disk_consistent_lsn < lsn:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timeline {timeline_id}: disk_consistent_lsn did not reach {lsn} in {timeout_s} s")
        time.sleep(0.05)


def load_deep_chains(client: Client, tenant_id: str, timeline_id: str, npages: int, depth: int) -> int:
    """Images of `npages` pages, then `depth` rounds of one patch per page, each
    round ingested before the next is appended (so each lands in its own L0
    when the pageserver freezes every batch). Returns the last LSN."""
    load = load_relation(client, tenant_id, timeline_id, rel=DEEP_REL, npages=npages, pages_per_append=npages, appends_in_flight=1)
    end_lsn = load.end_lsn
    for round_no in range(1, depth + 1):
        records = []
        for blkno in range(npages):
            offset, data = patch_splice(blkno, round_no)
            patch = records_pb2.PagePatch(rel=DEEP_REL, blkno=blkno, splices=[records_pb2.Splice(offset=offset, data=data)])
            records.append(records_pb2.Record(patch=patch))
        end_lsn = client.append(tenant_id=tenant_id, timeline_id=timeline_id, records=records).end_lsn
        client.get_rel_size(tenant_id=tenant_id, timeline_id=timeline_id, rel=DEEP_REL, lsn=end_lsn, timeout=120)
    wait_until_flushed(client, tenant_id, timeline_id, end_lsn)
    return end_lsn


def measure_unary(stub: page_pb2_grpc.PageServiceStub, requests: Sequence[page_pb2.GetPageRequest], duration_s: float, min_calls: int = 20) -> Measurement:
    latencies: list[float] = []
    start = time.perf_counter()
    now = start
    i = 0
    while now - start < duration_s or i < min_calls:
        sent = time.perf_counter()
        response = stub.GetPage(requests[i % len(requests)], timeout=60)
        now = time.perf_counter()
        if len(response.page) != PAGE_SIZE:
            raise AssertionError(f"GetPage returned {len(response.page)} bytes, expected {PAGE_SIZE}")
        latencies.append(now - sent)
        i += 1
    return Measurement(tuple(latencies), i, now - start)


def measure_stream(
    stub: page_pb2_grpc.PageServiceStub,
    messages: Sequence[page_pb2.GetPagesRequest],
    duration_s: float,
    window: int,
    min_messages: int = 10,
) -> Measurement:
    """Messages from `messages` (cycled) on one GetPages stream, at most `window`
    unanswered at a time, for `duration_s`; latency per message."""
    slots = threading.Semaphore(window)
    sent_at: deque[float] = deque()
    stop = threading.Event()

    def requests():
        i = 0
        while True:
            slots.acquire()
            if stop.is_set():
                return
            sent_at.append(time.perf_counter())
            yield messages[i % len(messages)]
            i += 1

    latencies: list[float] = []
    pages = 0
    start = time.perf_counter()
    last = start
    call = stub.GetPages(requests(), timeout=duration_s + 120)
    try:
        for response in call:
            for result in response.responses:
                if result.error_code:
                    raise AssertionError(f"GetPages answered error {result.error_code}: {result.error}")
            pages += len(response.responses)
            if response.more:  # the message's answers continue in the next response
                continue
            last = time.perf_counter()
            latencies.append(last - sent_at.popleft())
            if not stop.is_set() and last - start >= duration_s and len(latencies) >= min_messages:
                stop.set()
                slots.release()  # wake the generator so it ends the stream
            slots.release()
    finally:
        stop.set()
        slots.release()
        call.cancel()
    return Measurement(tuple(latencies), pages, last - start)


def strata_rows(
    address: str, tenant_id: str, timeline_id: str, rel: int, npages: int, workload: str, config: GetPageConfig, expected: Callable[[int], bytes]
) -> list[ReadRow]:
    """Check every page reads as expected, then time each reader."""
    rows: list[ReadRow] = []
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = page_pb2_grpc.PageServiceStub(channel)

        def request(blkno: int) -> page_pb2.GetPageRequest:
            return page_pb2.GetPageRequest(tenant_id=tenant_id, timeline_id=timeline_id, rel=rel, blkno=blkno)

        checks = [
            page_pb2.GetPagesRequest(requests=[request(b) for b in range(i, min(i + MAX_PAGES_PER_MESSAGE, npages))])
            for i in range(0, npages, MAX_PAGES_PER_MESSAGE)
        ]
        results = (result for reply in stub.GetPages(iter(checks), timeout=300) for result in reply.responses)
        for blkno, result in enumerate(results):
            if result.error_code or result.page != expected(blkno):
                raise AssertionError(f"{workload}: rel={rel} blkno={blkno} read wrong: {result.error or 'different bytes'}")

        for size, key_sets in access_plan(config, npages):
            if size == UNARY:
                unary = [request(keys[0]) for keys in key_sets]
                rows.append(ReadRow(workload, "Strata", "GetPage (unary)", UNARY, measure_unary(stub, unary, config.duration_s)))
                continue
            messages = [page_pb2.GetPagesRequest(requests=[request(b) for b in keys]) for keys in key_sets]
            window = config.window_for(size)
            measurement = measure_stream(stub, messages, config.duration_s, window)
            rows.append(ReadRow(workload, "Strata", f"GetPages stream, {window} messages in flight", size, measurement, window))
    return rows


def run_strata(config: GetPageConfig, work_dir: Path, log: bool = True) -> GetPageResults:
    results = GetPageResults()
    results.windows = {min(b, n): config.window_for(min(b, n)) for n in (config.hot_pages, config.deep_pages) for b in config.batches}
    env = StrataEnv(work_dir / "strata")
    try:
        wal = env.walservice()
        hot_ps = env.pageserver(wal, name="pageserver-hot")
        deep_ps = env.pageserver(wal, *DEEP_PAGESERVER_ARGS, name="pageserver-deep")
        with Client(pageserver=hot_ps.address, walservice=wal.address, timeout=60) as client:
            tenant = client.create_tenant(page_size=PAGE_SIZE).tenant_id
            main = client.create_timeline(tenant_id=tenant).timeline_id
            load_relation(client, tenant, main, rel=HOT_REL, npages=config.hot_pages, pages_per_append=128, appends_in_flight=4)
            info = client.get_timeline(tenant_id=tenant, timeline_id=main)
            in_memory = info.disk_consistent_lsn < info.last_record_lsn
            results.workloads["hot"] = (
                f"{config.hot_pages} pages ({config.hot_pages * PAGE_SIZE >> 20} MiB) just written as PageImage records, "
                + ("in the open in-memory layer" if in_memory else "flushed to a layer file (block cache warm)")
            )
            if log:
                print("strata: reading hot pages ...", file=sys.stderr, flush=True)
            results.rows += strata_rows(hot_ps.address, tenant, main, HOT_REL, config.hot_pages, "hot", config, hot_page)
        deep_servers = ((deep_ps, "deep", "the page cache on (default size): the check pass that reads every page first fills it, so timed reads are cache hits"),)
        if config.uncached_deep:
            uncached_ps = env.pageserver(wal, *DEEP_PAGESERVER_ARGS, "--page-cache-bytes", "0", name="pageserver-deep-uncached")
            deep_servers += ((uncached_ps, DEEP_UNCACHED, "`--page-cache-bytes 0`: every read walks the chain"),)
        if config.default_deep:
            default_ps = env.pageserver(wal, *DEEP_DEFAULT_PAGESERVER_ARGS, name="pageserver-deep-default")
            deep_servers += ((default_ps, DEEP_DEFAULT, ""),)
        for ps, workload, cache in deep_servers:
            with Client(pageserver=ps.address, walservice=wal.address, timeout=60) as client:
                tenant = client.create_tenant(page_size=PAGE_SIZE).tenant_id
                main = client.create_timeline(tenant_id=tenant).timeline_id
                if log:
                    print(f"strata ({workload}): writing {config.depth}-deep chains ...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                load_deep_chains(client, tenant, main, config.deep_pages, config.depth)
                written_s = time.perf_counter() - start
                if workload == DEEP_DEFAULT:
                    client.compact(tenant_id=tenant, timeline_id=main, timeout=600)
                    census = layer_census(ps.data_dir, tenant, main)
                    layers = census.l0_deltas + census.other_deltas + census.images
                    results.workloads[workload] = (
                        f"the same {config.deep_pages} pages and {config.depth}-patch chains, written one L0 per round "
                        f"(`--checkpoint-bytes 1`) to a pageserver with the default compaction and image-layer settings, then "
                        f"one Compact (what its background compaction does): {census} (written in {written_s:.1f} s); "
                        "`--page-cache-bytes 0`: every read walks what compaction left"
                    )
                else:
                    census = layer_census(ps.data_dir, tenant, main)
                    layers = results.deep_layer_files = census.l0_deltas
                    results.workloads[workload] = (
                        f"{config.deep_pages} pages, each an image then {config.depth} patches of {PATCH_BYTES} bytes, "
                        f"across {layers} L0 delta layer files ({census}), no image layer "
                        f"(written in {written_s:.1f} s); {cache}"
                    )
                if log:
                    print(f"strata ({workload}): reading {config.depth}-deep chains over {layers} layer files ...", file=sys.stderr, flush=True)
                results.rows += strata_rows(
                    ps.address, tenant, main, DEEP_REL, config.deep_pages, workload, config, lambda b: deep_page(b, config.depth)
                )
    finally:
        env.teardown()
    return results


# -- peers ----------------------------------------------------------------------


def peer_pages(config: GetPageConfig) -> dict[str, list[bytes]]:
    """The bytes each workload's pages read as, by block number."""
    return {
        "hot": [hot_page(b) for b in range(config.hot_pages)],
        "deep": [deep_page(b, config.depth) for b in range(config.deep_pages)],
    }


def run_pread(config: GetPageConfig, work_dir: Path, pages: dict[str, list[bytes]]) -> GetPageResults:
    """The floor: the same pages read with os.pread from a local file, in this
    process, keys in the same order as the Strata GetPages readers, page cache
    warm. Two variants per batch size: one fd for the whole run (a bare pread per
    page) and an os.open / os.close around each batch."""
    results = GetPageResults()
    for workload, contents in pages.items():
        npages = len(contents)
        path = work_dir / f"pages_{workload}.bin"
        with open(path, "wb") as f:
            for page in contents:
                f.write(page)
        fd = os.open(path, os.O_RDONLY)
        try:
            for blkno, page in enumerate(contents):  # check, and warm the page cache
                if os.pread(fd, PAGE_SIZE, blkno * PAGE_SIZE) != page:
                    raise AssertionError(f"{path}: block {blkno} reads back different bytes")
            for size, key_sets in access_plan(config, npages):
                if size == UNARY:
                    continue
                offsets = [[key * PAGE_SIZE for key in keys] for keys in key_sets]
                held = _time_in_process(lambda i: [os.pread(fd, PAGE_SIZE, o) for o in offsets[i % len(offsets)]], config.duration_s, "pread")
                results.rows.append(ReadRow(workload, PREAD, "os.pread per page, file opened once (in-process)", size, held))
                opened = _time_in_process(lambda i: _open_and_pread(path, offsets[i % len(offsets)]), config.duration_s, "pread")
                results.rows.append(ReadRow(workload, PREAD_OPEN, "os.open, os.pread per page, os.close per batch (in-process)", size, opened))
        finally:
            os.close(fd)
    return results


def _open_and_pread(path: Path, offsets: Sequence[int]) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, PAGE_SIZE, o) for o in offsets]
    finally:
        os.close(fd)


def _time_in_process(read: Callable[[int], list[bytes]], duration_s: float, peer: str) -> Measurement:
    """Time `read(i)` (a batch of pages) back to back for `duration_s` (at least 20
    calls); every batch must end with a whole page."""
    latencies: list[float] = []
    pages = 0
    start = time.perf_counter()
    now = start
    i = 0
    while now - start < duration_s or i < 20:
        sent = time.perf_counter()
        got = read(i)
        now = time.perf_counter()
        if not got or len(got[-1]) != PAGE_SIZE:
            raise AssertionError(f"{peer} returned no page or a page of the wrong size")
        latencies.append(now - sent)
        pages += len(got)
        i += 1
    return Measurement(tuple(latencies), pages, now - start)


def run_sqlite(config: GetPageConfig, work_dir: Path, pages: dict[str, list[bytes]]) -> GetPageResults:
    results = GetPageResults()
    path = work_dir / "pages.sqlite"
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA cache_size = -131072")  # 128 MiB: everything stays cached
        for workload, contents in pages.items():
            conn.execute(f"CREATE TABLE pages_{workload} (key INTEGER PRIMARY KEY, page BLOB NOT NULL)")
            with conn:
                conn.executemany(f"INSERT INTO pages_{workload} VALUES (?, ?)", enumerate(contents))
        for workload, contents in pages.items():
            npages = len(contents)
            rng = random.Random(config.seed)
            table = f"pages_{workload}"
            conn.execute(f"SELECT sum(length(page)) FROM {table}").fetchone()  # warm the cache
            for batch in config.batches:
                size = min(batch, npages)
                if size == 1:
                    keys = [rng.randrange(npages) for _ in range(4096)]
                    measurement = _time_in_process(lambda i: [conn.execute(f"SELECT page FROM {table} WHERE key = ?", (keys[i % len(keys)],)).fetchone()[0]], config.duration_s, "SQLite")
                    method = "SELECT page WHERE key = ? (in-process)"
                else:
                    key_sets = [rng.sample(range(npages), size) for _ in range(max(16, 4096 // size))]
                    query = f"SELECT page FROM {table} WHERE key IN ({','.join('?' * size)})"
                    measurement = _time_in_process(lambda i: [r[0] for r in conn.execute(query, key_sets[i % len(key_sets)])], config.duration_s, "SQLite")
                    method = "SELECT page WHERE key IN (...) (in-process)"
                results.rows.append(ReadRow(workload, "SQLite", method, size, measurement))
    finally:
        conn.close()
    return results


def _copy_text(contents: Sequence[bytes]) -> str:
    return "".join(f"{key}\t\\\\x{page.hex()}\n" for key, page in enumerate(contents)) + "\\.\n"


def pgbench_script(table: str, npages: int, batch: int) -> str:
    if batch == 1:
        return f"\\set k random(0, {npages - 1})\nSELECT page FROM {table} WHERE key = :k;\n"
    # Distinct pseudo-random keys: k + i * (odd stride), modulo a power of two.
    return (
        f"\\set k random(0, {npages - 1})\n\\set s random(0, {npages // 2 - 1})\n"
        f"SELECT page FROM {table} WHERE key = ANY(ARRAY(SELECT (:k + i * (2 * :s + 1)) % {npages} FROM generate_series(0, {batch - 1}) i));\n"
    )


def run_pgbench(
    pg: ThrowawayPostgres, database: str, script: str, duration_s: float, work_dir: Path, batch: int, clients: int = 1
) -> Measurement:
    """pgbench with `clients` connections (as many requests in flight as the Strata
    reader it is compared with), per-transaction latencies from its log."""
    script_path = work_dir / "pgbench.sql"
    script_path.write_text(script)
    prefix = work_dir / "pgbench_log"
    for old in work_dir.glob("pgbench_log*"):
        old.unlink()
    argv = [
        "pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
        "-T", str(max(1, round(duration_s))), "-f", str(script_path), "-l", f"--log-prefix={prefix}", database,
    ]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=duration_s + 120, cwd=work_dir)
    latencies: list[float] = []
    first_us = last_us = None
    for log in work_dir.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            latency_us = int(fields[2])
            end_us = int(fields[4]) * 1_000_000 + int(fields[5])
            latencies.append(latency_us / 1e6)
            first_us = end_us - latency_us if first_us is None else min(first_us, end_us - latency_us)
            last_us = end_us if last_us is None else max(last_us, end_us)
    if not latencies or first_us is None or last_us is None:
        raise RuntimeError("pgbench logged no transactions")
    return Measurement(tuple(latencies), len(latencies) * batch, (last_us - first_us) / 1e6)


def postgres_plan(config: GetPageConfig, npages: int) -> list[tuple[int, int]]:
    """(pages per statement, pgbench clients) for each Strata reader of `npages`
    pages: the same pages per request and as many requests in flight (1 for the
    unary GetPage, the GetPages window for the streams), so each Strata ÷
    PostgreSQL ratio compares equal concurrency."""
    plan = [(1, 1)] if any(min(b, npages) == 1 for b in config.batches) else []
    for batch in config.batches:
        size = min(batch, npages)
        if (size, config.window_for(size)) not in plan:
            plan.append((size, config.window_for(size)))
    return plan


def run_postgres(config: GetPageConfig, work_dir: Path, pages: dict[str, list[bytes]]) -> GetPageResults:
    results = GetPageResults()
    try:
        with ThrowawayPostgres(work_dir / "postgres") as pg:
            version = pg.version
            pg.sql("CREATE DATABASE pages")
            for workload, contents in pages.items():
                npages = len(contents)
                if npages & (npages - 1):
                    raise ValueError(f"{workload}: the PostgreSQL reader needs a power-of-two page count, got {npages}")
                table = f"pages_{workload}"
                pg.script(
                    f"CREATE TABLE {table} (key int PRIMARY KEY, page bytea NOT NULL);\n"
                    f"ALTER TABLE {table} ALTER COLUMN page SET STORAGE EXTERNAL;\n"
                    f"COPY {table} (key, page) FROM STDIN;\n" + _copy_text(contents)
                    + f"VACUUM ANALYZE {table};\nSELECT sum(length(page)) FROM {table};\n",
                    database="pages",
                )
                check = pg.sql(f"SELECT encode(page, 'hex') FROM {table} WHERE key = {npages // 2}", database="pages")
                if bytes.fromhex(check) != contents[npages // 2]:
                    raise AssertionError(f"PostgreSQL {table} holds different bytes than were copied in")
                for size, clients in postgres_plan(config, npages):
                    measurement = run_pgbench(pg, "pages", pgbench_script(table, npages, size), config.duration_s, work_dir, size, clients)
                    method = (
                        "pgbench SELECT by primary key" + (" = ANY(batch)" if size > 1 else "")
                        + f", {clients} client{'s' if clients > 1 else ''}, loopback TCP"
                    )
                    results.rows.append(ReadRow(workload, f"PostgreSQL {version}", method, size, measurement, clients))
    except PostgresUnavailable as exc:
        results.notes.append(f"PostgreSQL could not be started, so it is missing here: {exc}")
    return results


# -- report -----------------------------------------------------------------------


def _peer(rows: Sequence[ReadRow], workload: str, system: str, batch: int, concurrency: int = 1) -> ReadRow | None:
    """The peer row of `system` ("PostgreSQL" matches "PostgreSQL 15.x") at `batch`
    pages per request. PostgreSQL, a server over TCP like Strata, is matched at the
    same requests in flight too; the in-process peers (pread, SQLite) are per-request
    floors with one request at a time."""
    for row in rows:
        if row.workload == peer_workload(workload) and row.pages_per_request == batch and (row.system == system or row.system.startswith(system + " ")):
            if system == "PostgreSQL" and row.concurrency != concurrency:
                continue
            return row
    return None


def ratio_text(strata: ReadRow, peer: ReadRow | None) -> str:
    if peer is None or not peer.pages_per_s:
        return "n/a"
    return f"{strata.pages_per_s / peer.pages_per_s:.2g}x"


RATIO_PEERS = (
    (PREAD, "Strata ÷ pread (floor)"), (PREAD_OPEN, "Strata ÷ pread, open per request"), ("SQLite", "Strata ÷ SQLite"),
    ("PostgreSQL", "Strata ÷ PostgreSQL, same in flight"),
)


def ratios(results: GetPageResults, row: ReadRow) -> list[str]:
    if row.system != "Strata":
        return ["" for _ in RATIO_PEERS]
    return [ratio_text(row, _peer(results.rows, row.workload, system, row.pages_per_request, row.concurrency)) for system, _ in RATIO_PEERS]


def _system_rank(row: ReadRow) -> int:
    for rank, system in enumerate(SYSTEM_ORDER):
        if row.system == system or row.system.startswith(system + " "):
            return rank
    return len(SYSTEM_ORDER)


def sort_rows(rows: list[ReadRow]) -> None:
    order = {w: i for i, w in enumerate(WORKLOAD_ORDER)}
    rows.sort(key=lambda r: (order.get(r.workload, len(order)), r.pages_per_request, _system_rank(r), r.batch, r.concurrency))


def pipelining_text(results: GetPageResults) -> str:
    depths = ", ".join(f"{batch} pages/message: {window}" for batch, window in sorted(results.windows.items()))
    return (
        f"GetPages pipelining depth (messages in flight on the one stream, a request generator gated by a semaphore): {depths}. "
        "The pageserver answers a stream's messages one at a time, in order, so a message's latency includes its wait behind the ones ahead of it."
    )


def strata_getpages_rows(results: GetPageResults) -> Iterator[tuple[str, list[ReadRow], ReadRow]]:
    """Per workload with GetPages rows: the workload, those rows, and the fastest."""
    for workload in results.workloads:
        strata = [r for r in results.rows if r.workload == workload and r.system == "Strata" and r.batch != UNARY]
        if strata:
            yield workload, strata, max(strata, key=lambda r: r.pages_per_s)


def floor_summary(results: GetPageResults) -> list[str]:
    """Per workload: Strata's best GetPages row against the floor at the same batch size."""
    lines = []
    for workload, _, best in strata_getpages_rows(results):
        floor = _peer(results.rows, workload, PREAD, best.pages_per_request)
        if floor is None:
            continue
        lines.append(
            f"{workload}: Strata's best, GetPages at {best.batch} pages/message, {best.pages_per_s:,.0f} pages/s "
            f"(p50 {best.p50_ms:,.3f} ms), is {ratio_text(best, floor)} the pread floor's {floor.pages_per_s:,.0f} pages/s "
            f"(p50 {floor.p50_ms:,.3f} ms per {floor.batch} pages)."
        )
    return lines


def getpages_verdict(workload: str, strata: Sequence[ReadRow], cpus: int | None = None) -> str:
    """The issue's target, GetPages >= 50,000 pages/s on 2 cores, for one workload's
    GetPages rows, saying what the workload's reads are (VERDICT_SCOPE)."""
    best = max(strata, key=lambda r: r.pages_per_s)
    verdict = "met" if best.pages_per_s >= TARGET_PAGES_PER_S else "not met"
    each = ", ".join(f"batch {r.batch}: {r.pages_per_s:,.0f}" for r in strata)
    scope = VERDICT_SCOPE.get(workload)
    return (
        f"Target (GetPages >= {TARGET_PAGES_PER_S:,} pages/s on 2 cores; this machine has {cpus or os.cpu_count()} CPUs), {workload}"
        + (f" ({scope})" if scope else "")
        + f": **{verdict}**: best {best.pages_per_s:,.0f} pages/s at batch {best.batch} "
        f"({best.pages_per_s / TARGET_PAGES_PER_S:.2g}x of the target; {each} pages/s)."
    )


def target_lines(results: GetPageResults) -> list[str]:
    return [getpages_verdict(workload, strata) for workload, strata, _ in strata_getpages_rows(results)]


def render_markdown(results: GetPageResults, config: GetPageConfig) -> str:
    lines = [
        f"Page reads at the latest LSN, uniformly random keys, one connection, {config.duration_s:g} s per row. "
        "Latency is per request: a unary call, a GetPages message, a batch of `pread`s, or a SQL statement of `batch` pages. "
        "**The primary peer is the floor: `os.pread` of the same pages (same count, 8 KiB pages, the same keys in the same order "
        "as the GetPages readers, the same batch sizes) from a local file in the bench process, page cache warm** "
        f"(`{PREAD}`: the file opened once, a bare `pread` per page; `{PREAD_OPEN}`: `os.open` / `os.close` around each batch). "
        "The ratio columns are Strata's pages/s divided by the peer's at the same pages per request "
        "(the unary GetPage row is compared with batch 1). "
        "SQLite runs in-process with no network hop, one request at a time, like pread; PostgreSQL via pgbench over "
        "loopback TCP with as many clients as the Strata reader has requests in flight (1 for the unary GetPage, the "
        "stream's window for GetPages), so the Strata ÷ PostgreSQL column compares equal concurrency.",
        "",
    ]
    for workload, description in results.workloads.items():
        lines.append(f"- **{workload}**: {description}")
    lines += [
        "",
        pipelining_text(results),
        "",
        "| workload | system | reader | batch | in flight | pages/s | p50 ms | p99 ms | " + " | ".join(h for _, h in RATIO_PEERS) + " |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in RATIO_PEERS) + " |",
    ]
    for row in results.rows:
        batch = "1 (unary)" if row.batch == UNARY else str(row.batch)
        lines.append(
            f"| {row.workload} | {row.system} | {row.method} | {batch} | {row.concurrency} | {row.pages_per_s:,.0f} | {row.p50_ms:,.3f} | {row.p99_ms:,.3f} | "
            + " | ".join(ratios(results, row)) + " |"
        )
    summary = floor_summary(results) + target_lines(results)
    if summary:
        lines += [""] + [f"- {line}" for line in summary]
    for note in results.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def print_summary(results: GetPageResults) -> None:
    short = ("vs pread", "vs pread+open", "vs SQLite", "vs PG")
    print(f"{'workload':<20} {'system':<24} {'batch':>9} {'pages/s':>10} {'p50 ms':>9} {'p99 ms':>9} " + " ".join(f"{h:>13}" for h in short) + "  reader")
    for row in results.rows:
        batch = "1 (unary)" if row.batch == UNARY else str(row.batch)
        print(
            f"{row.workload:<20} {row.system:<24} {batch:>9} {row.pages_per_s:>10,.0f} {row.p50_ms:>9.3f} {row.p99_ms:>9.3f} "
            + " ".join(f"{r:>13}" for r in ratios(results, row)) + f"  {row.method}"
        )
    print(pipelining_text(results))
    for line in floor_summary(results) + target_lines(results):
        print(line.replace("**", ""))
    for note in results.notes:
        print(note)


def _power_of_two(text: str) -> int:
    value = int(text)
    if value < 2 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"wants a power of two of at least 2 (the PostgreSQL reader's key trick needs it), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = GetPageConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.getpage",
        description="Pages/s and latency of Strata GetPage / GetPages (hot pages and deep delta chains) against the floor "
        "(os.pread of the same pages from a local file, in one process), SQLite and PostgreSQL reads of the same pages, "
        "written into BENCHMARKS.md (section 'getpage').",
    )
    parser.add_argument("--duration", type=float, default=d.duration_s, help=f"seconds per row (default {d.duration_s:g})")
    parser.add_argument("--hot-pages", type=_power_of_two, default=d.hot_pages, help=f"hot pages, a power of two (default {d.hot_pages})")
    parser.add_argument("--deep-pages", type=_power_of_two, default=d.deep_pages, help=f"deep-chain pages, a power of two (default {d.deep_pages})")
    parser.add_argument("--depth", type=int, default=d.depth, help=f"patches per deep page, each in its own L0 layer (default {d.depth})")
    parser.add_argument("--batches", default=",".join(map(str, d.batches)), help="GetPages batch sizes (default 1,16,128)")
    parser.add_argument("--window", type=int, default=d.window, help=f"GetPages messages in flight on the stream (default {d.window})")
    parser.add_argument("--max-pages-in-flight", type=int, default=d.max_pages_in_flight,
                        help=f"... capped at this many pages in flight, with at least 2 messages (default {d.max_pages_in_flight})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.5 s per row, 20-deep chains; BENCHMARKS.md untouched")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL peer")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite peer")
    parser.add_argument("--no-pread", action="store_true", help="skip the pread floor (the primary peer)")
    parser.add_argument("--no-uncached-deep", action="store_true",
                        help="skip the deep chains on a pageserver with --page-cache-bytes 0 (every read walks the chain)")
    parser.add_argument("--no-default-deep", action="store_true",
                        help="skip the deep chains on a pageserver with the default compaction / image settings (page cache off)")
    add_write_argument(parser)
    add_work_dir_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    exit_on_sigterm()
    batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    if any(b > MAX_PAGES_PER_MESSAGE for b in batches):
        raise SystemExit(f"--batches: a GetPages message carries at most {MAX_PAGES_PER_MESSAGE} pages")
    config = GetPageConfig(
        hot_pages=args.hot_pages,
        deep_pages=args.deep_pages,
        depth=min(args.depth, 20) if args.quick else args.depth,
        batches=batches,
        window=args.window,
        max_pages_in_flight=args.max_pages_in_flight,
        duration_s=min(args.duration, 0.5) if args.quick else args.duration,
        uncached_deep=not args.no_uncached_deep,
        default_deep=not args.no_default_deep,
    )
    load_at_start = os.getloadavg()[0]
    with work_directory(args.work_dir, args.keep) as work_dir:
        results = run_strata(config, work_dir)
        pages = peer_pages(config)
        for enabled, peer in ((not args.no_pread, run_pread), (not args.no_sqlite, run_sqlite), (not args.no_postgres, run_postgres)):
            if enabled:
                print(f"{peer.__name__} ...", file=sys.stderr, flush=True)
                more = peer(config, work_dir, pages)
                results.rows += more.rows
                results.notes += more.notes
    results.notes.append(load_average_note(load_at_start, os.getloadavg()[0]))
    sort_rows(results.rows)
    print_summary(results)
    publish_section(
        "getpage", render_markdown(results, config), reasons=partial_run_reasons(parser, args), write=args.write,
        command="python -m bench.getpage", title="getpage: GetPage / GetPages vs the pread floor, SQLite and PostgreSQL reads",
    )


if __name__ == "__main__":
    main()
