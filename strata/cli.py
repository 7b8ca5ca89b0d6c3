"""`strata`: the one console script (DESIGN.md, "Processes")."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Run one command; a reader that stops reading (`strata status | head -3`) ends it quietly."""
    try:
        try:
            _run(list(sys.argv[1:] if argv is None else argv))
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # Python's advice (signal docs, "Note on SIGPIPE"): point stdout at /dev/null so the
        # interpreter's own flush at exit finds nothing to fail on; exit as a SIGPIPE'd command would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def _run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="strata", description="Strata: storage for agent-era databases.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("walservice", help="run one walservice node", add_help=False)
    sub.add_parser("pageserver", help="run one pageserver", add_help=False)
    sub.add_parser("up", help="start the local stack on loopback", add_help=False)
    sub.add_parser("down", help="stop the local stack", add_help=False)
    sub.add_parser("status", help="say what runs and where", add_help=False)
    sub.add_parser("tenants", help="list tenants; `tenants create` makes one", add_help=False)
    sub.add_parser("timelines", help="list a tenant's timelines and branches", add_help=False)
    sub.add_parser("branch", help="create a root timeline or a branch", add_help=False)
    sub.add_parser("proxy", help="serve databases by name over libSQL's HTTP protocol (Hrana)", add_help=False)
    sub.add_parser("db", help="databases by name: `db create NAME [--from NAME]`, list, show, delete", add_help=False)
    sub.add_parser("sql", help="an SQL shell on a timeline (SQLite on Strata pages)", add_help=False)
    sub.add_parser("demo", help="the agent workflow on the local stack: 20 branches, migrations, undo", add_help=False)
    sub.add_parser("vectors", help="vector collections: `strata vectors build TENANT TIMELINE NAME`", add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "walservice":
        from walservice.server import main as walservice_main

        walservice_main(rest)
    elif command == "pageserver":
        from pageserver.server import main as pageserver_main

        pageserver_main(rest)
    elif command in ("up", "down", "status"):
        from deploy import local_stack

        sys.exit(local_stack.main(command, rest))
    elif command in ("tenants", "timelines", "branch"):
        from deploy import admin_cli

        sys.exit(admin_cli.main(command, rest))
    elif command == "proxy":
        from proxy.__main__ import main as proxy_main

        sys.exit(proxy_main(rest))
    elif command == "db":
        from deploy import db_cli

        sys.exit(db_cli.main(rest))
    elif command == "sql":
        from deploy import sql_shell

        sys.exit(sql_shell.main(rest))
    elif command == "demo":
        from deploy import demo

        sys.exit(demo.main(rest))
    elif command == "vectors":
        from gpu.cli import main as vectors_main

        sys.exit(vectors_main(rest))
    else:
        parser.error(f"unknown command {command!r}")
