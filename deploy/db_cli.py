"""`strata db`: databases (named timelines) of a tenant, from a shell.

    strata db create NAME [--from NAME] [--at LSN | --at-time ISO] [--ttl SECONDS]
    strata db list | db show NAME | db delete NAME
    strata db log NAME [--limit N]   (its commits, newest first: end LSN, time, size)

Each takes `--json`, `--tenant T` (default: the stack's default tenant, which
the first `strata up` made; deploy/default_tenant.py) and, like `strata
tenants`, `--data-dir DIR` (the running stack's) or `--pageserver HOST:PORT`.
`log` lists its commits, newest first (ListCommits: end LSN, commit time,
records and bytes; a branch's go on into its ancestor's). `create` prints the database's URL for libSQL clients on stdout (the proxy's,
`http://HOST:PORT/db/NAME/`; the running stack's proxy, else `--proxy`,
default 127.0.0.1:8080) and what it made on stderr. A branch (`--from`) is O(1):
nothing is copied; `--at`/`--at-time` pick its branch point in the source's
history. Exit codes as `strata tenants`: 1 refused or unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc

from compute_shim import Client
from deploy import default_tenant
from deploy.admin_cli import AdminError, _endpoints, _expiry, _rpc_error, _table
from deploy.cli_checks import CheckFailed, check_branch_point, find_tenant, non_negative, tenant_arg
from deploy.cli_output import DEFAULT_DATA_DIR, data_dir_flag, message_dict, print_json, strata_command
from deploy.local_stack import endpoints
from deploy.sql_shell import CliError, resolve_lsn
from strata.errors import CorruptionError, InvalidArgument
from strata.ids import database_name
from strata.v1 import timeline_pb2
from strata import tls

ACTIONS = ("create", "list", "show", "delete", "log")
DEFAULT_LOG_LIMIT = 20
DEFAULT_PROXY = "127.0.0.1:8080"  # DESIGN.md: where `strata up` runs the proxy


def name_arg(text: str) -> str:
    """argparse type: a database name (a DNS label)."""
    try:
        return database_name(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("name=")) from None


def database_url(args: argparse.Namespace, name: str) -> str:
    proxy = args.proxy
    if not proxy and not args.pageserver:
        proxy = endpoints(args.data_dir).get("proxy", "")
    scheme = "https" if tls.client_ca() is not None else "http"  # a TLS stack's proxy serves HTTPS
    return f"{scheme}://{proxy or DEFAULT_PROXY}/db/{name}/"


def _tenant(args: argparse.Namespace) -> str:
    if args.tenant:
        return args.tenant
    try:
        recorded = default_tenant.read(args.data_dir)
    except CorruptionError as exc:
        raise AdminError(str(exc)) from None
    if recorded is None:
        where = "with --pageserver" if args.pageserver else f"under {args.data_dir}"
        raise AdminError(
            f"no default tenant {where} (the first `{strata_command()} up{data_dir_flag(args.data_dir)}` makes one): "
            "pass --tenant T"
        )
    return recorded


def _find(c: Client, tenant: str, name: str) -> timeline_pb2.TimelineInfo:
    try:
        return c.get_timeline_by_name(tenant_id=tenant, name=name)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise CheckFailed(exc.details().replace(f"tenant_id={tenant}", f"tenant {tenant}")) from None
        raise


def _info_dict(info: timeline_pb2.TimelineInfo, names: dict[str, str], url: str) -> dict[str, object]:
    return {**message_dict(info), "ancestor_name": names.get(info.ancestor_timeline_id, ""), "url": url}


def _create(c: Client, args: argparse.Namespace, tenant: str) -> None:
    ancestor_id, at = "", 0
    if args.from_name:
        source = _find(c, tenant, args.from_name)
        ancestor_id = source.timeline_id
        at = resolve_lsn(c, tenant, ancestor_id, args.at, args.at_time) or 0
        check_branch_point(c, source, at, walservice=bool(args.walservice))
    info = c.create_timeline(tenant_id=tenant, name=args.name, ancestor_timeline_id=ancestor_id, ancestor_lsn=at, ttl_seconds=args.ttl)
    url = database_url(args, info.name)
    if args.json:
        print_json(_info_dict(info, {ancestor_id: args.from_name or ""}, url))
        return
    expiry = f", expires {_expiry(info.expires_at_us, time.time())}" if info.expires_at_us else ""
    origin = f" from {args.from_name} at lsn {info.ancestor_lsn}" if args.from_name else ""
    print(f"created database {info.name}{origin} (timeline {info.timeline_id} of tenant {tenant}){expiry}", file=sys.stderr)
    print(url)


def _list(c: Client, args: argparse.Namespace, tenant: str) -> None:
    timelines = [tl for tl in c.list_timelines(tenant_id=tenant).timelines if tl.name]
    timelines.sort(key=lambda tl: tl.name)
    names = {tl.timeline_id: tl.name for tl in timelines}
    if args.json:
        print_json([_info_dict(tl, names, database_url(args, tl.name)) for tl in timelines])
        return
    if not timelines:
        print(f"Tenant {tenant} has no databases yet (make one with `{strata_command()} db create NAME`).")
        return
    now = time.time()
    rows = [
        (
            tl.name,
            names.get(tl.ancestor_timeline_id, tl.ancestor_timeline_id) or "-",
            str(tl.ancestor_lsn) if tl.ancestor_timeline_id else "-",
            str(tl.last_record_lsn),
            _expiry(tl.expires_at_us, now),
            tl.timeline_id,
        )
        for tl in timelines
    ]
    print(_table(("NAME", "FROM", "BRANCH LSN", "LAST RECORD LSN", "EXPIRES", "TIMELINE"), rows))


def _show(c: Client, args: argparse.Namespace, tenant: str) -> None:
    info = _find(c, tenant, args.name)
    info = c.get_timeline(tenant_id=tenant, timeline_id=info.timeline_id)  # with sizes
    ancestor = ""
    if info.ancestor_timeline_id:
        ancestor = c.get_timeline(tenant_id=tenant, timeline_id=info.ancestor_timeline_id).name
    url = database_url(args, info.name)
    if args.json:
        print_json(_info_dict(info, {info.ancestor_timeline_id: ancestor}, url))
        return
    origin = (
        f"{ancestor or info.ancestor_timeline_id} at lsn {info.ancestor_lsn}" if info.ancestor_timeline_id else "- (a root)"
    )
    rows = [
        ("name", info.name), ("url", url), ("tenant", tenant), ("timeline", info.timeline_id), ("from", origin),
        ("last record lsn", str(info.last_record_lsn)), ("gc cutoff lsn", str(info.gc_cutoff_lsn)),
        ("logical size", f"{info.logical_size} bytes"), ("physical size", f"{info.physical_size} bytes"),
        ("expires", _expiry(info.expires_at_us, time.time())),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def _log(c: Client, args: argparse.Namespace, tenant: str) -> None:
    """The database's commits, newest first (ListCommits; a branch's history goes on
    into its ancestor's commits at or below the branch point)."""
    info = _find(c, tenant, args.name)
    resp = c.list_commits(
        tenant_id=tenant, timeline_id=info.timeline_id, limit=args.limit, newest_first=True, include_ancestors=True
    )
    names = {tl.timeline_id: tl.name for tl in c.list_timelines(tenant_id=tenant).timelines}
    if args.json:
        print_json([{**message_dict(commit), "database": names.get(commit.timeline_id, "")} for commit in resp.commits])
        return
    if not resp.commits:
        print(f"Database {args.name} has no commits yet.")
        return
    rows = [
        (
            str(commit.end_lsn),
            datetime.fromtimestamp(commit.commit_time_us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%fZ")[:-4] + "Z"
            if commit.commit_time_us else "-",
            str(commit.records),
            f"{commit.bytes} B",
            names.get(commit.timeline_id, commit.timeline_id) if commit.timeline_id != info.timeline_id else "",
        )
        for commit in resp.commits
    ]
    print(_table(("END LSN", "COMMITTED AT", "RECORDS", "SIZE", "ON"), rows))
    if len(resp.commits) == args.limit:
        print(f"(the newest {args.limit}; --limit N for more)", file=sys.stderr)


def _delete(c: Client, args: argparse.Namespace, tenant: str) -> None:
    info = _find(c, tenant, args.name)
    c.delete_timeline(tenant_id=tenant, timeline_id=info.timeline_id)
    if args.json:
        print_json({**message_dict(info), "deleted": True})
        return
    print(f"deleted database {args.name} (timeline {info.timeline_id} of tenant {tenant}): its layers and WAL", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strata db", description="Databases: named timelines of a tenant (the stack's default tenant unless --tenant)."
    )
    parser.add_argument("action", choices=ACTIONS, help="create NAME | list | show NAME | delete NAME | log NAME")
    parser.add_argument("name", nargs="?", type=name_arg, help="the database name (a DNS label: [a-z][a-z0-9-]{0,62})")
    parser.add_argument("--tenant", type=tenant_arg, default=None, help="whose databases (default: the stack's default tenant)")
    parser.add_argument("--from", dest="from_name", type=name_arg, default=None, help="with create: branch this database (O(1))")
    at = parser.add_mutually_exclusive_group()
    at.add_argument("--at", type=non_negative, default=None, metavar="LSN", help="with --from: the branch point (default: its latest)")
    at.add_argument("--at-time", metavar="ISO-TIME", help="with --from: branch at the last commit at or before this time")
    parser.add_argument("--ttl", type=non_negative, default=0, help="with create: delete it this many seconds after creation")
    parser.add_argument("--limit", type=non_negative, default=DEFAULT_LOG_LIMIT, help=f"with log: how many commits, newest first (default {DEFAULT_LOG_LIMIT})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the running stack's data dir (default ./.strata)")
    parser.add_argument("--pageserver", default="", help="HOST:PORT of the pageserver (default: the one in <data dir>/stack.json)")
    parser.add_argument("--walservice", default="", help="A[,B,C]: the walservice node(s) (default: from stack.json)")
    parser.add_argument("--proxy", default="", help=f"HOST:PORT the printed URLs name (default: the stack's proxy, else {DEFAULT_PROXY})")
    tls.add_client_argument(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tls.use_client_ca(args.tls_ca)
    if (args.action == "list") != (args.name is None):
        parser.error("`db list` takes no name; create, show and delete take one")
    if args.action != "create" and (args.from_name or args.at is not None or args.at_time or args.ttl):
        parser.error("--from, --at, --at-time and --ttl go with `db create`")
    if (args.at is not None or args.at_time) and not args.from_name:
        parser.error("--at/--at-time need --from NAME (a new database has no history to branch from)")
    if args.action != "log" and args.limit != DEFAULT_LOG_LIMIT:
        parser.error("--limit goes with `db log`")
    if args.limit < 1:
        parser.error("--limit: give at least 1")
    run = {"create": _create, "list": _list, "show": _show, "delete": _delete, "log": _log}[args.action]
    try:
        pageserver, walservice = _endpoints(args)
        args.walservice = walservice or ""
        tenant = _tenant(args)
        with Client(pageserver=pageserver, walservice=walservice, timeout=10.0, retries=1) as client:
            try:
                find_tenant(client, tenant)
                run(client, args, tenant)
            except grpc.RpcError as exc:
                raise _rpc_error(exc, pageserver) from None
    except (AdminError, CheckFailed, CliError) as exc:
        print(f"strata db {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
