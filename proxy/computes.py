"""The proxy's computes: a pool of pre-started processes, wakes, idle suspension and LRU.

A database (a name, and for time travel an LSN) is served by at most one
`ComputeHandle`: a `proxy.compute_process` child talking frames over its pipes.
`ComputeManager.get(key)` returns the running one or wakes one: single-flight
(the first caller starts the wake, the others await the same future, so
concurrent first requests share one wake and are held, not refused). A wake
takes a process from the pool of pre-started ones (imports done, `Client`
built), so it costs an `assign` (opening the database), not a Python start-up;
the pool is refilled in the background once the wake is done (`REFILL_DELAY_S`).

Suspension: `reap()` (every `tick_s`) stops computes idle for `suspend_after_s`
that hold no open transaction; a wake beyond `max_computes` first stops the least
recently used idle one. A compute that exits unasked (SIGKILL, a crash) fails
the request in flight with `ComputeDied`; its handle is dropped, so the next
request wakes a new one. Its open transaction never left its process.

All state here is owned by the proxy's event loop (no threads touch it):
`_running` (key -> handle), `_waking` (key -> the future of the wake in
progress) and `_pool`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy import frames
from proxy.metrics import ProxyMetrics
from strata.ids import Lsn, TenantId, TimelineId
from strata.logs import event_logger

log = event_logger("proxy")
STOP_TIMEOUT_S = 5.0
REFILL_DELAY_S = 0.25


@dataclass(frozen=True)
class DatabaseKey:
    """What one compute serves: a database by name, read-write (lsn None) or read-only at an LSN."""

    name: str
    lsn: Lsn | None = None

    def __str__(self) -> str:
        return self.name if self.lsn is None else f"{self.name}@{self.lsn}"


class ComputeDied(Exception):
    """The compute exited while (or before) serving a request: that stream's open transaction is gone."""


class ComputeRefused(Exception):
    """The compute could not open its database (the message says why)."""


@dataclass
class ComputeHandle:
    proc: asyncio.subprocess.Process
    key: DatabaseKey | None = None
    generation: int = 0  # distinguishes this compute from an earlier one of the same database
    last_used: float = field(default_factory=time.monotonic)
    # The stream id holding an open transaction on this compute, or None: other streams'
    # requests wait on `released` until it commits, rolls back, closes or expires.
    # `owner` changes only while `_lock` is held (in `run_for`).
    owner: str | None = None
    released: asyncio.Condition = field(default_factory=asyncio.Condition)
    busy: int = 0  # requests in flight or waiting on this compute
    # One frame exchange at a time, in arrival order (asyncio.Lock is FIFO): requests
    # outside transactions queue here, and each release wakes only the next one.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One frame exchange, not tied to a stream (`assign`)."""
        async with self._lock:
            return await self._exchange(message)

    async def run_for(self, stream_id: str, message: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """Exchange `message` for stream `stream_id` once no other stream's open transaction
        holds the connection; None if one still does after `wait_s` seconds. The answer's
        `autocommit` (False: the stream's transaction is open) decides who owns it next."""
        deadline = time.monotonic() + wait_s
        while True:
            answer: dict[str, Any] | None = None
            freed = False  # a transaction ended here: wake the streams waiting for it
            try:
                async with self._lock:
                    if self.owner in (None, stream_id):
                        held, self.owner = self.owner, None  # kept only if the answer says it is still open
                        try:
                            answer = await self._exchange(message)
                        finally:
                            freed = held is not None
                        if answer.get("autocommit") is False:
                            self.owner, freed = stream_id, False
            finally:
                if freed:
                    async with self.released:
                        self.released.notify_all()
            if answer is not None:
                return answer
            async with self.released:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    await asyncio.wait_for(self.released.wait_for(lambda: self.owner in (None, stream_id)), remaining)
                except asyncio.TimeoutError:
                    return None

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.proc.returncode is not None or self.proc.stdin is None or self.proc.stdout is None:
            raise ComputeDied(f"compute pid={self.pid} has exited")
        try:
            self.proc.stdin.write(frames.encode(message))
            await self.proc.stdin.drain()
            return await read_frame(self.proc.stdout)
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError, frames.FrameError) as exc:
            raise ComputeDied(f"compute pid={self.pid} stopped mid-request ({type(exc).__name__})") from None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(frames.encode({"op": "exit"}))
                self.proc.stdin.close()
            except (ConnectionError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    length = frames.parse_header(await reader.readexactly(frames.HEADER.size))
    return frames.decode_payload(await reader.readexactly(length))


Resolver = Callable[[str], Awaitable[tuple[TenantId, TimelineId]]]


class ComputeManager:
    def __init__(
        self,
        *,
        pageserver: str,
        walservice: str,
        resolve: Resolver,
        metrics: ProxyMetrics,
        suspend_after_s: float = 300.0,
        max_computes: int = 100,
        pool_size: int = 2,
    ) -> None:
        self.pageserver, self.walservice = pageserver, walservice
        self.resolve = resolve
        self.metrics = metrics
        self.suspend_after_s, self.max_computes, self.pool_size = suspend_after_s, max_computes, pool_size
        self._running: dict[DatabaseKey, ComputeHandle] = {}
        self._waking: dict[DatabaseKey, asyncio.Future[ComputeHandle]] = {}
        self._pool: list[ComputeHandle] = []
        self._refilling = False
        self._tasks: set[asyncio.Task[None]] = set()  # background refills, referenced until done
        self._refills: set[asyncio.TimerHandle] = set()  # refills scheduled (see _refill_soon)
        self._closed = False
        self._generation = 0

    # -- the pool ------------------------------------------------------------

    async def _spawn(self) -> ComputeHandle:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.compute_process", "--pageserver", self.pageserver, "--walservice", self.walservice,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={**os.environ},
        )
        handle = ComputeHandle(proc)
        try:
            assert proc.stdout is not None
            await read_frame(proc.stdout)  # {"ok": true}: imports done, ready for a database
        except (asyncio.IncompleteReadError, frames.FrameError):
            await proc.wait()
            raise ComputeDied(f"a pre-started compute exited with {proc.returncode} while starting") from None
        return handle

    async def fill_pool(self) -> None:
        if self._refilling:
            return
        self._refilling = True
        try:
            while len(self._pool) < self.pool_size and not self._closed:
                handle = await self._spawn()
                if self._closed:  # close() ran while it started
                    await handle.stop()
                    break
                self._pool.append(handle)
                self.metrics.pool.set(len(self._pool))
        finally:
            self._refilling = False

    async def _take_from_pool(self) -> ComputeHandle:
        while self._pool:
            handle = self._pool.pop()
            self.metrics.pool.set(len(self._pool))
            if handle.proc.returncode is None:
                self._refill_soon()
                return handle
        handle = await self._spawn()
        self._refill_soon()
        return handle

    def _refill_soon(self) -> None:
        """Refill the pool REFILL_DELAY_S from now: a new compute's start-up (imports, about
        200 ms of CPU) would otherwise run beside the wake it replaces and slow it down."""
        loop = asyncio.get_running_loop()

        def refill() -> None:
            self._refills.discard(timer)
            task = loop.create_task(self.fill_pool())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        timer = loop.call_later(REFILL_DELAY_S, refill)
        self._refills.add(timer)

    # -- wakes ---------------------------------------------------------------

    async def get(self, key: DatabaseKey) -> ComputeHandle:
        """The running compute of `key`, woken if there is none (single-flight)."""
        handle = self._running.get(key)
        if handle is not None and handle.proc.returncode is None:
            handle.last_used = time.monotonic()
            return handle
        if handle is not None:
            self._forget(handle, died=True)
        waking = self._waking.get(key)
        if waking is None:
            waking = asyncio.get_running_loop().create_future()
            self._waking[key] = waking
            asyncio.get_running_loop().create_task(self._wake(key, waking))
        return await asyncio.shield(waking)

    async def _wake(self, key: DatabaseKey, done: asyncio.Future[ComputeHandle]) -> None:
        started = time.monotonic()
        try:
            tenant, timeline = await self.resolve(key.name)
            await self._make_room()
            handle = await self._take_from_pool()
            answer = await handle.call({"op": "assign", "tenant": tenant, "timeline": timeline, "lsn": key.lsn})
            if "error" in answer:
                await handle.stop()
                raise ComputeRefused(answer["error"])
            self._generation += 1
            handle.key, handle.generation, handle.last_used = key, self._generation, time.monotonic()
            self._running[key] = handle
            self.metrics.wakes.inc()
            self.metrics.wake_seconds.observe(time.monotonic() - started)
            self.metrics.running.set(len(self._running))
            log.info("wake", database=key, pid=handle.pid, ms=round((time.monotonic() - started) * 1000, 1))
            done.set_result(handle)
        except BaseException as exc:
            done.set_exception(exc)
            done.exception()  # retrieved here: the waiters re-raise it
        finally:
            self._waking.pop(key, None)

    async def _make_room(self) -> None:
        """Stop the least recently used idle compute while `max_computes` are running."""
        while len(self._running) >= self.max_computes:
            idle = [h for h in self._running.values() if h.busy == 0 and h.owner is None]
            if not idle:
                log.warning("over_max_computes", running=len(self._running), max=self.max_computes)
                return
            await self.suspend(min(idle, key=lambda h: h.last_used), "lru")

    # -- suspension ----------------------------------------------------------

    def _forget(self, handle: ComputeHandle, *, died: bool) -> None:
        if handle.key is not None and self._running.get(handle.key) is handle:
            del self._running[handle.key]
            self.metrics.running.set(len(self._running))
            if died:
                self.metrics.compute_deaths.inc()
                log.warning("compute_died", database=handle.key, pid=handle.pid, code=handle.proc.returncode)

    def died(self, handle: ComputeHandle) -> None:
        """A request found `handle`'s process gone: drop it so the next request wakes a new one."""
        self._forget(handle, died=True)

    async def suspend(self, handle: ComputeHandle, reason: str) -> None:
        self._forget(handle, died=False)
        self.metrics.suspends.labels(reason).inc()
        await handle.stop()
        log.info("suspend", database=handle.key, pid=handle.pid, reason=reason)

    async def reap(self) -> None:
        """Suspend every compute idle for suspend_after_s with no open transaction; drop dead ones."""
        now = time.monotonic()
        for handle in list(self._running.values()):
            if handle.proc.returncode is not None:
                self._forget(handle, died=True)
            elif handle.busy == 0 and handle.owner is None and now - handle.last_used >= self.suspend_after_s:
                await self.suspend(handle, "idle")

    def running(self) -> list[ComputeHandle]:
        return list(self._running.values())

    def pooled(self) -> list[ComputeHandle]:
        """The pre-started computes waiting for a database."""
        return list(self._pool)

    async def close(self) -> None:
        self._closed = True
        for timer in self._refills:
            timer.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in list(self._running.values()):
            await self.suspend(handle, "shutdown")
        pool, self._pool = self._pool, []
        self.metrics.pool.set(0)
        for handle in pool:
            await handle.stop()
