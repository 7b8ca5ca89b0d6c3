"""`strata proxy`: serve a tenant's databases by name over libSQL's HTTP protocol.

    strata proxy --listen HOST:PORT --pageserver A --walservice B[,C,D] --tenant T
                 [--suspend-after SECONDS] [--max-computes N] [--pool-size N]
                 [--tls-cert FILE --tls-key FILE] [--tls-ca FILE]

With --tls-cert/--tls-key it serves HTTPS; with --tls-ca it (and the compute
processes it starts, through $STRATA_TLS_CA) dials the pageserver and the
walservice over TLS (strata/tls.py).

Logs `event=listening address=HOST:PORT` once it serves (port 0 binds a free
one); SIGTERM or SIGINT stops it: in-flight requests finish, computes exit
(each closing its connection; an open transaction is rolled back, never sent).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from aiohttp import web

from compute_shim import Client
from proxy.computes import ComputeManager
from proxy.metrics import ProxyMetrics
from proxy.server import MAX_BODY_BYTES, ProxyApp, UnknownDatabase
from proxy.streams import StreamTable
from strata import logs, tls
from strata.ids import TenantId, TimelineId

log = logs.event_logger("proxy")


def name_resolver(client: Client, tenant: TenantId) -> Any:
    """name -> (tenant, timeline), asking the pageserver (GetTimelineByName) off the event loop."""

    async def resolve(name: str) -> tuple[TenantId, TimelineId]:
        try:
            info = await asyncio.to_thread(client.get_timeline_by_name, tenant_id=tenant, name=name)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise UnknownDatabase(f"tenant {tenant} has no database named {name!r}; create it with `strata db create {name}`") from None
            raise
        return tenant, TimelineId(info.timeline_id)

    return resolve


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="strata proxy", description="Serve databases by name over libSQL's HTTP protocol (Hrana).")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (port 0: a free one)")
    parser.add_argument("--pageserver", required=True, help="the pageserver's HOST:PORT")
    parser.add_argument("--walservice", required=True, help="the walservice's HOST:PORT, or A,B,C for a cluster")
    parser.add_argument("--tenant", required=True, help="whose databases it serves by name")
    parser.add_argument("--suspend-after", type=float, default=300.0, help="stop a compute idle this many seconds (default 300)")
    parser.add_argument("--max-computes", type=int, default=100, help="beyond this many, suspend the least recently used idle one")
    parser.add_argument("--pool-size", type=int, default=2, help="pre-started computes waiting for a database (default 2)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request body accepted")
    tls.add_server_arguments(parser)
    tls.add_client_argument(parser)
    args = parser.parse_args(argv)
    if args.suspend_after <= 0 or args.max_computes < 1 or args.pool_size < 0:
        parser.error("--suspend-after must be > 0, --max-computes >= 1, --pool-size >= 0")
    return args


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    server_tls = tls.ServerTls.load(args.tls_cert, args.tls_key)
    tls.use_client_ca(args.tls_ca)  # for its own Client and, inherited, its compute processes
    client = Client(pageserver=args.pageserver, walservice=args.walservice)
    metrics = ProxyMetrics()
    manager = ComputeManager(
        pageserver=args.pageserver, walservice=args.walservice, resolve=name_resolver(client, TenantId(args.tenant)),
        metrics=metrics, suspend_after_s=args.suspend_after, max_computes=args.max_computes, pool_size=args.pool_size,
    )
    app = ProxyApp(manager, metrics, StreamTable(manager), tick_s=min(1.0, args.suspend_after / 4)).build(args.max_body_bytes)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), ssl_context=server_tls.ssl_context() if server_tls else None)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    log.info("listening", address=f"{bound[0]}:{bound[1]}", tls=server_tls is not None, tenant=args.tenant, suspend_after_s=args.suspend_after,
             max_computes=args.max_computes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    client.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    import sys

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logs.configure()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
