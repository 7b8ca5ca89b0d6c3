"""`strata sql TENANT TIMELINE [--at LSN | --at-time ISO-TIME]`: an SQL shell on a timeline.

Read-write at the timeline's end by default (each committed transaction is one
conditional Append); `--at LSN` or `--at-time` opens it read-only in the past.
The endpoints come from the running local stack (`<data dir>/stack.json`, as
written by `strata up`) unless `--pageserver` / `--walservice` name them. With
`-c SQL` it runs the SQL, prints the rows and exits; otherwise it is apsw's
interactive shell (`.help` lists its dot-commands).

Each commit it makes is said on stderr with its LSN (`committed at lsn N`: the
`--at` that reads the database as that commit left it). `--at N` opens at the
last commit at or below N, saying so on stderr when that is not N (`--at N: the
last commit at or below is lsn M`); an N before the first commit is refused
naming the nearest commits.

Errors (an unknown tenant or timeline, or the two swapped: said naming what
exists, before anything else is sent; an LSN below the GC cutoff or past the
end, a stack that is not running, a refused commit) are one line on stderr,
`strata sql: ...`, and exit code 1; usage errors (a malformed id, a negative
LSN) exit 2.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import apsw
import apsw.shell
import grpc

from compute_shim.client import Client
from compute_shim.commits import read_lsn_of
from compute_shim.sqlite import CommitRefused, CommitUncertain, connect_sqlite
from deploy.cli_checks import CheckFailed, find_timeline, non_negative, tenant_arg, timeline_arg
from deploy.cli_output import data_dir_flag, strata_command
from deploy.local_stack import DEFAULT_DATA_DIR, endpoints
from strata import tls

# A command-line tool fails fast when the stack is down: one resend, not the
# library's election-long default.
CLI_RETRIES = 2


class CliError(Exception):
    """A failure reported as one line on stderr with exit code 1 (no traceback)."""


def stack_endpoints(data_dir: Path, pageserver: str | None, walservice: str | None) -> tuple[str, str]:
    """(pageserver, walservice): the explicit ones, or those of the local stack under `data_dir`."""
    if not (pageserver and walservice):
        running = endpoints(data_dir)
        pageserver = pageserver or running.get("pageserver")
        walservice = walservice or running.get("walservice")
        if not (pageserver and walservice):
            raise CliError(
                f"no running local stack under {data_dir} (start it with `{strata_command()} up{data_dir_flag(data_dir)}`, "
                "or pass --pageserver HOST:PORT --walservice HOST:PORT)"
            )
    return pageserver, walservice


def _unreachable(exc: grpc.RpcError) -> bool:
    """gRPC's own failure to reach a server (nothing listening, no answer in time), not a server's answer."""
    details = (exc.details() or "").lower()
    return (exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details) or (
        exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and details == "deadline exceeded"
    )


def describe_error(exc: BaseException, stack: tuple[str, str] | None = None) -> str:
    """One line saying what failed, for a command-line tool."""
    if isinstance(exc, grpc.RpcError):
        code, details = exc.code(), exc.details() or ""
        if _unreachable(exc):
            where = f" (pageserver {stack[0]}, walservice {stack[1]})" if stack else ""
            text = f"cannot reach the stack{where}: {code.name}: {details}; is it running? (`strata status`)"
        else:
            text = f"{code.name}: {details}"
    elif isinstance(exc, apsw.Error):
        text = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, (CommitRefused, CommitUncertain)):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line


# What a command-line tool reports without a traceback.
REPORTED = (CliError, CheckFailed, grpc.RpcError, apsw.Error, CommitRefused, CommitUncertain, ValueError, OSError)


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the local stack's data dir (default ./.strata)")
    parser.add_argument("--pageserver", help="HOST:PORT (default: the local stack's)")
    parser.add_argument("--walservice", help="HOST:PORT[,HOST:PORT...] (default: the local stack's)")
    tls.add_client_argument(parser)


def parse_time_us(text: str) -> int:
    """An ISO 8601 time (a trailing Z or an offset; none means UTC) in microseconds since the epoch."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--at-time {text!r} is not an ISO 8601 time; give e.g. 2026-11-23T02:15:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1_000_000)


def resolve_lsn(client: Client, tenant: str, timeline: str, at: int | None, at_time: str | None) -> int | None:
    """The LSN to open at (None: read-write at the end); says on stderr what it picked."""
    if at_time is None:
        return at
    resp = client.get_lsn_by_timestamp(tenant_id=tenant, timeline_id=timeline, timestamp_us=parse_time_us(at_time))
    if resp.kind == "past" or resp.lsn == 0:
        raise CliError(f"--at-time {at_time}: the timeline had no commit yet at that time (its start is lsn {resp.lsn})")
    note = " (the latest commit: the time is past it)" if resp.kind == "future" else ""
    print(f"--at-time {at_time}: lsn {resp.lsn}{note}", file=sys.stderr)
    return resp.lsn


def _say_commit(end_lsn: int) -> None:
    print(f"committed at lsn {end_lsn}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strata sql", description="An SQL shell (SQLite) on a Strata timeline.")
    parser.add_argument("tenant", type=tenant_arg)
    parser.add_argument("timeline", type=timeline_arg)
    at = parser.add_mutually_exclusive_group()
    at.add_argument("--at", type=non_negative, metavar="LSN", help="open read-only at the last commit at or below this LSN (time travel)")
    at.add_argument("--at-time", metavar="ISO-TIME", help="open read-only at the last commit at or before this time")
    parser.add_argument("-c", "--command", metavar="SQL", help="run this SQL, print its rows, and exit")
    add_endpoint_args(parser)
    args = parser.parse_args(argv)
    tls.use_client_ca(args.tls_ca)
    client: Client | None = None
    stack: tuple[str, str] | None = None
    db: apsw.Connection | None = None
    try:
        stack = stack_endpoints(args.data_dir, args.pageserver, args.walservice)
        client = Client(pageserver=stack[0], walservice=stack[1], retries=CLI_RETRIES)
        find_timeline(client, args.tenant, args.timeline)
        lsn = resolve_lsn(client, args.tenant, args.timeline, args.at, args.at_time)
        db = connect_sqlite(client, args.tenant, args.timeline, lsn=lsn, on_commit=_say_commit)
        opened = read_lsn_of(db)
        if args.at and opened != args.at:
            print(f"--at {args.at}: the last commit at or below is lsn {opened}", file=sys.stderr)
        mode = "read-write" if opened is None else f"read-only at lsn {opened}"
        if args.command is not None:
            for row in db.execute(args.command):
                print("|".join("" if v is None else str(v) for v in row))
            return 0
        shell = apsw.shell.Shell(db=db)
        if sys.stdin.isatty():
            print(f"timeline {args.timeline} of tenant {args.tenant}, {mode}. .help for help, .quit to leave.")
        shell.cmdloop()
        return 0
    except REPORTED as exc:
        print(f"strata sql: {describe_error(exc, stack)}", file=sys.stderr)
        return 1
    finally:
        if db is not None:
            try:
                db.close()
            except apsw.Error:
                pass  # reported above
        if client is not None:
            client.close()
