"""A compute: one OS process running SQLite on Strata pages for one database.

Started by the proxy (`python -m proxy.compute_process --pageserver A --walservice
B`) before any database needs it: it imports apsw and compute_shim, builds its
`Client` and opens its connections (`Client.connect`), answers
`{"ok": true, "pid": ...}` to say it is ready, and waits.
A wake hands it a database with `assign` (`tenant`, `timeline`, `lsn`: null for
read-write, an LSN for read-only time travel); from then on it serves that one
database until the proxy tells it to `exit` or closes its stdin.

Requests and answers are frames (`proxy/frames.py`) on stdin and on the stdout
the process started with; fd 1 is pointed at stderr so that nothing a library
prints can corrupt a frame. One request at a time, answered in order:
- `run`: `requests` (stream requests with their SQL resolved) ->
  `{"results": [StreamResult...], "autocommit": bool}`;
- `rollback`: ends an open transaction (a stream expired or closed with one open);
- `exit`: close the connection and end.

Each committed transaction is one Append (compute_shim/sqlite.py), so a compute
SIGKILLed mid-transaction leaves nothing of it in Strata.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, BinaryIO

import apsw
import grpc

from compute_shim import Client, connect_sqlite
from proxy import frames, hrana
from strata import logs

log = logs.event_logger("compute")
CONNECT_TIMEOUT_S = 5.0


class Compute:
    """The state of this process: its client and, once assigned, its connection."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.conn: apsw.Connection | None = None

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "assign":
            lsn = message.get("lsn")
            self.conn = connect_sqlite(self.client, message["tenant"], message["timeline"], lsn=lsn)
            log.info("assigned", tenant=message["tenant"], timeline=message["timeline"], lsn=lsn)
            return {"ok": True}
        if self.conn is None:
            return {"error": f"op {op!r} before assign"}
        if op == "run":
            results = [hrana.run_request(self.conn, r) for r in message.get("requests", [])]
            return {"results": results, "autocommit": bool(self.conn.get_autocommit())}
        if op == "rollback":
            if not self.conn.get_autocommit():
                self.conn.execute("ROLLBACK")
            return {"ok": True, "autocommit": True}
        return {"error": f"unknown op {op!r}"}


def serve(inp: BinaryIO, out: BinaryIO, compute: Compute) -> None:
    while True:
        message = frames.read_frame(inp)
        if message is None or message.get("op") == "exit":
            break
        try:
            answer = compute.handle(message)
        except Exception as exc:  # answered to the proxy, which reports it to the client
            answer = {"error": hrana.error_json(exc)["message"]}
        out.write(frames.encode(answer))
        out.flush()
    if compute.conn is not None:
        compute.conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.compute_process")
    parser.add_argument("--pageserver", required=True)
    parser.add_argument("--walservice", required=True)
    args = parser.parse_args(argv)
    logs.configure()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    client = Client(pageserver=args.pageserver, walservice=args.walservice)
    try:
        client.connect(timeout=CONNECT_TIMEOUT_S)  # a wake then starts on open connections
    except grpc.FutureTimeoutError:
        # Not fatal: the channels keep trying, and a request that needs them says why it failed.
        log.warning("connect_slow", pageserver=args.pageserver, walservice=args.walservice, timeout_s=CONNECT_TIMEOUT_S)
    out.write(frames.encode({"ok": True, "pid": os.getpid()}))
    out.flush()
    serve(inp, out, Compute(client))
    log.info("exit", pid=os.getpid())


if __name__ == "__main__":
    main()
