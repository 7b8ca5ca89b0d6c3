"""Durable appends, side by side with PostgreSQL commits on the same disk.

    python -m bench.wal_append                   # 5 s per configuration, best of 2 rounds, writes BENCHMARKS.md
    python -m bench.wal_append --quick           # 2 s per configuration, 1 round, BENCHMARKS.md untouched
    python -m bench.wal_append --target H:P      # an already running walservice
    python -m bench.wal_append --target A,B,C    # an already running cluster (appends follow the leader)
    python -m bench.wal_append --no-postgres     # Strata only
    python -m bench.wal_append --replication     # 1 node vs a 3-node cluster, and the stall when the leader dies

For each number of concurrent writers (1, 8, 64) and records per commit (1, 16),
each configuration for `--duration` seconds after `--warmup` seconds of the
same load, untimed, on both systems alike (Strata's writers start `--warmup`
seconds before the window; pgbench runs `--warmup` + `--duration` seconds and
only the transactions that end inside the window count), first on
Strata and right after on PostgreSQL, the whole sequence `--rounds` times, keeping
each system's best round per configuration (on a shared machine, other work only
ever slows a round down; the notes say how far apart the rounds were):

- **Strata**: appends over loopback gRPC, each record a `PagePatch` with one
  200-byte splice (8 KiB pages; writer i patches block i of relation 1 at a
  rotating offset). An append is acknowledged only after `fdatasync`, so one
  append is one durable commit. The writers are asyncio tasks, each with one
  append in flight, spread over `--client-processes` processes; each process's
  writers share one `compute_shim.WalWriter`, which packs their appends into
  the messages of one `AppendStream`, about 64 KiB each (how a compute's
  sessions share its WAL connection; each append keeps its own LSNs, condition
  and answer).
  Requests are serialized once up front, so the client spends its CPU on gRPC,
  not on protobuf. The benchmark starts its own
  walservice (data dir under the work directory) unless `--target` names one;
  each configuration gets a fresh timeline. On a `--target` (someone's own
  stack) each timeline is deleted (DeleteTimeline) right after it is measured.
- **PostgreSQL 15**: a throwaway cluster (initdb as the unprivileged `postgres`
  OS user when run as root, random loopback port, `fsync=on`,
  `synchronous_commit=on`, everything else default but a large `max_wal_size`)
  in the same work directory, so on the same disk. pgbench over loopback TCP,
  `-M prepared -c N -j min(N, 2)`, one `INSERT INTO t (payload) VALUES (...)`
  of a 200-character text per transaction, or one 16-row INSERT (one commit)
  for 16 records; `t` has no index; it is truncated and checkpointed before
  each configuration. Latencies come from pgbench's per-transaction log.
  If PostgreSQL cannot be started, the table says why and shows Strata alone.

Commits/s counts calls (Appends, transactions) completed in the window; MB/s is
the records' 200-byte payloads; p50/p99 is per call, client side. CPU columns
say how busy the machine's CPUs were during the window and how many cores the
server process(es) and the client(s) used: on a small machine the client
competes with the server, and the table says so.

Results go into BENCHMARKS.md (section `wal_append`) through bench/report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench.postgres_peer import PGBENCH, PostgresUnavailable, ThrowawayPostgres
from strata.grpc_channels import open_channel
from bench.report import NEUTRAL_OPTIONS, add_work_dir_arguments, add_write_argument, partial_run_reasons, percentile, publish_section
from compute_shim.wal_writer import WalWriter
from strata import ids
from strata.local_process import NotListening, free_port, start_logged, wait_listening
from strata.v1 import records_pb2, wal_pb2

PAGE_SIZE = 8192
PAYLOAD_BYTES = 200
BENCH_REL = 1
WRITER_COUNTS = (1, 8, 64)
BATCH_SIZES = (1, 16)
DEFAULT_DURATION_S = 5.0
QUICK_DURATION_S = 2.0
DEFAULT_WARMUP_S = 1.0
QUICK_WARMUP_S = 0.5
DEFAULT_ROUNDS = 2
TARGET_WRITERS = 64
CREATE_TIMELINE_METHOD = "/strata.v1.WalService/CreateTimeline"
# Distinct requests each writer cycles through (rotating splice offsets).
REQUESTS_PER_WRITER = 16
MB = 1_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# One payload for every record of both systems: 200 printable bytes.
PAYLOAD = (b"strata wal_append bench payload 0123456789 " * 8)[:PAYLOAD_BYTES]


# -- numbers ------------------------------------------------------------------


@dataclass
class CpuUse:
    """CPU use over a measurement window: how busy the whole machine was (0..1 of
    all CPUs) and how many cores the server and the client processes used."""

    machine_busy: float = math.nan
    server_cores: float = math.nan
    client_cores: float = math.nan


@dataclass
class Measurement:
    """One (system, writers, records per commit) run."""

    system: str
    writers: int
    batch: int
    commits: int
    seconds: float
    latencies_s: list[float] = field(repr=False, default_factory=list)
    cpu: CpuUse = field(default_factory=CpuUse)

    @property
    def records(self) -> int:
        return self.commits * self.batch

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.records_per_s * PAYLOAD_BYTES / MB

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_s, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_s, 99) * 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "writers": self.writers,
            "batch": self.batch,
            "commits": self.commits,
            "seconds": self.seconds,
            "commits_per_s": self.commits_per_s,
            "records_per_s": self.records_per_s,
            "mb_per_s": self.mb_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "machine_cpu_busy": self.cpu.machine_busy,
            "server_cores": self.cpu.server_cores,
            "client_cores": self.cpu.client_cores,
        }


@dataclass
class WalAppendResults:
    strata: list[Measurement] = field(default_factory=list)
    postgres: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    postgres_version: str = ""

    def find(self, rows: list[Measurement], writers: int, batch: int) -> Measurement | None:
        for row in rows:
            if (row.writers, row.batch) == (writers, batch):
                return row
        return None


# -- CPU accounting -------------------------------------------------------------


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _process_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    after_name = stat.rsplit(")", 1)[1].split()
    return int(after_name[11]) + int(after_name[12])


def _process_tree(root_pid: int) -> list[int]:
    """root_pid and its direct children (PostgreSQL's postmaster and its backends)."""
    pids = [root_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root_pid:
                pids.append(int(entry.name))
    return pids


class CpuWindow:
    """Samples CPU counters at a window's start and end, on a thread: machine-wide
    busy share and the cores used by the server and client process groups."""

    def __init__(self, server_pids: Callable[[], list[int]] | None, client_pids: Callable[[], list[int]] | None) -> None:
        self.server_pids = server_pids
        self.client_pids = client_pids
        self.result = CpuUse()
        self._thread: threading.Thread | None = None

    def _sample(self) -> tuple[float, tuple[int, int], dict[int, int], dict[int, int]]:
        server = {p: _process_ticks(p) for p in self.server_pids()} if self.server_pids else {}
        client = {p: _process_ticks(p) for p in self.client_pids()} if self.client_pids else {}
        return time.monotonic(), _machine_ticks(), server, client

    def start(self, window_start: float, window_end: float) -> None:
        """Sample at the monotonic times `window_start` and `window_end` (in the background)."""

        def run() -> None:
            time.sleep(max(0.0, window_start - time.monotonic()))
            t0, (busy0, total0), server0, client0 = self._sample()
            time.sleep(max(0.0, window_end - time.monotonic()))
            t1, (busy1, total1), server1, client1 = self._sample()
            elapsed = max(t1 - t0, 1e-9)

            def cores(before: dict[int, int], after: dict[int, int]) -> float:
                # A process that appeared inside the window (a late backend) counts whole.
                ticks = sum(after[p] - before.get(p, 0) for p in after)
                return ticks / CLOCK_TICKS / elapsed

            self.result = CpuUse(
                machine_busy=(busy1 - busy0) / max(total1 - total0, 1),
                server_cores=cores(server0, server1) if self.server_pids else math.nan,
                client_cores=cores(client0, client1) if self.client_pids else math.nan,
            )

        self._thread = threading.Thread(target=run, name="cpu-window", daemon=True)
        self._thread.start()

    def join(self) -> CpuUse:
        if self._thread is not None:
            self._thread.join()
        return self.result


# -- Strata ---------------------------------------------------------------------


def append_request_bytes(tenant_id: str, timeline_id: str, writer: int, batch: int, variant: int) -> bytes:
    """A serialized AppendRequest: `batch` PagePatch records, one 200-byte splice each,
    on block `writer` of the bench relation."""
    records = []
    for i in range(batch):
        offset = ((variant * batch + i) * PAYLOAD_BYTES) % (PAGE_SIZE - PAYLOAD_BYTES)
        patch = records_pb2.PagePatch(rel=BENCH_REL, blkno=writer, splices=[records_pb2.Splice(offset=offset, data=PAYLOAD)])
        records.append(records_pb2.Record(patch=patch))
    return wal_pb2.AppendRequest(tenant_id=tenant_id, timeline_id=timeline_id, records=records).SerializeToString()


def record_bytes() -> int:
    """The serialized size of one bench record (what the walservice stores per frame)."""
    record = records_pb2.Record(patch=records_pb2.PagePatch(rel=BENCH_REL, blkno=63, splices=[records_pb2.Splice(offset=7800, data=PAYLOAD)]))
    return record.ByteSize()


@dataclass
class WriterTally:
    """What one client process's writers did inside the window."""

    commits: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def drive_writers(
    address: str,
    tenant_id: str,
    timeline_id: str,
    writer_ids: Sequence[int],
    batch: int,
    window_start: float,
    window_end: float,
) -> WriterTally:
    """Run one Append at a time per writer until `window_end` (monotonic); count the
    Appends that complete inside [window_start, window_end] and their latencies."""
    tally = WriterTally()
    # The process's writers share one WalWriter: one AppendStream, their appends
    # packed into its messages (each append still its own durable batch).
    async with WalWriter(address) as wal:

        async def writer(writer_id: int) -> None:
            requests = [append_request_bytes(tenant_id, timeline_id, writer_id, batch, v) for v in range(REQUESTS_PER_WRITER)]
            n = 0
            while True:
                sent = time.monotonic()
                if sent >= window_end:
                    return
                response = await wal.append_serialized(requests[n % REQUESTS_PER_WRITER], tenant_id=tenant_id, timeline_id=timeline_id)
                done = time.monotonic()
                n += 1
                if len(response.record_lsns) != batch or response.end_lsn <= response.start_lsn:
                    raise RuntimeError(f"Append answered {response} for a batch of {batch} records")
                if window_start <= done <= window_end:
                    tally.commits += 1
                    tally.latencies_s.append(done - sent)

        results = await asyncio.gather(*(writer(w) for w in writer_ids), return_exceptions=True)
    tally.errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return tally


def _client_process(
    conn: Connection,
    start: Any,
    address: str,
    tenant_id: str,
    timeline_id: str,
    writer_ids: list[int],
    batch: int,
    warmup_s: float,
    duration_s: float,
) -> None:
    """A client process (multiprocessing target): wait for every process to be
    ready, then drive its share of the writers and send back its tally."""
    try:
        conn.send(("ready", os.getpid()))
        start.wait()
        t0 = time.monotonic()
        tally = asyncio.run(
            drive_writers(address, tenant_id, timeline_id, writer_ids, batch, t0 + warmup_s, t0 + warmup_s + duration_s)
        )
        conn.send(("done", tally))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def measure_strata(
    address: str,
    tenant_id: str,
    timeline_id: str,
    writers: int,
    batch: int,
    duration_s: float,
    warmup_s: float,
    client_processes: int = 1,
    server_pid: int | None = None,
) -> Measurement:
    """Appends/s and latency of `writers` concurrent writers for `duration_s` seconds."""
    processes = max(1, min(client_processes, writers))
    groups = [list(range(writers))[i::processes] for i in range(processes)]
    server_pids = (lambda: [server_pid]) if server_pid else None
    if processes == 1:
        cpu = CpuWindow(server_pids, lambda: [os.getpid()])
        t0 = time.monotonic()
        cpu.start(t0 + warmup_s, t0 + warmup_s + duration_s)
        tally = asyncio.run(drive_writers(address, tenant_id, timeline_id, groups[0], batch, t0 + warmup_s, t0 + warmup_s + duration_s))
        tallies = [tally]
    else:
        tallies, cpu = _run_client_processes(address, tenant_id, timeline_id, groups, batch, duration_s, warmup_s, server_pids)
    errors = [e for t in tallies for e in t.errors]
    if errors:
        raise RuntimeError(f"{len(errors)} of {writers} writers failed; first: {errors[0]}")
    return Measurement(
        system="Strata",
        writers=writers,
        batch=batch,
        commits=sum(t.commits for t in tallies),
        seconds=duration_s,
        latencies_s=[s for t in tallies for s in t.latencies_s],
        cpu=cpu.join(),
    )


def _run_client_processes(
    address: str,
    tenant_id: str,
    timeline_id: str,
    groups: list[list[int]],
    batch: int,
    duration_s: float,
    warmup_s: float,
    server_pids: Callable[[], list[int]] | None,
) -> tuple[list[WriterTally], CpuWindow]:
    """Spawn one client process per writer group; their tallies, and the CPU use in the window."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for group in groups:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_client_process,
                args=(child_end, start, address, tenant_id, timeline_id, group, batch, warmup_s, duration_s),
                daemon=True,
            )
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
        pids = []
        for proc, conn in workers:
            if not conn.poll(60):
                raise RuntimeError("a client process did not start within 60 s")
            kind, value = conn.recv()
            if kind != "ready":
                raise RuntimeError(f"a client process failed while starting: {value}")
            pids.append(value)
        cpu = CpuWindow(server_pids, lambda: pids)
        t0 = time.monotonic()
        start.set()
        cpu.start(t0 + warmup_s, t0 + warmup_s + duration_s)
        tallies: list[WriterTally] = []
        for proc, conn in workers:
            if not conn.poll(warmup_s + duration_s + 120):
                raise RuntimeError("a client process did not finish in time")
            kind, value = conn.recv()
            if kind != "done":
                raise RuntimeError(f"a client process failed: {value}")
            tallies.append(value)
        return tallies, cpu
    finally:
        for proc, conn in workers:
            conn.close()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def create_timeline(address: str, tenant_id: str, timeline_id: str) -> None:
    """CreateTimeline on `address`: one node, or a cluster `A,B,C` (through the
    cluster-aware Client, which follows the leader and retries the idempotent call)."""
    if "," in address:
        from compute_shim import Client

        with Client(walservice=address, timeout=30) as client:
            client.wal_create_timeline(tenant_id=tenant_id, timeline_id=timeline_id, start_lsn=0, page_size=PAGE_SIZE)
        return
    with open_channel(address, []) as channel:  # TLS when $STRATA_TLS_CA names a CA (strata/tls.py)
        create = channel.unary_unary(
            CREATE_TIMELINE_METHOD,
            request_serializer=wal_pb2.WalTimeline.SerializeToString,
            response_deserializer=wal_pb2.WalStatus.FromString,
        )
        create(wal_pb2.WalTimeline(tenant_id=tenant_id, timeline_id=timeline_id, start_lsn=0, page_size=PAGE_SIZE), timeout=30)


def delete_timeline(address: str, tenant_id: str, timeline_id: str) -> None:
    """DeleteTimeline on `address` (one node, or every node of a cluster `A,B,C`):
    its segments, and its offloaded WAL, go."""
    from compute_shim import Client

    with Client(walservice=address, timeout=60) as client:
        client.wal_delete_timeline(tenant_id=tenant_id, timeline_id=timeline_id)


class WalserviceProcess:
    """A walservice started by the bench, on a free loopback port; its log next to its data."""

    def __init__(self, data_dir: Path, listen: str = "127.0.0.1:0", extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log" if extra_args else data_dir.parent / "walservice.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.listen = listen
        self.extra_args = list(extra_args)

    def __enter__(self) -> WalserviceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "walservice", "--listen", self.listen, "--data-dir", str(self.data_dir), *self.extra_args]
        self.log_path.unlink(missing_ok=True)  # a fresh log per start
        started = start_logged(argv, self.log_path)
        self.proc = started.proc
        try:
            self.address = wait_listening(started, 30)
        except NotListening:
            log_tail = self.log_path.read_text(errors="replace")[-2000:]
            self.__exit__()
            raise RuntimeError(f"the walservice did not start listening: {log_tail}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def _walservice(work_dir: Path, target: str | None) -> Iterator[tuple[str, int | None]]:
    if target is not None:
        yield target, None
        return
    with WalserviceProcess(work_dir / "walservice" / "data") as service:
        assert service.proc is not None
        yield service.address, service.proc.pid


# -- replication: 1 node vs a 3-node cluster ------------------------------------------


@contextmanager
def walservice_nodes(work_dir: Path, nodes: int) -> Iterator[list[WalserviceProcess]]:
    """`nodes` walservice processes: one plain node, or a cluster (--node-id/--peers)."""
    if nodes == 1:
        with WalserviceProcess(work_dir / "single" / "data") as service:
            yield [service]
        return
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(nodes)]
    started: list[WalserviceProcess] = []
    try:
        for i, address in enumerate(addresses, start=1):
            proc = WalserviceProcess(
                work_dir / "cluster" / f"node{i}", listen=address, extra_args=["--node-id", str(i), "--peers", ",".join(addresses)]
            )
            started.append(proc.__enter__())
        yield started
    finally:
        for proc in reversed(started):
            proc.__exit__()


def leader_of(nodes: list[WalserviceProcess], tenant_id: str, timeline_id: str) -> WalserviceProcess:
    """Create the timeline, append once through the leader-following client (which
    elects a leader on a cluster) and return the leader."""
    from compute_shim import Client

    client = Client(walservice=",".join(n.address for n in nodes), timeout=30)
    try:
        client.wal_create_timeline(tenant_id=tenant_id, timeline_id=timeline_id, start_lsn=0, page_size=PAGE_SIZE)
        request = wal_pb2.AppendRequest.FromString(append_request_bytes(tenant_id, timeline_id, 0, 1, 0))
        client.append(tenant_id=tenant_id, timeline_id=timeline_id, records=request.records)
        leader = client.status(tenant_id=tenant_id, timeline_id=timeline_id).leader_node_id
    finally:
        client.close()
    return nodes[leader - 1] if len(nodes) > 1 else nodes[0]


@dataclass
class FailoverStall:
    """Appends from `writers` leader-following clients while the leader is SIGKILLed."""

    writers: int
    stall_s: float  # from the kill to the first acknowledged Append after it
    acked_before: int
    acked_after: int
    failed: int  # Appends answered with an error (in flight at the kill: outcome unknown)


def measure_failover(nodes: list[WalserviceProcess], tenant_id: str, writers: int, before_s: float, after_s: float) -> FailoverStall:
    from compute_shim import Client

    timeline_id = ids.new_id()
    leader = leader_of(nodes, tenant_id, timeline_id)
    acks: list[float] = []
    failed = [0]
    lock = threading.Lock()
    stop = threading.Event()
    addresses = ",".join(n.address for n in nodes)

    def writer(writer_id: int) -> None:
        client = Client(walservice=addresses, timeout=10)
        records = wal_pb2.AppendRequest.FromString(append_request_bytes(tenant_id, timeline_id, writer_id, 1, 0)).records
        while not stop.is_set():
            try:
                client.append(tenant_id=tenant_id, timeline_id=timeline_id, records=records)
                with lock:
                    acks.append(time.monotonic())
            except grpc.RpcError:
                with lock:
                    failed[0] += 1
                time.sleep(0.01)
        client.close()

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    time.sleep(before_s)
    assert leader.proc is not None
    leader.proc.kill()
    leader.proc.wait()
    killed = time.monotonic()
    time.sleep(after_s)
    stop.set()
    for t in threads:
        t.join(30)
    after = [t for t in acks if t > killed]
    stall = (min(after) - killed) if after else math.inf
    return FailoverStall(writers, stall, sum(1 for t in acks if t <= killed), len(after), failed[0])


@dataclass
class ReplicationResults:
    single: list[Measurement] = field(default_factory=list)
    cluster: list[Measurement] = field(default_factory=list)
    failover: FailoverStall | None = None
    notes: list[str] = field(default_factory=list)


def run_replication(
    writer_counts: Sequence[int], duration_s: float, warmup_s: float, *, work_dir: Path, failover_s: float = 3.0, log: bool = True
) -> ReplicationResults:
    """Appends of one record at 1, 8, 64 writers against one node and against the
    leader of a 3-node cluster (each configuration a fresh timeline), then the
    stall when the cluster's leader is SIGKILLed under 8 writers."""
    results = ReplicationResults()
    tenant_id = ids.new_id()
    for count, rows in ((1, results.single), (3, results.cluster)):
        with walservice_nodes(work_dir / f"n{count}", count) as nodes:
            for writers in writer_counts:
                timeline_id = ids.new_id()
                leader = leader_of(nodes, tenant_id, timeline_id)
                if log:
                    print(f"replication: {count} node(s), {writers} writers, {duration_s:g} s ...", file=sys.stderr, flush=True)
                assert leader.proc is not None
                rows.append(measure_strata(leader.address, tenant_id, timeline_id, writers, 1, duration_s, warmup_s, 1, leader.proc.pid))
            if count == 3:
                if log:
                    print("replication: killing the leader under 8 writers ...", file=sys.stderr, flush=True)
                results.failover = measure_failover(nodes, tenant_id, 8, failover_s / 2, failover_s)
    results.notes.append(
        "Both halves: one walservice process per node on this machine (the writers reach the leader over loopback "
        "gRPC, the leader its followers over its PeerAppend TCP connections; each node fsyncs its own "
        "files on the same disk); the writers append one record per call to the leader (a cluster acknowledges "
        "once the leader and one follower have fsync'd). One fresh timeline per configuration."
    )
    return results


def render_replication(results: ReplicationResults, *, duration_s: float, warmup_s: float) -> str:
    lines = [
        f"Durable Appends of one record, {duration_s:g} s per configuration after {warmup_s:g} s of warm-up. "
        "Target: 3-node p50 at most 2x single-node.",
        "",
        "| writers | 1 node commits/s | 1 node p50 / p99 ms | 3 nodes commits/s | 3 nodes p50 / p99 ms | 3-node p50 / 1-node p50 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for one, three in zip(results.single, results.cluster):
        ratio = three.p50_ms / one.p50_ms if one.p50_ms else math.nan
        lines.append(
            f"| {one.writers} | {_fmt(one.commits_per_s)} | {_latency(one)} | {_fmt(three.commits_per_s)} | "
            f"{_latency(three)} | {ratio:.2f}x |"
        )
    worst = max((t.p50_ms / o.p50_ms for o, t in zip(results.single, results.cluster) if o.p50_ms), default=math.nan)
    lines += ["", f"Target {'met' if worst <= 2 else 'not met'}: the worst 3-node/1-node p50 ratio is {worst:.2f}x."]
    if results.failover is not None:
        f = results.failover
        lines += [
            "",
            f"Leader killed (SIGKILL) under {f.writers} leader-following writers: appends stalled {f.stall_s:.2f} s "
            f"(kill to the first acknowledged Append after it; {f.acked_before} acknowledged before, {f.acked_after} "
            f"after, {f.failed} answered with an error: in flight at the kill, or refused while no leader was elected). "
            "Documented bound: LEADER_LEASE_S (1 s) + a vote round (docs/design/0005-replication.md).",
        ]
    lines += ["", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines) + "\n"


# -- PostgreSQL -----------------------------------------------------------------


def insert_script(batch: int) -> str:
    """A pgbench script: one INSERT of `batch` rows of the 200-character payload (one commit)."""
    literal = "'" + PAYLOAD.decode() + "'"
    rows = ", ".join(f"({literal})" for _ in range(batch))
    return f"INSERT INTO t (payload) VALUES {rows};\n"




def measure_postgres(
    pg: ThrowawayPostgres, clients: int, batch: int, duration_s: float, scratch: Path, warmup_s: float = 0.0
) -> Measurement:
    """pgbench -c `clients` with the INSERT script of `batch` rows, warmed like
    Strata: it runs `warmup_s` + `duration_s` seconds and only the transactions
    that end inside the last `duration_s` (by its per-transaction log's
    timestamps) count, for commits/s and latency alike."""
    pg.sql("TRUNCATE t")
    pg.sql("CHECKPOINT")
    run_dir = scratch / f"pgbench-{clients}x{batch}"
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "insert.sql"
    script.write_text(insert_script(batch))
    seconds = max(1, math.ceil(warmup_s + duration_s))
    argv = [
        PGBENCH, *pg.connection_args(), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
        "-T", str(seconds), "-f", str(script), "--log", f"--log-prefix={run_dir / 'txn'}", "postgres",
    ]
    postmaster = pg.postmaster_pid
    cpu = CpuWindow(lambda: _process_tree(postmaster), None)
    children_before = os.times()
    t0, wall0 = time.monotonic(), time.time()
    window_start = wall0 + warmup_s
    # CPU sampled in the same window as the counted transactions.
    cpu.start(t0 + warmup_s, t0 + warmup_s + duration_s)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, cwd=run_dir)
    children_after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr[-1500:]}")
    ends: list[float] = []
    latencies = []
    for log_file in run_dir.glob("txn.*"):
        for line in log_file.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6:
                end = int(parts[4]) + int(parts[5]) / 1e6
                if window_start <= end <= window_start + duration_s:
                    ends.append(end)
                    latencies.append(int(parts[2]) / 1e6)
    if not ends:
        raise RuntimeError(f"pgbench logged no transaction inside the measured window:\n{proc.stdout[-1500:]}")
    # The window ends where pgbench stopped, if that came first (its -T counts from after connecting).
    window_s = min(duration_s, max(ends) - window_start)
    use = cpu.join()
    pgbench_cpu = (children_after.children_user + children_after.children_system) - (children_before.children_user + children_before.children_system)
    use.client_cores = pgbench_cpu / seconds
    shutil.rmtree(run_dir, ignore_errors=True)
    return Measurement("PostgreSQL", clients, batch, len(ends), window_s, latencies, use)


@contextmanager
def postgres_peer(work_dir: Path, notes: list[str]) -> Iterator[tuple[ThrowawayPostgres, str] | None]:
    """A started PostgreSQL with the bench table, and its version; None
    (with a note saying why) when it cannot be started here."""
    try:
        pg = ThrowawayPostgres(work_dir / "postgres", clients=("psql", PGBENCH)).__enter__()
    except PostgresUnavailable as exc:
        message = f"PostgreSQL could not be started, so it is missing from this table: {exc}"
        print(message, file=sys.stderr, flush=True)
        notes.append(message)
        yield None
        return
    try:
        version = pg.sql("SHOW server_version").split()[0]
        pg.sql("CREATE TABLE t (payload text)")
        settings = pg.sql(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN "
            "('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes', 'commit_delay', 'shared_buffers', 'wal_buffers')"
        )
        notes.append(
            f"PostgreSQL {version}: throwaway cluster in `{pg.root}` ({settings}); pgbench -M prepared -c N -j min(N, 2) "
            "over loopback TCP; table `t (payload text)` without index, truncated and checkpointed before each configuration."
        )
        yield pg, version
    finally:
        pg.stop()


def best_rounds(rounds: list[Measurement]) -> tuple[list[Measurement], float]:
    """Per (writers, batch), the round with the most commits/s; and the largest
    spread between a configuration's rounds, as a share of its best."""
    best: dict[tuple[int, int], Measurement] = {}
    worst: dict[tuple[int, int], float] = {}
    for m in rounds:
        key = (m.writers, m.batch)
        if key not in best or m.commits_per_s > best[key].commits_per_s:
            best[key] = m
        worst[key] = min(worst.get(key, math.inf), m.commits_per_s)
    spread = max((1 - worst[k] / best[k].commits_per_s for k in best if best[k].commits_per_s), default=0.0)
    return list(best.values()), spread


def run_benchmark(
    configs: Sequence[tuple[int, int]],
    duration_s: float,
    warmup_s: float,
    *,
    work_dir: Path,
    target: str | None = None,
    client_processes: int = 1,
    postgres: bool = True,
    rounds: int = 1,
    log: bool = True,
) -> WalAppendResults:
    """Every (writers, batch) configuration on Strata, then right after on PostgreSQL,
    so both see the machine in the same state; all of it `rounds` times, keeping each
    system's best round per configuration (other work on a shared machine only ever
    slows a round down). Strata is `target` or a walservice started with its data
    under `work_dir`; a fresh timeline per configuration and round."""
    results = WalAppendResults()
    if not postgres:
        results.notes.append("PostgreSQL was skipped (--no-postgres).")
    strata_rounds: list[Measurement] = []
    postgres_rounds: list[Measurement] = []
    with _walservice(work_dir, target) as (address, server_pid), (
        postgres_peer(work_dir, results.notes) if postgres else nullcontext()
    ) as peer:
        if peer is not None:
            pg, results.postgres_version = peer
        tenant_id = ids.new_id()
        for round_index in range(rounds):
            for writers, batch in configs:
                timeline_id = ids.new_id()
                create_timeline(address, tenant_id, timeline_id)
                if log:
                    print(f"round {round_index + 1}/{rounds} strata: {writers} writers x {batch} records/commit, {duration_s:g} s ...", file=sys.stderr, flush=True)
                try:
                    strata_rounds.append(
                        measure_strata(address, tenant_id, timeline_id, writers, batch, duration_s, warmup_s, client_processes, server_pid)
                    )
                finally:
                    if target is not None:
                        # Someone's own walservice: leave nothing of the bench's WAL in it.
                        delete_timeline(address, tenant_id, timeline_id)
                if peer is not None:
                    if log:
                        print(f"round {round_index + 1}/{rounds} postgres: {writers} clients x {batch} rows/commit, {duration_s:g} s ...", file=sys.stderr, flush=True)
                    postgres_rounds.append(measure_postgres(pg, writers, batch, duration_s, work_dir / "pgbench", warmup_s))
    results.strata, strata_spread = best_rounds(strata_rounds)
    results.postgres, postgres_spread = best_rounds(postgres_rounds)
    if target and "," in target:
        where = f"an existing walservice cluster at {target} (appends go to each timeline's leader)"
    elif target:
        where = f"an existing walservice at {target}"
    else:
        where = f"a walservice started by the bench, data in `{work_dir}`"
    results.notes.insert(
        0,
        f"Strata: {where}; {client_processes} client process(es) with grpc.aio, each process's writers sharing one `compute_shim.WalWriter` (one AppendStream; each append its own durable batch); one timeline per configuration; "
        f"each record a PagePatch of one {PAYLOAD_BYTES}-byte splice ({record_bytes()} bytes serialized). "
        "Each configuration runs on Strata and then at once on PostgreSQL.",
    )
    if rounds > 1:
        results.notes.insert(
            1,
            f"Best of {rounds} rounds per system and configuration (by commits/s); the worst round was up to "
            f"{strata_spread:.0%} below the best for Strata" + (f", {postgres_spread:.0%} for PostgreSQL." if results.postgres else "."),
        )
    return results


# -- report -------------------------------------------------------------------------


def _fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _latency(row: Measurement | None) -> str:
    return "n/a" if row is None else f"{row.p50_ms:.2f} / {row.p99_ms:.2f}"


def _ratio(strata: Measurement | None, postgres: Measurement | None) -> str:
    if strata is None or postgres is None or not postgres.commits_per_s:
        return "n/a"
    return f"{strata.commits_per_s / postgres.commits_per_s:.2f}x"


def _cpu(row: Measurement | None) -> str:
    if row is None:
        return "n/a"
    return f"{_fmt(row.cpu.machine_busy * 100)}% ({_fmt(row.cpu.server_cores, 2)} / {_fmt(row.cpu.client_cores, 2)})"


def _server_us_per_commit(row: Measurement | None) -> str:
    if row is None or math.isnan(row.cpu.server_cores) or not row.commits_per_s:
        return "n/a"
    return f"{row.cpu.server_cores / row.commits_per_s * 1e6:,.0f}"


def configurations(results: WalAppendResults) -> list[tuple[int, int]]:
    return sorted({(r.writers, r.batch) for r in results.strata + results.postgres}, key=lambda c: (c[1], c[0]))


def target_verdict(results: WalAppendResults) -> str:
    lines = []
    for batch in sorted({r.batch for r in results.strata}):
        strata = results.find(results.strata, TARGET_WRITERS, batch)
        postgres = results.find(results.postgres, TARGET_WRITERS, batch)
        if strata is None:
            continue
        if postgres is None:
            lines.append(f"{batch} record(s)/commit: no PostgreSQL number to compare with")
            continue
        ratio = strata.commits_per_s / postgres.commits_per_s if postgres.commits_per_s else math.inf
        verdict = "met" if ratio >= 1 else "not met"
        lines.append(
            f"{batch} record(s)/commit: Strata {strata.commits_per_s:,.0f} vs PostgreSQL {postgres.commits_per_s:,.0f} "
            f"commits/s, ratio {ratio:.2f}: {verdict}"
        )
    if not lines:
        return ""
    return f"Target: at {TARGET_WRITERS} writers, at least PostgreSQL's commits/s. " + "; ".join(lines) + "."


def render_markdown(results: WalAppendResults, *, duration_s: float, warmup_s: float) -> str:
    pg_name = f"PostgreSQL {results.postgres_version}".strip()
    lines = [
        f"Durable appends: Strata `Append` (acknowledged after fdatasync) vs {pg_name} commits "
        f"(`synchronous_commit=on`) on the same disk, {duration_s:g} s per row after {warmup_s:g} s of warm-up on both "
        "(the same load, untimed: pgbench runs the warm-up and the window in one go, and only transactions ending in the window count). "
        f"A commit is one Append / one transaction of 1 or 16 records of {PAYLOAD_BYTES} bytes; "
        "latency is per commit, client side; MB/s counts the records' payload bytes. "
        "CPU: share of all CPUs busy during the window (cores used by server / client); "
        "server µs/commit: the server processes' CPU time per commit.",
        "",
        "| writers | records/commit | Strata commits/s | PostgreSQL commits/s | Strata ÷ PG | Strata p50 / p99 ms "
        "| PG p50 / p99 ms | Strata MB/s | PG MB/s | Strata CPU | PG CPU | server µs/commit Strata / PG |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for writers, batch in configurations(results):
        strata = results.find(results.strata, writers, batch)
        postgres = results.find(results.postgres, writers, batch)
        lines.append(
            f"| {writers} | {batch} | {_fmt(strata.commits_per_s) if strata else 'n/a'} | "
            f"{_fmt(postgres.commits_per_s) if postgres else 'n/a'} | {_ratio(strata, postgres)} | {_latency(strata)} | "
            f"{_latency(postgres)} | {_fmt(strata.mb_per_s, 2) if strata else 'n/a'} | "
            f"{_fmt(postgres.mb_per_s, 2) if postgres else 'n/a'} | {_cpu(strata)} | {_cpu(postgres)} | "
            f"{_server_us_per_commit(strata)} / {_server_us_per_commit(postgres)} |"
        )
    verdict = target_verdict(results)
    if verdict:
        lines += ["", verdict]
    for note in results.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def print_table(results: WalAppendResults) -> None:
    header = (
        f"{'writers':>7} {'batch':>5} {'strata c/s':>11} {'pg c/s':>9} {'ratio':>7} {'strata p50/p99 ms':>18} "
        f"{'pg p50/p99 ms':>15} {'strata MB/s':>11} {'pg MB/s':>8} {'strata CPU':>20} {'pg CPU':>20} {'server us/commit':>16}"
    )
    print(header)
    for writers, batch in configurations(results):
        strata = results.find(results.strata, writers, batch)
        postgres = results.find(results.postgres, writers, batch)
        print(
            f"{writers:>7} {batch:>5} {_fmt(strata.commits_per_s) if strata else 'n/a':>11} "
            f"{_fmt(postgres.commits_per_s) if postgres else 'n/a':>9} {_ratio(strata, postgres):>7} {_latency(strata):>18} "
            f"{_latency(postgres):>15} {_fmt(strata.mb_per_s, 2) if strata else 'n/a':>11} "
            f"{_fmt(postgres.mb_per_s, 2) if postgres else 'n/a':>8} {_cpu(strata):>20} {_cpu(postgres):>20} "
            f"{_server_us_per_commit(strata) + ' / ' + _server_us_per_commit(postgres):>16}"
        )
    verdict = target_verdict(results)
    if verdict:
        print(verdict)
    for note in results.notes:
        print(note)


# -- command line -------------------------------------------------------------------


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, like 1,8,64; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, like 1,8,64; got {text!r}")
    return values


def target_arg(text: str) -> str:
    """`--target`: HOST:PORT, or a cluster's nodes HOST:PORT,HOST:PORT,..."""
    nodes = [n.strip() for n in text.split(",") if n.strip()]
    for node in nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"{node!r} is not HOST:PORT (--target takes HOST:PORT or A,B,C for a cluster)")
    if not nodes:
        raise argparse.ArgumentTypeError("--target needs HOST:PORT or A,B,C")
    return ",".join(nodes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.wal_append",
        description="Durable appends per second, MB/s and p50/p99 latency of the Strata walservice at 1, 8 and 64 "
        "concurrent writers and 1 or 16 records per Append, side by side with PostgreSQL commits "
        "(pgbench INSERTs, synchronous_commit=on) on the same disk; writes the table into BENCHMARKS.md "
        "(section 'wal_append').",
    )
    parser.add_argument("--duration", type=float, default=None, help=f"seconds measured per configuration (default {DEFAULT_DURATION_S:g}; {QUICK_DURATION_S:g} with --quick)")
    parser.add_argument("--warmup", type=float, default=None, help=f"untimed seconds before each Strata window (default {DEFAULT_WARMUP_S:g}; {QUICK_WARMUP_S:g} with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: shorter configurations")
    parser.add_argument("--writers", type=_positive_ints, default=",".join(map(str, WRITER_COUNTS)), help="concurrent writers / pgbench clients, comma-separated (default 1,8,64)")
    parser.add_argument("--batches", type=_positive_ints, default=",".join(map(str, BATCH_SIZES)), help="records per Append / rows per INSERT, comma-separated (default 1,16)")
    parser.add_argument("--rounds", type=int, default=None, help="run every configuration this many times, keeping each system's best (default 2; 1 with --quick)")
    parser.add_argument("--client-processes", type=int, default=1, help="client processes the Strata writers are spread over (default 1)")
    parser.add_argument("--target", metavar="HOST:PORT[,HOST:PORT...]", type=target_arg, default=None, help="use this running walservice, or cluster A,B,C (every node; appends follow the leader), instead of starting one (the bench creates its own timelines and deletes each after measuring it)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL half")
    parser.add_argument("--replication", action="store_true", help="instead: 1 node vs a 3-node cluster at --writers, and the stall when the leader is killed (section wal_append_replication)")
    add_write_argument(parser)
    add_work_dir_arguments(
        parser, "parent of the throwaway walservice and PostgreSQL data (default: a temp dir under $TMPDIR, i.e. /tmp)",
        "keep the work directory (PostgreSQL's cluster is always removed)",
    )
    return parser


@contextmanager
def work_directory(parent: Path | None, keep: bool) -> Iterator[Path]:
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="strata-wal-append-", dir=parent))
    os.chmod(path, 0o755)  # the postgres OS user must reach its cluster inside
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def disk_note(work_dir: Path) -> str:
    device = os.stat(work_dir).st_dev
    return f"Work directory `{work_dir}` (device {os.major(device)}:{os.minor(device)}): both systems' data live there, on the same disk."


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the walservice and the PostgreSQL cluster are stopped and removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    duration_s = args.duration if args.duration is not None else (QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    warmup_s = args.warmup if args.warmup is not None else (QUICK_WARMUP_S if args.quick else DEFAULT_WARMUP_S)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else DEFAULT_ROUNDS)
    if duration_s <= 0 or warmup_s < 0 or rounds < 1:
        raise SystemExit("--duration must be positive, --warmup not negative, --rounds at least 1")
    # Only a whole default comparison replaces the committed table (bench/report.py).
    # --replication selects the other section, of which it is the default run.
    reasons = partial_run_reasons(parser, args, NEUTRAL_OPTIONS | {"replication"})
    configs = [(w, b) for b in args.batches for w in args.writers]
    load_at_start = os.getloadavg()[0]
    if args.replication:
        with work_directory(args.work_dir, args.keep) as work_dir:
            replication = run_replication(args.writers, duration_s, warmup_s, work_dir=work_dir)
        replication.notes.append(
            f"1-minute load average when the run started / ended: {load_at_start:.2f} / {os.getloadavg()[0]:.2f} on "
            f"{os.cpu_count()} CPUs; the writers and every node share them."
        )
        markdown = render_replication(replication, duration_s=duration_s, warmup_s=warmup_s)
        print(markdown)
        publish_section(
            "wal_append_replication", markdown, reasons=reasons, write=args.write, command="python -m bench.wal_append --replication",
            title="wal_append_replication: 1 walservice node vs a 3-node cluster",
        )
        return
    with work_directory(args.work_dir, args.keep) as work_dir:
        print(disk_note(work_dir), file=sys.stderr, flush=True)
        results = run_benchmark(
            configs, duration_s, warmup_s,
            work_dir=work_dir, target=args.target, client_processes=args.client_processes, postgres=not args.no_postgres,
            rounds=rounds,
        )
        results.notes.append(disk_note(work_dir) if args.target is None else disk_note(work_dir).replace("both systems'", "PostgreSQL's"))
    results.notes.append(
        f"1-minute load average when the run started / ended: {load_at_start:.2f} / {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs; the clients (Python grpc.aio, C pgbench) share those CPUs with the servers."
    )
    print_table(results)
    publish_section(
        "wal_append", render_markdown(results, duration_s=duration_s, warmup_s=warmup_s), reasons=reasons, write=args.write,
        command="python -m bench.wal_append",
    )


if __name__ == "__main__":
    main()
