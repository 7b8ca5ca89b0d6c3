"""`strata tenants`, `strata timelines`, `strata branch`: the TimelineService from a shell.

    strata tenants [--json] | tenants create [--page-size N] [--pitr-seconds S] | tenants delete TENANT
    strata timelines TENANT [--json] | timelines TENANT delete TIMELINE
    strata branch TENANT [--from TIMELINE [--at LSN]] [--ttl SECONDS]

They talk to the running local stack (the pageserver recorded in
`<data dir>/stack.json`, written by `strata up`) or to the address given with
`--pageserver`. Ids that a command creates go to stdout alone (so
`T=$(strata tenants create)` works); what happened goes to stderr. Ids are
checked before anything is sent (deploy/cli_checks.py): an unknown one is refused
naming the ones there are, a branch point past the end at once. Exit codes:
0 done, 1 refused (by those checks, or by the server: its message is printed) or
unreachable, 2 bad usage (a malformed id, a negative LSN, a flag out of place).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import grpc

from compute_shim import Client
from deploy.cli_checks import CheckFailed, check_branch_point, find_tenant, find_timeline, non_negative, tenant_arg, timeline_arg
from deploy.cli_output import data_dir_flag, message_dict, print_json, strata_command
from deploy.local_stack import DEFAULT_DATA_DIR, STATE_FILE, _alive, _read_state, walservice_address
from strata.v1 import timeline_pb2
from strata import tls

COMMANDS = ("tenants", "timelines", "branch")


class AdminError(Exception):
    """A failure to report on stderr with exit code 1 (no traceback)."""


def _endpoints(args: argparse.Namespace) -> tuple[str, str | None]:
    """(pageserver, walservice) from the flags, else from the running stack's stack.json."""
    if args.pageserver:
        return args.pageserver, args.walservice
    data_dir: Path = args.data_dir
    records = _read_state(data_dir)
    processes = {p.name: p for p in records}
    if "pageserver" not in processes:
        raise AdminError(
            f"no Strata stack is running under {data_dir} (no pageserver in {data_dir / STATE_FILE}): "
            f"start one with `{strata_command()} up{data_dir_flag(data_dir)}`, or pass --pageserver HOST:PORT"
        )
    pageserver = processes["pageserver"]
    if not _alive(pageserver.pid):
        raise AdminError(
            f"the pageserver recorded in {data_dir / STATE_FILE} (pid {pageserver.pid}, {pageserver.address}) is not running: "
            f"`{strata_command()} status{data_dir_flag(data_dir)}` says what runs; `{strata_command()} down{data_dir_flag(data_dir)}` "
            f"then `{strata_command()} up{data_dir_flag(data_dir)}` restarts the stack"
        )
    return pageserver.address, args.walservice or walservice_address(records)


def _rpc_error(exc: grpc.RpcError, address: str) -> AdminError:
    code, details = exc.code(), exc.details() or ""
    # gRPC's own failures (nothing listening, no answer in time) carry its wording, not a server's message.
    unreachable = (code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect")) or (
        code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded"
    )
    if unreachable:
        return AdminError(f"cannot reach the pageserver at {address} ({code.name}: {details}): is the stack running? (`strata status`)")
    return AdminError(f"{code.name}: {details}")


def _human_seconds(seconds: float) -> str:
    """7d, 1h30m, 45s: the two largest units."""
    rest = max(int(seconds), 0)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        whole, rest = divmod(rest, size)
        if whole:
            parts.append(f"{whole}{unit}")
    return "".join(parts[:2]) or "0s"


def _expiry(expires_at_us: int, now: float) -> str:
    if not expires_at_us:
        return "never"
    at = expires_at_us / 1e6
    stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    left = at - now
    return f"{stamp} (in {_human_seconds(left)})" if left > 0 else f"{stamp} (expired)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


# --- the commands ---------------------------------------------------------------------


def _tenants(c: Client, args: argparse.Namespace) -> None:
    if args.action == "create":
        info = c.create_tenant(page_size=args.page_size, pitr_seconds=args.pitr_seconds)
        print(
            f"created tenant {info.tenant_id} (page size {info.page_size}, PITR window {_human_seconds(info.pitr_seconds)})",
            file=sys.stderr,
        )
        print(info.tenant_id)
        return
    if args.action == "delete":
        find_tenant(c, args.tenant)
        c.delete_tenant(tenant_id=args.tenant)
        print(f"deleted tenant {args.tenant}: its timelines, their layers and WAL", file=sys.stderr)
        return
    tenants = sorted(c.list_tenants().tenants, key=lambda t: t.tenant_id)
    if args.json:
        print_json([message_dict(t) for t in tenants])
        return
    if not tenants:
        print("No tenants yet (create one with `strata tenants create`).")
        return
    rows = [
        (t.tenant_id, str(t.page_size), _human_seconds(t.pitr_seconds), str(t.timeline_count), str(t.generation), t.state or "-")
        for t in tenants
    ]
    print(_table(("TENANT", "PAGE SIZE", "PITR", "TIMELINES", "GENERATION", "STATE"), rows))


def _tree_order(timelines: Sequence[timeline_pb2.TimelineInfo]) -> list[tuple[int, timeline_pb2.TimelineInfo]]:
    """(depth, timeline) with every branch right under its ancestor, siblings by branch LSN."""
    ids = {tl.timeline_id for tl in timelines}
    children: dict[str, list[timeline_pb2.TimelineInfo]] = {}
    roots = []
    for tl in timelines:
        if tl.ancestor_timeline_id and tl.ancestor_timeline_id in ids:
            children.setdefault(tl.ancestor_timeline_id, []).append(tl)
        else:
            roots.append(tl)
    out: list[tuple[int, timeline_pb2.TimelineInfo]] = []

    def visit(tl: timeline_pb2.TimelineInfo, depth: int) -> None:
        out.append((depth, tl))
        for child in sorted(children.get(tl.timeline_id, []), key=lambda t: (t.ancestor_lsn, t.timeline_id)):
            visit(child, depth + 1)

    for root in sorted(roots, key=lambda t: t.timeline_id):
        visit(root, 0)
    return out


def _timelines(c: Client, args: argparse.Namespace) -> None:
    find_tenant(c, args.tenant)
    if args.action == "delete":
        find_timeline(c, args.tenant, args.timeline)
        c.delete_timeline(tenant_id=args.tenant, timeline_id=args.timeline)
        print(f"deleted timeline {args.timeline} of tenant {args.tenant}: its layers and WAL", file=sys.stderr)
        return
    timelines = list(c.list_timelines(tenant_id=args.tenant).timelines)
    if args.json:
        print_json([message_dict(tl) for _, tl in _tree_order(timelines)])
        return
    if not timelines:
        print(f"Tenant {args.tenant} has no timelines yet (create one with `strata branch {args.tenant}`).")
        return
    now = time.time()
    rows = [
        (
            "  " * depth + tl.timeline_id,
            tl.ancestor_timeline_id or "-",
            str(tl.ancestor_lsn) if tl.ancestor_timeline_id else "-",
            str(tl.last_record_lsn),
            str(tl.gc_cutoff_lsn),
            _expiry(tl.expires_at_us, now),
        )
        for depth, tl in _tree_order(timelines)
    ]
    print(_table(("TIMELINE", "ANCESTOR", "BRANCH LSN", "LAST RECORD LSN", "GC CUTOFF", "EXPIRES"), rows))


def _branch(c: Client, args: argparse.Namespace) -> None:
    find_tenant(c, args.tenant)
    if args.from_timeline:
        ancestor = find_timeline(c, args.tenant, args.from_timeline)
        check_branch_point(c, ancestor, args.at, walservice=bool(args.walservice))
    info = c.create_timeline(
        tenant_id=args.tenant, ancestor_timeline_id=args.from_timeline or "", ancestor_lsn=args.at, ttl_seconds=args.ttl
    )
    expiry = f", expires {_expiry(info.expires_at_us, time.time())}" if info.expires_at_us else ""
    if info.ancestor_timeline_id:
        what = f"branch {info.timeline_id} of {info.ancestor_timeline_id} at LSN {info.ancestor_lsn}"
        if args.at and info.ancestor_lsn != args.at:
            print(f"--at {args.at}: the last commit at or below is lsn {info.ancestor_lsn}", file=sys.stderr)
    else:
        what = f"root timeline {info.timeline_id}"
    print(f"created {what} in tenant {info.tenant_id}{expiry}", file=sys.stderr)
    print(info.timeline_id)


def build_parser(command: str) -> argparse.ArgumentParser:
    descriptions = {
        "tenants": "List the tenants, `create` one (its id is printed), or `delete TENANT` (all its timelines).",
        "timelines": "List a tenant's timelines, each branch under its ancestor, or `delete TIMELINE` (one without branches).",
        "branch": "Create a root timeline, or with --from a branch of one (O(1): nothing is copied); prints its id.",
    }
    parser = argparse.ArgumentParser(prog=f"strata {command}", description=descriptions[command])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the running stack's data dir (default ./.strata)")
    parser.add_argument("--pageserver", default="", help="HOST:PORT of the pageserver (default: the one in <data dir>/stack.json)")
    parser.add_argument("--walservice", default="", help="A[,B,C]: the walservice node(s) (default: from stack.json)")
    if command == "tenants":
        parser.add_argument("action", nargs="?", choices=["list", "create", "delete"], default="list")
        parser.add_argument("tenant", nargs="?", type=tenant_arg, help="with delete: the tenant id")
        parser.add_argument("--page-size", type=non_negative, default=0, help="with create: bytes per page, a power of two from 512 to 65536 (default 8192)")
        parser.add_argument("--pitr-seconds", type=non_negative, default=0, help="with create: the time-travel window (default: the server's, 7 days)")
    elif command == "timelines":
        parser.add_argument("tenant", type=tenant_arg, help="the tenant id (32 hex characters)")
        parser.add_argument("action", nargs="?", choices=["list", "delete"], default="list")
        parser.add_argument("timeline", nargs="?", type=timeline_arg, help="with delete: the timeline id")
    else:
        parser.add_argument("tenant", type=tenant_arg, help="the tenant id (32 hex characters)")
        parser.add_argument("--from", dest="from_timeline", type=timeline_arg, default=None, help="the ancestor timeline (omit for a new root timeline)")
        parser.add_argument("--at", type=non_negative, default=0, help="with --from: the branch point LSN (default 0: the ancestor's latest)")
        parser.add_argument("--ttl", type=non_negative, default=0, help="delete the timeline this many seconds after creation (default 0: never)")
    if command in ("tenants", "timelines"):
        parser.add_argument("--json", action="store_true", help="print the list as JSON (every field of each entry)")
    tls.add_client_argument(parser)
    return parser


def main(command: str, argv: list[str]) -> int:
    parser = build_parser(command)
    args = parser.parse_args(argv)
    tls.use_client_ca(args.tls_ca)
    if command == "tenants" and args.action == "list" and (args.page_size or args.pitr_seconds):
        parser.error("--page-size and --pitr-seconds go with `strata tenants create`")
    if command == "branch" and args.at and not args.from_timeline:
        parser.error("--at LSN needs --from TIMELINE (a root timeline has no branch point)")
    if command in ("tenants", "timelines"):
        target = "tenant" if command == "tenants" else "timeline"
        if (args.action == "delete") != (getattr(args, target) is not None):
            parser.error(f"`strata {command} ... delete` takes one {target} id, and only delete does")
        if args.json and args.action != "list":
            parser.error("--json goes with the listing")
    run: Callable[[Client, argparse.Namespace], None] = {"tenants": _tenants, "timelines": _timelines, "branch": _branch}[command]
    try:
        pageserver, walservice = _endpoints(args)
        args.walservice = walservice or ""
        with Client(pageserver=pageserver, walservice=walservice, timeout=10.0, retries=1) as client:
            try:
                run(client, args)
            except grpc.RpcError as exc:
                raise _rpc_error(exc, pageserver) from None
    except (AdminError, CheckFailed) as exc:
        print(f"strata {command}: {exc}", file=sys.stderr)
        return 1
    return 0
