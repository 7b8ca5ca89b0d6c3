"""`CommitStream`: a SQLite connection's commits on one long-lived AppendStream.

    stream = CommitStream("127.0.0.1:7676", append_timeout=30.0)
    response = stream.append(request_bytes, tenant_id=t, timeline_id=tl)  # blocks, on this thread
    stream.close()

A unary `Append` per commit costs ~0.4 ms of Python gRPC (a call set up and torn
down each time); a message on an open stream costs a fraction of that. So each
read-write SQLite connection (compute_shim/sqlite.py) keeps one `WalWriter`
(compute_shim/wal_writer.py: the stream, its answers matched in order, leader
redirects in a cluster, the outcome-unknown rules) and hands it each commit.

No thread hop: the writer lives on an event loop that this object owns and that
runs only inside `append`, on the caller's own thread (SQLite's thread, which is
blocked in its commit anyway), via `run_until_complete`. Between commits the loop
is idle and the stream stays open in gRPC's core; no thread of ours waits on it.
The commit's page records are serialized once, by the caller, into the
`AppendRequest` bytes handed in (`WalWriter.append_serialized`).

Threads: SQLite calls one connection's file methods from one thread at a time, so
`append` and `close` are never called concurrently for one CommitStream (the loop
is not reentrant); a connection used from different threads over its life is fine
(the loop is not bound to a thread). `_lock` only turns a concurrent misuse into a
clear error.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from compute_shim.wal_writer import AppendFailed, WalWriter
from strata.v1 import wal_pb2

__all__ = ["AppendFailed", "CommitStream"]


class CommitStream:
    def __init__(self, walservice: str, *, append_timeout: float, tls_ca: str | Path | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()  # held while the loop runs (see the module doc)
        self._writer = self._run(self._open(walservice, append_timeout, tls_ca))

    @staticmethod
    async def _open(walservice: str, append_timeout: float, tls_ca: str | Path | None) -> WalWriter:
        return WalWriter(walservice, max_in_flight=1, append_timeout=append_timeout, tls_ca=tls_ca)

    def _run(self, coroutine):  # type: ignore[no-untyped-def]
        if not self._lock.acquire(blocking=False):
            coroutine.close()
            raise RuntimeError("a CommitStream is used by one thread at a time (one SQLite connection's)")
        # SQLite may be called from a thread that runs an event loop of its own (a
        # blocking call in async code): that loop is stopped in this call anyway, so it
        # is set aside while ours runs and put back after.
        outer = asyncio._get_running_loop()
        asyncio._set_running_loop(None)
        try:
            return self._loop.run_until_complete(coroutine)
        finally:
            asyncio._set_running_loop(outer)
            self._lock.release()

    def append(self, request: bytes, *, tenant_id: str, timeline_id: str) -> wal_pb2.AppendResponse:
        """Send one serialized AppendRequest and wait for its answer (AppendFailed on a
        refusal or a lost answer, with `outcome_unknown` as WalWriter says)."""
        if self._loop.is_closed():
            raise RuntimeError("this CommitStream is closed")
        return self._run(self._writer.append_serialized(request, tenant_id=tenant_id, timeline_id=timeline_id))

    def close(self) -> None:
        """Close the stream (every commit was answered: `append` waits for its own)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._writer.close())
        finally:
            try:
                self._run(self._drain())
            finally:
                self._loop.close()

    @staticmethod
    async def _drain() -> None:
        """Cancel and finish what is left on the loop (gRPC's own tasks), as asyncio.run
        does, so that none is destroyed pending when the loop is closed (asyncio would
        print "Task was destroyed but it is pending!" at exit)."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()
