"""Hrana streams over HTTP: the pipeline of one request, batons, idle expiry.

A `Stream` is what a baton names: the database it is on, its stored SQL texts
(`store_sql` is scoped to the stream over HTTP), its sequence number, and, while
it holds an open transaction, the generation of the compute holding it. A
pipeline is run in order: `store_sql`, `close_sql` and `close` here, the rest
forwarded to the compute in one `run` frame (their `sql_id`s resolved first).

Transactions: a compute has one SQLite connection, so one stream at a time owns
it (`ComputeHandle.owner`): from a request that leaves a transaction open until
the connection is back in autocommit mode. Requests outside transactions queue
in order for the compute (`ComputeHandle.run_for`); another stream's request
waits for an open transaction to end (up to `LOCK_WAIT_S`, then `SQLITE_BUSY`). A stream idle for `STREAM_IDLE_S` (10 s, like
libsql-server) expires: its open transaction is rolled back, and its baton is
answered with `STREAM_EXPIRED`. A compute that dies under a stream's open
transaction: the stream is closed with `COMPUTE_RESTARTED`, nothing of that
transaction having left the compute process.

State is owned by the event loop; `Stream.busy` keeps expiry off a stream with
a request in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.batons import Baton, BatonError, BatonSigner, new_stream_id
from proxy.computes import ComputeDied, ComputeManager, DatabaseKey
from strata.logs import event_logger

log = event_logger("proxy")
STREAM_IDLE_S = 10.0
LOCK_WAIT_S = 5.0
Json = dict[str, Any]
FORWARDED = frozenset({"execute", "batch", "sequence", "describe", "get_autocommit"})


class StreamRefused(Exception):
    """A baton or pipeline the proxy cannot accept: an HTTP 4xx with the spec's Error."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def to_json(self) -> Json:
        return {"message": str(self), "code": self.code}


def error_result(message: str, code: str) -> Json:
    return {"type": "error", "error": {"message": message, "code": code}}


@dataclass
class Stream:
    id: str
    key: DatabaseKey
    seq: int = 0
    last_used: float = field(default_factory=time.monotonic)
    sqls: dict[int, str] = field(default_factory=dict)
    txn_generation: int | None = None  # the compute generation holding this stream's open transaction
    closed: bool = False
    busy: bool = False


class StreamTable:
    def __init__(self, manager: ComputeManager, signer: BatonSigner | None = None, idle_s: float = STREAM_IDLE_S) -> None:
        self.manager = manager
        self.signer = signer or BatonSigner()
        self.idle_s = idle_s
        self._streams: dict[str, Stream] = {}

    def open(self, baton: Any, key: DatabaseKey) -> Stream:
        """The stream a request's baton names (a new one for a null baton)."""
        if baton is None:
            stream = Stream(new_stream_id(), key)
            self._streams[stream.id] = stream
            return stream
        try:
            parsed: Baton = self.signer.verify(baton)
        except BatonError as exc:
            raise StreamRefused(400, str(exc), "BATON_INVALID") from None
        stream = self._streams.get(parsed.stream_id)
        if stream is None or stream.closed:
            raise StreamRefused(
                400,
                f"stream {parsed.stream_id} is gone: it was closed, or expired after {self.idle_s:g} s idle "
                "(its open transaction rolled back); start a new stream with a null baton",
                "STREAM_EXPIRED",
            )
        if parsed.seq != stream.seq:
            raise StreamRefused(400, "the baton was already used: send the baton of the latest response", "BATON_REUSED")
        if stream.key != key:
            raise StreamRefused(400, f"the baton belongs to database {stream.key}, not {key}", "BATON_INVALID")
        if stream.busy:
            raise StreamRefused(400, "the stream has a request in flight: a stream's requests go one at a time", "BATON_REUSED")
        return stream

    def next_baton(self, stream: Stream) -> str | None:
        """The baton of the response (None once the stream is closed)."""
        stream.last_used = time.monotonic()
        if stream.closed:
            self._streams.pop(stream.id, None)
            return None
        stream.seq += 1
        return self.signer.sign(Baton(stream.id, stream.seq))

    async def run(self, stream: Stream, requests: Any) -> list[Json]:
        """One pipeline's results, in order (every request runs, as the spec says)."""
        if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
            raise StreamRefused(400, "requests must be an array of request objects", "HRANA_PROTO_ERROR")
        stream.busy = True
        try:
            return await self._run(stream, requests)
        finally:
            stream.busy = False
            stream.last_used = time.monotonic()

    async def _run(self, stream: Stream, requests: list[Json]) -> list[Json]:
        results: list[Json | None] = []
        forwarded: list[tuple[int, Json]] = []
        for request in requests:
            kind = request.get("type")
            if stream.closed:
                results.append(error_result("the stream is closed", "STREAM_CLOSED"))
            elif kind == "store_sql":
                sql_id, sql = request.get("sql_id"), request.get("sql")
                if not isinstance(sql_id, int) or isinstance(sql_id, bool) or not isinstance(sql, str):
                    results.append(error_result("store_sql needs an integer sql_id and an sql string", "HRANA_PROTO_ERROR"))
                elif sql_id in stream.sqls:
                    results.append(error_result(f"sql_id {sql_id} is already stored on this stream", "SQL_ID_IN_USE"))
                else:
                    stream.sqls[sql_id] = sql
                    results.append({"type": "ok", "response": {"type": "store_sql"}})
            elif kind == "close_sql":
                stream.sqls.pop(request.get("sql_id"), None)  # type: ignore[arg-type]
                results.append({"type": "ok", "response": {"type": "close_sql"}})
            elif kind == "close":
                stream.closed = True
                results.append({"type": "ok", "response": {"type": "close"}})
            elif kind in FORWARDED:
                try:
                    forwarded.append((len(results), self._resolve(stream, request)))
                    results.append(None)
                except StreamRefused as exc:
                    results.append(error_result(str(exc), exc.code))
            else:
                results.append(error_result(
                    f"unknown request type {kind!r:.40}; expected execute, batch, sequence, describe, store_sql, "
                    "close_sql, get_autocommit or close", "HRANA_PROTO_ERROR"))
        if forwarded:
            for (i, _), result in zip(forwarded, await self._forward(stream, [r for _, r in forwarded])):
                results[i] = result
        if stream.closed and stream.txn_generation is not None:
            await self._end_transaction(stream)
        return [r for r in results if r is not None]

    def _resolve(self, stream: Stream, request: Json) -> Json:
        """The request with each `sql_id` replaced by the stream's stored text."""

        def sql_of(holder: Json) -> Json:
            if holder.get("sql_id") is None:
                return holder
            sql = stream.sqls.get(holder["sql_id"])
            if sql is None:
                raise StreamRefused(400, f"sql_id {holder['sql_id']!r:.20} is not stored on this stream", "SQL_NOT_FOUND")
            return {**holder, "sql": sql, "sql_id": None}

        kind = request["type"]
        if kind in ("sequence", "describe"):
            return sql_of(request)
        if kind == "execute" and isinstance(request.get("stmt"), dict):
            return {**request, "stmt": sql_of(request["stmt"])}
        if kind == "batch" and isinstance(request.get("batch"), dict) and isinstance(request["batch"].get("steps"), list):
            steps = [
                {**s, "stmt": sql_of(s["stmt"])} if isinstance(s, dict) and isinstance(s.get("stmt"), dict) else s
                for s in request["batch"]["steps"]
            ]
            return {**request, "batch": {**request["batch"], "steps": steps}}
        return request

    async def _forward(self, stream: Stream, requests: list[Json]) -> list[Json]:
        handle = await self.manager.get(stream.key)
        if stream.txn_generation is not None and stream.txn_generation != handle.generation:
            stream.txn_generation, stream.closed = None, True
            return [error_result(
                "the database's compute stopped while this stream had an open transaction: it was rolled back "
                "(nothing of it was committed); start a new stream", "COMPUTE_RESTARTED")] * len(requests)
        handle.busy += 1
        try:
            try:
                answer = await handle.run_for(stream.id, {"op": "run", "requests": requests}, LOCK_WAIT_S)
            except ComputeDied as exc:
                self.manager.died(handle)
                stream.txn_generation, stream.closed = None, True
                log.warning("stream_compute_died", stream=stream.id, database=stream.key, reason=exc)
                return [error_result(
                    f"{exc}; the stream's open transaction was rolled back (nothing of it was committed); "
                    "start a new stream", "COMPUTE_RESTARTED")] * len(requests)
            if answer is None:
                return [error_result(
                    f"another stream's transaction has held the database for {LOCK_WAIT_S:g} s", "SQLITE_BUSY")] * len(requests)
            if "error" in answer:
                stream.txn_generation = None
                return [error_result(str(answer["error"]), "SERVER_ERROR")] * len(requests)
            stream.txn_generation = None if answer["autocommit"] else handle.generation
            return list(answer["results"])
        finally:
            handle.busy -= 1
            handle.last_used = time.monotonic()

    async def _end_transaction(self, stream: Stream) -> None:
        """Roll back a closed or expired stream's open transaction and free its compute."""
        generation, stream.txn_generation = stream.txn_generation, None
        handle = next((h for h in self.manager.running() if h.key == stream.key and h.generation == generation), None)
        if handle is None or handle.owner != stream.id:
            return
        try:
            await handle.run_for(stream.id, {"op": "rollback"}, LOCK_WAIT_S)  # answers autocommit: frees the compute
        except ComputeDied:
            self.manager.died(handle)

    async def expire(self) -> None:
        now = time.monotonic()
        for stream in list(self._streams.values()):
            if not stream.busy and now - stream.last_used >= self.idle_s:
                del self._streams[stream.id]
                stream.closed = True
                if stream.txn_generation is not None:
                    log.info("stream_expired", stream=stream.id, database=stream.key, open_transaction=True)
                    await self._end_transaction(stream)
