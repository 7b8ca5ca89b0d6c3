"""Storage cost of branches: bytes in remote storage for many branches that each
change a little, side by side with real full copies of a SQLite file.

    python -m bench.storage_cost                      # 100 branches of 100 MiB, 1% each
    python -m bench.storage_cost --size-mib 4 --branches 5 --no-write

What is measured:

- **Strata**: one tenant; its main timeline loaded with `--size-mib` of 8 KiB
  pages (bench/branch.py's half-random pages) through the walservice, compacted
  so it lives in layer files, and uploaded (`--remote-storage file://...`).
  Then `--branches` branches of main's end, each overwriting `--change` of the
  pages (distinct random blocks per branch, new bytes), each checkpointed
  (Compact) and uploaded. The number is the bytes of every object under
  `tenants/<t>/` in remote storage (layer files, index_part.json, tenant.json),
  read back from the storage's own listing, after the base and after all
  branches. A few branches are read back to check they see their own pages and
  the ancestor's. The walservice runs without WAL offload: offloaded WAL (which
  the walservice keeps in remote storage as well) is not counted.
- **100 full copies** (what copying the base per branch costs, computed):
  (branches + 1) x the base's bytes.
- **SQLite** (the peer, measured): a real SQLite database of the size (8 KiB
  pages, ~1 KiB rows), copied per branch with `shutil.copyfile` + fsync, then
  1% of its pages' rows UPDATEd in the copy; the bytes are each copy's size on
  disk after the update, summed (each copy is deleted after it is measured, to
  spare the disk; the bytes are what keeping them would take).

Target: Strata's total under 3x its base (not 100x). Results go into
BENCHMARKS.md (section `storage_cost`) through bench/report.py.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from bench.report import add_work_dir_arguments, add_write_argument, partial_run_reasons, publish_section
from bench.branch import (
    BENCH_REL,
    MIB,
    PAGE_SIZE,
    SQLITE_ROW_TEXT_BYTES,
    StrataLoad,
    copy_and_fsync,
    exit_on_sigterm,
    format_size,
    layer_census,
    load_average_note,
    load_relation,
    make_sqlite_database,
    page_bytes,
    work_directory,
)
from compute_shim import Client
from pageserver.remote_timeline import download_index
from strata.ids import TenantId, TimelineId
from strata.remote_storage.layout import index_key, tenant_prefix, timeline_prefix
from strata.remote_storage.local_fs import LocalFsStorage
from strata.v1 import records_pb2
from tests.env import Component, StrataEnv

TARGET_RATIO = 3.0
ROWS_PER_SQLITE_PAGE = 7  # ~1 KiB rows in 8 KiB pages
# Image layers kept out of reach, as in bench/branch.py (an image pass over one
# big relation is quadratic); GC is not run: nothing is old enough.
PAGESERVER_ARGS = ("--block-cache-bytes", str(256 * MIB), "--image-threshold", "1000000", "--gc-interval", "0")


@dataclass(frozen=True)
class CostRow:
    system: str
    base_bytes: int
    total_bytes: int  # base + every branch
    detail: str = ""

    @property
    def ratio(self) -> float:
        return self.total_bytes / self.base_bytes if self.base_bytes else float("nan")


@dataclass
class CostResults:
    size_bytes: int
    branches: int
    change: float
    rows: list[CostRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def branch_page(branch: int, blkno: int) -> bytes:
    """A page a branch writes: like page_bytes but different bytes per branch."""
    body = random.Random(branch << 40 | blkno).randbytes(PAGE_SIZE // 2)
    return body + bytes(PAGE_SIZE - len(body))


def remote_bytes(storage: LocalFsStorage, tenant_id: str) -> tuple[int, int]:
    """(bytes, objects) under the tenant's prefix, from the storage's listing."""
    objects = storage.list(tenant_prefix(tenant_id))
    return sum(o.size for o in objects), len(objects)


def wait_uploaded(
    client: Client, tenant_id: str, timeline_ids: list[str], storage: LocalFsStorage | None = None, timeout_s: float = 600.0
) -> None:
    """Until each timeline's newest index is uploaded and, given `storage`, the
    layers it replaced are deleted remotely too (the upload queue deletes them
    after the index upload: counted before that, they would inflate the size)."""
    deadline = time.monotonic() + timeout_s
    for tl in timeline_ids:
        while True:
            info = client.get_timeline(tenant_id=tenant_id, timeline_id=tl)
            uploaded = bool(info.remote_consistent_lsn) and info.remote_consistent_lsn == info.disk_consistent_lsn
            if uploaded and (storage is None or remote_settled(storage, tenant_id, tl)):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"timeline {tl} not uploaded within {timeout_s:.0f}s: {info}")
            time.sleep(0.05)


def remote_settled(storage: LocalFsStorage, tenant_id: str, timeline_id: str) -> bool:
    """Whether the timeline's remote objects are exactly its newest index and the layers that index names."""
    index = download_index(storage, tenant_id, timeline_id)
    prefix = timeline_prefix(TenantId(tenant_id), TimelineId(timeline_id))
    names = {o.key[len(prefix) :] for o in storage.list_delimited(prefix).objects}
    return names == {e.file_name for e in index.layers} | {index_key(TenantId(tenant_id), TimelineId(timeline_id), index.generation)[len(prefix) :]}


def load_uploaded_base(client: Client, ps: Component, size_bytes: int, log: bool, what: str) -> tuple[str, str, StrataLoad]:
    """A new tenant whose main timeline holds `size_bytes` of pages, compacted
    into layer files and uploaded. Returns (tenant, main, the load)."""
    tenant = client.create_tenant(page_size=PAGE_SIZE).tenant_id
    main = client.create_timeline(tenant_id=tenant).timeline_id
    if log:
        print(f"{what}: loading {format_size(size_bytes)} ...", file=sys.stderr, flush=True)
    load = load_relation(
        client, tenant, main, rel=BENCH_REL, npages=max(1, size_bytes // PAGE_SIZE), pages_per_append=128,
        appends_in_flight=4, compact_until=lambda: layer_census(ps.data_dir, tenant, main).l0_deltas == 0,
    )
    wait_uploaded(client, tenant, [main])
    return tenant, main, load


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--write / --work-dir / --keep, as every bench here takes them."""
    add_write_argument(parser)
    add_work_dir_arguments(parser)


class _Results(Protocol):
    notes: list[str]


R = TypeVar("R", bound=_Results)


def run_and_report(
    parser: argparse.ArgumentParser, args: argparse.Namespace, section: str, title: str, run_in: Callable[[Path], R],
    render: Callable[[R], str], note: str,
) -> None:
    """A bench's main: run in a work directory, add `note` and the load average,
    print the table, and write it into BENCHMARKS.md if this was a full default
    run (bench/report.py: publish_section)."""
    exit_on_sigterm()
    load_at_start = os.getloadavg()[0]
    with work_directory(args.work_dir, args.keep) as work_dir:
        results = run_in(work_dir)
    results.notes.append(note)
    results.notes.append(load_average_note(load_at_start, os.getloadavg()[0]))
    markdown = render(results)
    print(markdown)
    publish_section(
        section, markdown, reasons=partial_run_reasons(parser, args), write=args.write, command=f"python -m bench.{section}", title=title
    )


def cost_verdict(ratio: float) -> str:
    """The target line: Strata's base + branches under TARGET_RATIO x the base."""
    met = "met" if ratio < TARGET_RATIO else "not met"
    return f"Strata total / base: {ratio:.2f}x: the under-{TARGET_RATIO:g}x target is {met}."


def run_strata(size_bytes: int, branches: int, change: float, work_dir: Path, log: bool = True) -> CostRow:
    env = StrataEnv(work_dir / "strata")
    remote = work_dir / "remote"
    storage = LocalFsStorage(remote)
    npages = max(1, size_bytes // PAGE_SIZE)
    changed = max(1, int(npages * change))
    try:
        wal = env.walservice()
        ps = env.pageserver(wal, *PAGESERVER_ARGS, "--remote-storage", f"file://{remote}")
        with Client(pageserver=ps.address, walservice=wal.address, timeout=120) as client:
            tenant, main, load = load_uploaded_base(client, ps, size_bytes, log, "strata")
            wait_uploaded(client, tenant, [main], storage)
            base, _ = remote_bytes(storage, tenant)
            rng = random.Random(1)
            ids: list[str] = []
            for i in range(branches):
                tl = client.create_timeline(tenant_id=tenant, ancestor_timeline_id=main, ancestor_lsn=load.end_lsn).timeline_id
                blocks = rng.sample(range(npages), changed)
                for first in range(0, changed, 128):
                    records = [
                        records_pb2.Record(image=records_pb2.PageImage(rel=BENCH_REL, blkno=b, page=branch_page(i, b)))
                        for b in blocks[first:first + 128]
                    ]
                    client.append(tenant_id=tenant, timeline_id=tl, records=records)
                ids.append(tl)
                if log and (i + 1) % 10 == 0:
                    print(f"strata: {i + 1} branches written", file=sys.stderr, flush=True)
            for tl in ids:
                client.compact(tenant_id=tenant, timeline_id=tl)  # flushes the branch's pages into a layer file
            wait_uploaded(client, tenant, ids, storage)
            total, objects = remote_bytes(storage, tenant)
            # Each branch sees its own pages and the ancestor's.
            rng = random.Random(1)
            for i, tl in enumerate(ids):
                blocks = rng.sample(range(npages), changed)
                if i % max(1, branches // 5):
                    continue
                got = client.get_page(tenant_id=tenant, timeline_id=tl, rel=BENCH_REL, blkno=blocks[0]).page
                if got != branch_page(i, blocks[0]):
                    raise AssertionError(f"branch {i} does not read its own page {blocks[0]}")
                other = next(b for b in range(npages) if b not in set(blocks))
                if client.get_page(tenant_id=tenant, timeline_id=tl, rel=BENCH_REL, blkno=other).page != page_bytes(BENCH_REL, other):
                    raise AssertionError(f"branch {i} does not read the ancestor's page {other}")
    finally:
        env.teardown()
    per_branch = (total - base) / max(1, branches)
    return CostRow(
        "Strata: remote storage (layer files + index_part.json)", base, total,
        f"{objects} objects; {format_size(int(per_branch))} per branch for {changed} changed pages "
        f"({format_size(changed * PAGE_SIZE)} of page data)",
    )


def run_sqlite(size_bytes: int, branches: int, change: float, work_dir: Path, log: bool = True) -> CostRow:
    directory = work_dir / "sqlite"
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "base.sqlite"
    base = make_sqlite_database(source, size_bytes)
    conn = sqlite3.connect(source)
    try:
        nrows = conn.execute("SELECT max(id) + 1 FROM t").fetchone()[0]
    finally:
        conn.close()
    npages = max(1, nrows // ROWS_PER_SQLITE_PAGE)
    changed = max(1, int(npages * change))
    rng = random.Random(2)
    total = base
    copy = directory / "branch.sqlite"
    for i in range(branches):
        copy_and_fsync(source, copy)
        conn = sqlite3.connect(copy)
        try:
            with conn:
                for page in rng.sample(range(npages), changed):
                    first = page * ROWS_PER_SQLITE_PAGE
                    conn.execute(
                        "UPDATE t SET payload = ? WHERE id >= ? AND id < ?",
                        (f"{i:08x}" * (SQLITE_ROW_TEXT_BYTES // 8), first, first + ROWS_PER_SQLITE_PAGE),
                    )
        finally:
            conn.close()
        total += copy.stat().st_size
        copy.unlink()
        if log and (i + 1) % 10 == 0:
            print(f"sqlite: {i + 1} copies", file=sys.stderr, flush=True)
    source.unlink()
    return CostRow(
        f"SQLite {sqlite3.sqlite_version}: a file copy per branch (copyfile + fsync, then UPDATE ~{change:.0%} of pages)",
        base, total, f"{format_size(base)} per copy",
    )


def run(size_bytes: int, branches: int, change: float, work_dir: Path, sqlite: bool = True, log: bool = True) -> CostResults:
    results = CostResults(size_bytes, branches, change)
    strata = run_strata(size_bytes, branches, change, work_dir, log)
    results.rows.append(strata)
    results.rows.append(
        CostRow(f"{branches} full copies of Strata's base (computed)", strata.base_bytes, strata.base_bytes * (branches + 1))
    )
    if sqlite:
        results.rows.append(run_sqlite(size_bytes, branches, change, work_dir, log))
    return results


def render_markdown(results: CostResults) -> str:
    strata = results.rows[0]
    lines = [
        f"Bytes stored for a {format_size(results.size_bytes)} database and {results.branches} branches of it, "
        f"each changing {results.change:.0%} of its pages. Strata: every object under the tenant's prefix in remote "
        "storage (file://), from the storage's own listing; the peer really copies a SQLite file per branch. "
        f"Target: Strata's total under {TARGET_RATIO:g}x its base (not {results.branches}x).",
        "",
        "| system | base | base + branches | total / base | vs Strata | detail |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results.rows:
        vs = row.total_bytes / strata.total_bytes if strata.total_bytes else float("nan")
        lines.append(
            f"| {row.system} | {format_size(row.base_bytes)} | {format_size(row.total_bytes)} | {row.ratio:.2f}x | "
            f"{vs:.1f}x | {row.detail} |"
        )
    lines += ["", cost_verdict(strata.ratio)]
    lines += ["", *results.notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.storage_cost",
        description="Bytes in remote storage for many small-change branches vs full copies; writes BENCHMARKS.md (storage_cost).",
    )
    parser.add_argument("--size-mib", type=float, default=100.0, help="the base timeline's size")
    parser.add_argument("--branches", type=int, default=100)
    parser.add_argument("--change", type=float, default=0.01, help="share of the pages each branch overwrites")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite copies")
    add_output_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_and_report(
        parser, args, "storage_cost", "storage_cost: 100 branches, 1% changed each, vs full copies",
        lambda work_dir: run(int(args.size_mib * MIB), args.branches, args.change, work_dir, sqlite=not args.no_sqlite),
        render_markdown,
        "Not counted: the WAL the walservice offloads to remote storage (it runs without --remote-storage here). "
        f"Strata pageserver flags: `{' '.join(PAGESERVER_ARGS)}`.",
    )


if __name__ == "__main__":
    main()
