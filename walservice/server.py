"""`strata walservice`: one walservice node (`python -m walservice` is the same)."""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strata import grpc_server, logs, tls
from strata.remote_storage.url import open_remote_storage
from walservice.append_codec import native as native_codec
from walservice.offload import DEFAULT_OFFLOAD_INTERVAL_S, WalOffloader
from walservice.peer_service import PeerServicer
from walservice.peer_faults import with_faults_from_env
from walservice.peers import ClusterConfig, GrpcPeerTransport
from walservice.replication import Cluster
from walservice.service import DEFAULT_MAX_BATCH_BYTES, WalServicer
from walservice.timelines import TimelineSet
from walservice.wal_restore import OffloadedWal
from walservice.wal_storage import DEFAULT_SEGMENT_BYTES

DEFAULT_LISTEN = "127.0.0.1:7676"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to serve on (port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the timelines' WAL lives")
    parser.add_argument("--node-id", type=int, default=1, help="this node's id in a cluster")
    parser.add_argument(
        "--peers",
        default="",
        help="A,B,C: every node of the cluster in node-id order, this one included (replication, docs/design/0005-replication.md)",
    )
    parser.add_argument(
        "--peer-port",
        type=int,
        default=0,
        help="TCP port (on the --listen host) for the leaders' PeerAppend connections in a cluster; "
        "0 picks a free one (nodes ask each other for it over gRPC)",
    )
    parser.add_argument(
        "--remote-storage",
        default="",
        help="file://DIR or s3://bucket/prefix: offload WAL there and trim what the pageserver persisted (empty: keep all WAL locally)",
    )
    parser.add_argument(
        "--offload-interval",
        type=float,
        default=DEFAULT_OFFLOAD_INTERVAL_S,
        help="seconds between uploads of the open segment's committed part (with --remote-storage)",
    )
    parser.add_argument("--segment-bytes", type=int, default=DEFAULT_SEGMENT_BYTES, help="start a new WAL segment past this size")
    parser.add_argument(
        "--max-open-segments",
        type=int,
        default=0,
        help="the most segment files kept open for appends across all timelines, least recently used closed first "
        "(0: a quarter of the open-file limit, 16 to 1024)",
    )
    parser.add_argument("--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES, help="the largest Append accepted")
    tls.add_server_arguments(parser)
    tls.add_client_argument(parser)
    parser.add_argument("--log-level", default="info")


async def run(args: argparse.Namespace) -> None:
    log = logs.event_logger("walservice")
    server_tls = tls.ServerTls.load(args.tls_cert, args.tls_key)
    tls.use_client_ca(args.tls_ca)  # its peer connections (gRPC and PeerAppend TCP)
    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = None
    if args.remote_storage:
        if args.offload_interval <= 0:
            raise SystemExit(f"--offload-interval={args.offload_interval} must be a positive number of seconds")
        try:
            storage = open_remote_storage(args.remote_storage)
        except (ValueError, OSError) as exc:
            raise SystemExit(f"--remote-storage={args.remote_storage}: {exc}") from exc
    try:
        config = ClusterConfig.parse(args.node_id, args.peers)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if args.max_open_segments < 0:
        raise SystemExit(f"--max-open-segments={args.max_open_segments} must be 0 (the default) or a positive count")
    if not 0 <= args.peer_port <= 65535:
        raise SystemExit(f"--peer-port={args.peer_port} must be a TCP port (0 picks a free one)")
    # Room above the batch limit, so an oversized batch gets our INVALID_ARGUMENT.
    max_message_bytes = 2 * args.max_batch_bytes + (1 << 20)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="wal-flush") as executor:
        timelines = TimelineSet(data_dir, executor, log, segment_bytes=args.segment_bytes, max_open_segments=args.max_open_segments or None)
        cluster = None
        if config is not None:
            cluster = Cluster(config, log, transport=with_faults_from_env(GrpcPeerTransport(config), log))
        timelines.cluster = cluster
        if storage is not None:
            timelines.offloaded = OffloadedWal(storage, args.remote_storage)
        timelines.load()
        servicer = WalServicer(timelines, log, max_batch_bytes=args.max_batch_bytes, cluster=cluster)
        # Which per-record path runs (walservice/append_codec.py): "c", or "python" where
        # the extension was not built or STRATA_APPEND_CODEC=python asks for it.
        log.info("append_codec", codec="c" if native_codec is not None else "python")
        registers = [servicer.register]
        peer_servicer = (
            PeerServicer(timelines, cluster, log, max_message_bytes, server_tls.ssl_context() if server_tls else None)
            if cluster is not None else None
        )
        if peer_servicer is not None:
            try:
                await peer_servicer.start_streams(args.listen.rsplit(":", 1)[0].strip("[]"), args.peer_port)
            except OSError as exc:
                raise SystemExit(f"--peer-port={args.peer_port}: cannot listen: {exc}") from exc
            registers.append(peer_servicer.register)
            log.info("cluster_node", node=config.node_id, nodes=",".join(config.nodes), majority=config.majority)  # type: ignore[union-attr]
        if cluster is not None:
            cluster.start_election_watch()
        offloader = None
        if storage is not None:
            offloader = WalOffloader(storage, args.remote_storage, timelines, log, interval_s=args.offload_interval)
            offloader.start()

        async def stopping() -> None:
            if cluster is not None:
                await cluster.stop_election_watch()  # no new elections on the way down
            if offloader is not None:
                await offloader.stop()
            for tl in timelines:
                tl.begin_close()  # new appends are refused (not applied) from here
            # The appends already taken are answered before anything stops (SIGTERM
            # is graceful): their flush rounds, and in a cluster their majority.
            await asyncio.gather(*(tl.drain() for tl in timelines), return_exceptions=True)
            if cluster is not None:
                # Then stop leading, so the followers elect a new leader after one
                # lease instead of redirecting clients here until the process exits.
                for tl in timelines:
                    if tl.replica is not None:
                        await tl.replica.close()
            # Last, the streams that never end by themselves (they would hold the stop
            # for its whole grace): the clients' AppendStreams, and the leaders' into this node.
            servicer.end_streams()
            if peer_servicer is not None:
                peer_servicer.end_streams()

        await grpc_server.serve(
            listen=args.listen,
            log=log,
            register=lambda server: [name for register in registers for name in register(server)],
            max_message_bytes=max_message_bytes,
            stopping=stopping,
            stopped=(lambda: _close_all(timelines, cluster, peer_servicer)),
            tls=server_tls,
        )


async def _close_all(timelines: TimelineSet, cluster: Cluster | None, peer_servicer: PeerServicer | None) -> None:
    if peer_servicer is not None:
        await peer_servicer.close()
    await timelines.close()
    if cluster is not None:
        await cluster.close()


def build_parser() -> argparse.ArgumentParser:
    """`strata walservice`'s command line (deploy/ manifests are checked against it)."""
    parser = argparse.ArgumentParser(prog="strata walservice", description="Run one walservice (safekeeper) node.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    asyncio.run(run(args))
