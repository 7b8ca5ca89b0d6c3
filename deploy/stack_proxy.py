"""The proxy in the local stack: what `strata up` starts after the pageserver, and
what `strata status` asks it.

`up` runs `strata proxy` on 127.0.0.1:8080 (`--free-ports`: a free port; busy
8080 stops `up` before anything starts, like the other ports) serving the stack's
default tenant, with `up`'s `--suspend-after` and `--max-computes`; `status`
checks its `GET /health` and lists its running computes (`GET /computes`).
"""

from __future__ import annotations

import argparse
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from strata.tls import client_ca

PROXY_PORT = 8080
HTTP_TIMEOUT_S = 2.0


def add_up_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suspend-after", type=float, default=300.0,
                        help="the proxy stops a database's compute after this many idle seconds (default 300)")
    parser.add_argument("--max-computes", type=int, default=100,
                        help="the proxy runs at most this many computes, suspending the least recently used idle one")


def proxy_args(pageserver: str, walservice: str, tenant: str, args: argparse.Namespace) -> list[str]:
    return ["--pageserver", pageserver, "--walservice", walservice, "--tenant", tenant,
            "--suspend-after", str(args.suspend_after), "--max-computes", str(args.max_computes)]


def _scheme() -> str:
    """https on a --tls stack (its CA is this process's, strata/tls.py), else http."""
    return "https" if client_ca() is not None else "http"


def _get(address: str, path: str) -> bytes:
    ca = client_ca()
    context = ssl.create_default_context(cadata=ca.decode()) if ca is not None else None
    with urllib.request.urlopen(f"{_scheme()}://{address}{path}", timeout=HTTP_TIMEOUT_S, context=context) as resp:
        return resp.read()


def health(address: str) -> str:
    """"SERVING" when the proxy answers GET /health, else what went wrong."""
    try:
        _get(address, "/health")
        return "SERVING"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable ({exc})"


def computes(address: str) -> list[dict[str, Any]]:
    """The proxy's running computes: [{database, lsn, pid, idle_s, in_transaction}]; [] if it cannot be asked."""
    try:
        return list(json.loads(_get(address, "/computes"))["computes"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return []


def describe(address: str) -> str:
    return f"libSQL clients: {_scheme()}://{address}/db/NAME/ (a database made by `strata db create NAME`)"
