"""`strata pageserver`: one pageserver process (`python -m pageserver` is the same)."""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from pageserver import service
from pageserver.ingest import WalNodes
from pageserver.layer_cache import DEFAULT_LOCAL_CACHE_BYTES, LayerCache
from pageserver.layers.block_cache import BlockCache
from pageserver.page_cache import MaterializedPageCache
from pageserver.tenant import DEFAULT_PITR_SECONDS, PageserverContext
from pageserver.tenant_set import TenantSet
from pageserver.timeline import TimelineConfig
from strata import grpc_server, ids, logs, tls
from strata.background_tasks import cancel_and_wait
from strata.errors import InvalidArgument
from strata.grpc_channels import channel_options
from strata.remote_storage.url import open_remote_storage

DEFAULT_LISTEN = "127.0.0.1:6400"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def _duration_seconds(text: str) -> int:
    """--pitr-seconds: the bounds of CreateTenant's pitr_seconds (tenant.json is read back under them)."""
    try:
        return ids.duration_seconds(int(text), "--pitr-seconds")
    except (ValueError, InvalidArgument) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TimelineConfig()
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to serve on (port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, required=True, help="local layer files and metadata")
    parser.add_argument("--walservice", required=True, help="A[,B,C]: the walservice node(s) to stream WAL from")
    parser.add_argument(
        "--remote-storage", default="",
        help="file://DIR or s3://bucket/prefix: the truth for layers and indexes (local disk becomes a cache); "
        "empty: layers stay local only",
    )
    parser.add_argument(
        "--local-cache-bytes", type=int, default=DEFAULT_LOCAL_CACHE_BYTES,
        help="with --remote-storage: evict uploaded layer files (least recently used) past this many local bytes",
    )
    parser.add_argument("--checkpoint-bytes", type=int, default=d.checkpoint_bytes, help="freeze the in-memory layer past this size")
    parser.add_argument("--checkpoint-timeout", type=float, default=d.checkpoint_timeout_s, help="... or once it is this many seconds old")
    parser.add_argument("--compaction-threshold", type=int, default=d.compaction_threshold, help="compact at this many L0 layers")
    parser.add_argument("--image-threshold", type=int, default=d.image_threshold, help="write an image layer at this many deltas above the last")
    parser.add_argument("--l1-target-bytes", type=int, default=d.l1_target_bytes, help="the size L1 delta files are cut at")
    parser.add_argument(
        "--wal-idle-timeout", type=float, default=d.wal_idle_s,
        help="drop a timeline's WAL stream after this many seconds with no new WAL and no read waiting (it parks)",
    )
    parser.add_argument(
        "--wal-poll-interval", type=float, default=d.wal_poll_s,
        help="a parked timeline asks the walservice for new WAL about this often (seconds; at once when a read waits)",
    )
    parser.add_argument("--l0-stall-threshold", type=int, default=d.l0_stall_threshold, help="ingest waits for compaction past this many L0s")
    parser.add_argument(
        "--page-cache-bytes", type=int, default=128 * 1024 * 1024, help="pages rebuilt at the latest LSN, kept until a record changes them"
    )
    parser.add_argument("--block-cache-bytes", type=int, default=256 * 1024 * 1024, help="decompressed layer blocks kept in memory")
    parser.add_argument(
        "--pitr-seconds", type=_duration_seconds, default=DEFAULT_PITR_SECONDS,
        help="the PITR window of a tenant created with pitr_seconds 0: GC keeps every LSN committed within it",
    )
    parser.add_argument("--gc-interval", type=float, default=3600.0, help="seconds between background GC rounds (0: no background GC)")
    parser.add_argument(
        "--ttl-check-interval", type=float, default=10.0, help="seconds between checks for expired timelines (ttl_seconds)"
    )
    parser.add_argument(
        "--generation-check-interval", type=float, default=10.0,
        help="seconds between checks that no newer generation attached a tenant elsewhere, so an idle stale "
        "pageserver is fenced too (0: only around uploads and deletions)",
    )
    tls.add_server_arguments(parser)
    tls.add_client_argument(parser)
    parser.add_argument("--log-level", default="info")


async def run(args: argparse.Namespace) -> None:
    log = logs.event_logger("pageserver")
    if not (args.wal_idle_timeout > 0 and args.wal_poll_interval > 0):
        raise SystemExit("pageserver: --wal-idle-timeout and --wal-poll-interval must be > 0 seconds")
    server_tls = tls.ServerTls.load(args.tls_cert, args.tls_key)
    tls.use_client_ca(args.tls_ca)  # its connections to the walservice
    args.data_dir.mkdir(parents=True, exist_ok=True)
    config = TimelineConfig(
        checkpoint_bytes=args.checkpoint_bytes,
        checkpoint_timeout_s=args.checkpoint_timeout,
        compaction_threshold=args.compaction_threshold,
        image_threshold=args.image_threshold,
        l1_target_bytes=args.l1_target_bytes,
        l0_stall_threshold=args.l0_stall_threshold,
        wal_idle_s=args.wal_idle_timeout,
        wal_poll_s=args.wal_poll_interval,
    )
    wal_nodes = WalNodes(
        [a for a in args.walservice.split(",") if a],
        channel_options(MAX_MESSAGE_BYTES),
    )
    remote = open_remote_storage(args.remote_storage) if args.remote_storage else None
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="pageserver-io") as executor:
        ctx = PageserverContext(
            remote=remote,
            remote_url=args.remote_storage or "",
            layer_cache=LayerCache(remote, executor, log, args.local_cache_bytes, args.data_dir),
            data_dir=args.data_dir,
            executor=executor,
            block_cache=BlockCache(args.block_cache_bytes),
            page_cache=MaterializedPageCache(args.page_cache_bytes),
            timeline_config=config,
            log=log,
            wal_stub=wal_nodes,
            default_pitr_seconds=args.pitr_seconds,
        )
        tenants = TenantSet(ctx)
        tenants.load()
        ticker = asyncio.create_task(tenants.run_ticks())
        housekeeping = [asyncio.create_task(tenants.run_expiry(args.ttl_check_interval))]
        if args.gc_interval > 0:
            housekeeping.append(asyncio.create_task(tenants.run_gc(args.gc_interval)))
        if remote is not None and args.generation_check_interval > 0:
            housekeeping.append(asyncio.create_task(tenants.run_generation_checks(args.generation_check_interval)))

        async def stopped() -> None:
            ticker.cancel()
            for task in housekeeping:
                await cancel_and_wait(task)
            await tenants.shutdown()
            await wal_nodes.close()

        await grpc_server.serve(
            listen=args.listen,
            log=log,
            register=lambda server: service.register(server, tenants, log),
            max_message_bytes=MAX_MESSAGE_BYTES,
            stopped=stopped,
            tls=server_tls,
        )


def build_parser() -> argparse.ArgumentParser:
    """`strata pageserver`'s command line (deploy/ manifests are checked against it)."""
    parser = argparse.ArgumentParser(prog="strata pageserver", description="Run one pageserver.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    asyncio.run(run(args))
