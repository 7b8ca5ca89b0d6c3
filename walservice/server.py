"""`strata walservice`: one walservice node (`python -m walservice` is the same)."""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strata import grpc_server, logs
from walservice.service import DEFAULT_MAX_BATCH_BYTES, WalServicer
from walservice.timelines import TimelineSet
from walservice.wal_storage import DEFAULT_SEGMENT_BYTES

DEFAULT_LISTEN = "127.0.0.1:7676"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to serve on (port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the timelines' WAL lives")
    parser.add_argument("--node-id", type=int, default=1, help="this node's id in a cluster")
    parser.add_argument("--peers", default="", help="A,B,C: every node of the cluster (replication)")
    parser.add_argument("--remote-storage", default="", help="file://DIR or s3://bucket/prefix for WAL offload")
    parser.add_argument("--segment-bytes", type=int, default=DEFAULT_SEGMENT_BYTES, help="start a new WAL segment past this size")
    parser.add_argument("--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES, help="the largest Append accepted")
    parser.add_argument("--log-level", default="info")


async def run(args: argparse.Namespace) -> None:
    log = logs.event_logger("walservice")
    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="wal-flush") as executor:
        timelines = TimelineSet(data_dir, executor, log, segment_bytes=args.segment_bytes)
        timelines.load()
        servicer = WalServicer(timelines, log, max_batch_bytes=args.max_batch_bytes)

        async def stopping() -> None:
            for tl in timelines:
                tl.begin_close()

        await grpc_server.serve(
            listen=args.listen,
            log=log,
            register=servicer.register,
            # Room above the batch limit, so an oversized batch gets our INVALID_ARGUMENT.
            max_message_bytes=2 * args.max_batch_bytes + (1 << 20),
            stopping=stopping,
            stopped=timelines.close,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="strata walservice", description="Run one walservice (safekeeper) node.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    asyncio.run(run(args))
