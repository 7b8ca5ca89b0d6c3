"""The proxy's HTTP server (aiohttp): Hrana over HTTP, as libsql-server serves it.

Routes (each also under `/db/NAME/` and `/db/NAME@LSN/`):
`POST /v2/pipeline`, `POST /v3/pipeline`, `POST /v3/cursor`, `GET /v2`, `GET /v3`;
and `GET /health`, `GET /version`, `GET /metrics` (Prometheus), `GET /computes`
(JSON: the running computes, what `strata status` shows, and `pool`, the pids of
the pre-started ones waiting for a database).

Which database: the path's `/db/NAME/` (or `NAME@LSN`: read-only, at that LSN),
else the `x-namespace` header, else the Host header's first label when the host
is a name with more than one label (`NAME.localhost:8080`). None of them, or a
name that is not a DNS label: 400; a name the tenant has no database by: 404.

HTTP errors carry the spec's Error object (`{"message", "code"}`) as JSON;
errors of single requests inside a pipeline are results, as the spec says.
Bodies over `max_body_bytes` are refused with 413 before they are parsed.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.computes import ComputeDied, ComputeManager, ComputeRefused, DatabaseKey
from proxy.metrics import ProxyMetrics
from proxy.streams import StreamRefused, StreamTable
from strata.ids import Lsn
from strata.logs import event_logger

log = event_logger("proxy")
VERSION = "strata-proxy 0.1.0 (Hrana 3 over HTTP, JSON)"
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
DB_SEGMENT = r"{db:[^/]+}{sep:/+}"
MAX_BODY_BYTES = 10 << 20
Json = dict[str, Any]


class UnknownDatabase(Exception):
    """No database by that name in the proxy's tenant."""


def http_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"message": message, "code": code}, status=status)


def database_key(request: web.Request) -> DatabaseKey:
    raw = request.match_info.get("db") or request.headers.get("x-namespace")
    if raw is None:
        host = (request.headers.get("Host") or "").rsplit(":", 1)[0]
        labels = host.split(".")
        if len(labels) > 1 and NAME_RE.fullmatch(labels[0]):
            raw = labels[0]
    if raw is None:
        raise StreamRefused(
            400, "no database named: use the path /db/NAME/, the x-namespace header, or the host NAME.localhost", "NO_DATABASE"
        )
    name, _, at = raw.partition("@")
    if not NAME_RE.fullmatch(name):
        raise StreamRefused(400, f"database name {name!r:.80} is not a DNS label ([a-z][a-z0-9-]{{0,62}})", "BAD_DATABASE_NAME")
    if not _:
        return DatabaseKey(name)
    if not at.isdigit() or int(at) <= 0 or int(at) >= 1 << 64:
        raise StreamRefused(400, f"{raw!r:.80}: the part after @ must be an LSN (a positive integer)", "BAD_LSN")
    return DatabaseKey(name, Lsn(int(at)))


class ProxyApp:
    def __init__(self, manager: ComputeManager, metrics: ProxyMetrics, streams: StreamTable, tick_s: float = 1.0) -> None:
        self.manager, self.metrics, self.streams, self.tick_s = manager, metrics, streams, tick_s
        self._ticker: asyncio.Task[None] | None = None

    def build(self, max_body_bytes: int = MAX_BODY_BYTES) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._outcomes])
        for prefix in ("", "/db/" + DB_SEGMENT):
            slash = "/" if prefix == "" else ""
            app.router.add_post(f"{prefix}{slash}v2/pipeline", self._pipeline)
            app.router.add_post(f"{prefix}{slash}v3/pipeline", self._pipeline)
            app.router.add_post(f"{prefix}{slash}v3/cursor", self._cursor)
            app.router.add_get(f"{prefix}{slash}v2", self._supported)
            app.router.add_get(f"{prefix}{slash}v3", self._supported)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/computes", self._computes)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        await self.manager.fill_pool()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _stop(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.manager.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            await self.streams.expire()
            await self.manager.reap()

    @web.middleware
    async def _outcomes(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            if exc.status == 413:
                response = http_error(413, f"{exc.text}: the proxy takes request bodies up to {request.app._client_max_size} bytes", "BODY_TOO_LARGE")
        outcome = "ok" if response.status < 400 else "client_error" if response.status < 500 else "server_error"
        self.metrics.requests.labels(outcome).inc()
        return response

    async def _body(self, request: web.Request) -> Json:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise StreamRefused(400, f"the request body is not JSON: {exc}", "HRANA_PROTO_ERROR") from None
        if not isinstance(body, dict):
            raise StreamRefused(400, "the request body must be a JSON object", "HRANA_PROTO_ERROR")
        return body

    async def _guarded(self, request: web.Request, run: Callable[[DatabaseKey, Json], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            key = database_key(request)
            return await run(key, await self._body(request))
        except StreamRefused as exc:
            return http_error(exc.status, str(exc), exc.code)
        except UnknownDatabase as exc:
            return http_error(404, str(exc), "DATABASE_NOT_FOUND")
        except ComputeRefused as exc:
            return http_error(400, f"the database cannot be opened: {exc}", "DATABASE_UNAVAILABLE")
        except ComputeDied as exc:
            return http_error(503, f"the database's compute stopped: {exc}; retry", "COMPUTE_RESTARTED")

    async def _pipeline(self, request: web.Request) -> web.StreamResponse:
        async def run(key: DatabaseKey, body: Json) -> web.StreamResponse:
            stream = self.streams.open(body.get("baton"), key)
            results = await self.streams.run(stream, body.get("requests"))
            return web.json_response({"baton": self.streams.next_baton(stream), "base_url": None, "results": results})

        return await self._guarded(request, run)

    async def _cursor(self, request: web.Request) -> web.StreamResponse:
        async def run(key: DatabaseKey, body: Json) -> web.StreamResponse:
            stream = self.streams.open(body.get("baton"), key)
            (result,) = await self.streams.run(stream, [{"type": "batch", "batch": body.get("batch")}])
            lines: list[Json] = [{"baton": self.streams.next_baton(stream), "base_url": None}]
            if result["type"] == "error":
                lines.append({"type": "error", "error": result["error"]})
            else:
                batch = result["response"]["result"]
                for step, (res, err) in enumerate(zip(batch["step_results"], batch["step_errors"])):
                    if err is not None:
                        lines.append({"type": "step_error", "step": step, "error": err})
                    elif res is not None:
                        lines.append({"type": "step_begin", "step": step, "cols": res["cols"]})
                        lines.extend({"type": "row", "row": row} for row in res["rows"])
                        lines.append({"type": "step_end", "affected_row_count": res["affected_row_count"],
                                      "last_insert_rowid": res["last_insert_rowid"]})
            text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
            return web.Response(text=text, content_type="text/plain")

        return await self._guarded(request, run)

    async def _supported(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="")

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=VERSION)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _computes(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        computes = [
            {"database": h.key.name if h.key else None, "lsn": h.key.lsn if h.key else None, "pid": h.pid,
             "idle_s": round(now - h.last_used, 1), "in_transaction": h.owner is not None}
            for h in self.manager.running()
        ]
        return web.json_response({"computes": computes, "pool": [h.pid for h in self.manager.pooled()]})
