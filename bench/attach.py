"""A stateless pageserver: the time for a fresh pageserver (empty disk) to attach
a tenant and serve its first page, side by side with downloading the whole tenant.

    python -m bench.attach                   # a 1 GiB tenant, 3 samples
    python -m bench.attach --size-mib 8 --samples 2 --no-write

Setup (not compared): a walservice and a pageserver with
`--remote-storage file://DIR`; one tenant whose main timeline holds
`--size-mib` of 8 KiB pages (bench/branch.py's loader), compacted into layer
files and uploaded; then that pageserver stops and its disk is deleted.

Timed, per sample, on a new pageserver process with an empty data dir (already
listening: the process start is reported on its own row):
- **Strata attach + first page**: AttachTenant (a new generation, every
  timeline's index_part.json), then one GetPage of a random block, which
  downloads the one layer file holding it (on demand). Client-side wall time
  from the AttachTenant call until the page arrived; the page is checked.
- **peer: download the whole tenant**: what a pageserver without on-demand
  download must do before serving: every object under `tenants/<t>/` fetched
  through the same RemoteStorage (`download_file`, verified against its size
  and xxhash64) into an empty directory. Wall time.

Remote storage here is a local directory (file://), so both sides read at
local-disk / page-cache speed; over S3 each byte costs more and the ratio
grows with the tenant's size. Results go into BENCHMARKS.md (section `attach`).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.branch import (
    BENCH_REL,
    MIB,
    PAGE_SIZE,
    format_size,
    layer_census,
    page_bytes,
)
from bench.report import percentile
from bench.storage_cost import add_output_arguments, load_uploaded_base, remote_bytes, run_and_report
from compute_shim import Client
from strata.remote_storage.layout import tenant_prefix
from strata.remote_storage.local_fs import LocalFsStorage
from tests.env import StrataEnv

# Image layers out of reach, as in bench/branch.py (quadratic image pass on one big relation).
PAGESERVER_ARGS = ("--block-cache-bytes", str(256 * MIB), "--image-threshold", "1000000", "--gc-interval", "0")


@dataclass(frozen=True)
class AttachRow:
    system: str
    samples_s: tuple[float, ...]
    detail: str = ""

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_s, 50) * 1000


@dataclass
class AttachResults:
    size_bytes: int
    tenant_bytes: int = 0
    tenant_objects: int = 0
    rows: list[AttachRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def download_tenant(storage: LocalFsStorage, tenant_id: str, into: Path) -> int:
    """Every object of the tenant, verified, into `into`; returns the bytes."""
    total = 0
    prefix = tenant_prefix(tenant_id)
    for obj in storage.list(prefix):
        storage.download_file(obj.key, into / obj.key[len(prefix):], expected=obj if obj.checksum is not None else None)
        total += obj.size
    return total


def run(size_bytes: int, samples: int, work_dir: Path, log: bool = True) -> AttachResults:
    results = AttachResults(size_bytes)
    env = StrataEnv(work_dir / "strata")
    remote = work_dir / "remote"
    url = f"file://{remote}"
    storage = LocalFsStorage(remote)
    npages = max(1, size_bytes // PAGE_SIZE)
    try:
        wal = env.walservice()
        first = env.pageserver(wal, *PAGESERVER_ARGS, "--remote-storage", url, name="pageserver-load")
        with Client(pageserver=first.address, walservice=wal.address, timeout=120) as client:
            start = time.perf_counter()
            tenant, main, _ = load_uploaded_base(client, first, size_bytes, log, "attach")
            census = layer_census(first.data_dir, tenant, main)
            results.notes.append(f"Setup: loaded, compacted and uploaded in {time.perf_counter() - start:.1f} s ({census}).")
        first.stop()
        shutil.rmtree(first.data_dir)
        results.tenant_bytes, results.tenant_objects = remote_bytes(storage, tenant)

        rng = random.Random(3)
        attach_s, start_s, download_s = [], [], []
        for i in range(samples):
            t0 = time.perf_counter()
            ps = env.pageserver(wal, *PAGESERVER_ARGS, "--remote-storage", url, name=f"pageserver-{i}")
            start_s.append(time.perf_counter() - t0)
            with Client(pageserver=ps.address, walservice=wal.address, timeout=120) as client:
                blkno = rng.randrange(npages)
                t0 = time.perf_counter()
                client.attach_tenant(tenant_id=tenant)
                page = client.get_page(tenant_id=tenant, timeline_id=main, rel=BENCH_REL, blkno=blkno).page
                attach_s.append(time.perf_counter() - t0)
                if page != page_bytes(BENCH_REL, blkno):
                    raise AssertionError(f"attached pageserver read different bytes for blkno={blkno}")
            local = sum(p.stat().st_size for p in ps.data_dir.rglob("*") if p.is_file())
            ps.stop()
            shutil.rmtree(ps.data_dir)
            target = work_dir / f"download-{i}"
            t0 = time.perf_counter()
            got = download_tenant(storage, tenant, target)
            download_s.append(time.perf_counter() - t0)
            shutil.rmtree(target)
            if log:
                print(f"attach: sample {i}: attach+page {attach_s[-1] * 1000:.1f} ms, download {download_s[-1] * 1000:.1f} ms",
                      file=sys.stderr, flush=True)
        results.rows.append(AttachRow(
            "Strata: AttachTenant + first GetPage (on-demand download)", tuple(attach_s),
            f"local disk after the first page: {format_size(local)}",
        ))
        results.rows.append(AttachRow(
            "peer: download the whole tenant (RemoteStorage.download_file, verified)", tuple(download_s),
            f"{format_size(got)} in {results.tenant_objects} objects",
        ))
        results.rows.append(AttachRow("(not compared) pageserver process start until it listens", tuple(start_s)))
    finally:
        env.teardown()
    return results


def render_markdown(results: AttachResults, samples: int) -> str:
    strata = results.rows[0]
    lines = [
        f"A fresh pageserver (empty disk) attaches a {format_size(results.size_bytes)} tenant "
        f"({format_size(results.tenant_bytes)} in {results.tenant_objects} objects in file:// remote storage) and "
        f"serves its first page, vs downloading the whole tenant first. {samples} samples each; wall time.",
        "",
        "| what | n | p50 ms | min ms | max ms | vs Strata | detail |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results.rows:
        vs = row.p50_ms / strata.p50_ms if strata.p50_ms else float("nan")
        lines.append(
            f"| {row.system} | {len(row.samples_s)} | {row.p50_ms:,.1f} | {min(row.samples_s) * 1000:,.1f} | "
            f"{max(row.samples_s) * 1000:,.1f} | {vs:.1f}x | {row.detail} |"
        )
    lines += ["", *results.notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.attach",
        description="Attach + first page on an empty pageserver vs downloading the whole tenant; writes BENCHMARKS.md (attach).",
    )
    parser.add_argument("--size-mib", type=float, default=1024.0)
    parser.add_argument("--samples", type=int, default=3)
    add_output_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_and_report(
        parser, args, "attach", "attach: first page on an empty pageserver vs downloading the tenant",
        lambda work_dir: run(int(args.size_mib * MIB), args.samples, work_dir),
        lambda results: render_markdown(results, args.samples),
        "Remote storage is a local directory, so the download runs at local-disk / page-cache speed; over S3 every "
        f"byte costs more and the gap grows. Strata pageserver flags: `{' '.join(PAGESERVER_ARGS)}`.",
    )


if __name__ == "__main__":
    main()
