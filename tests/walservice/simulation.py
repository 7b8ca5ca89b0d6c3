"""A deterministic simulation of a walservice cluster in one process.

Three (or more) nodes run the production code: each its own `TimelineSet` on its
own directory, its `Cluster` with the election watch, its `TimelineReplica`s.
What is simulated is only what lies between and under them:

- time: `VirtualTimeLoop`, an event loop whose clock jumps to the next timer
  whenever nothing is ready (no real waiting; `asyncio.sleep` and
  `asyncio.timeout` read it, and the clusters get `loop.time` as their clock);
- file work: `InlineExecutor` runs every `run_in_executor` job at once on the
  loop, so the order of events depends on nothing outside the seed;
- the network: `SimNetwork`, a `PeerTransport` per node (walservice/peers.py)
  that delivers each request and each answer after a seeded delay (concurrent
  messages overtake each other), drops either with a seeded probability, and
  refuses messages across a partition or to a node that is down;
- a crash: `SimNode.kill` cancels every task the node started (tracked through a
  context variable) and closes its files, like SIGKILL after the last write()
  returned: what was written stays, nothing in memory survives.

Same seed, same run: `SimCluster.trace` lists every acknowledged append's LSNs in
order, so a test can check that two runs agree.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import random
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from strata.errors import NotFound, StrataError
from strata.logs import EventLogger
from strata.v1 import peer_pb2, records_pb2, wal_pb2
from walservice.peer_stream import VERSION as PEER_STREAM_VERSION
from walservice.peer_stream import PeerStreamRefused
from walservice.peers import ClusterConfig, PeerUnreachable
from walservice.replication import Cluster
from walservice.timelines import TimelineSet

T = TypeVar("T")

# Which simulated node a task belongs to (None: the test itself).
_NODE: contextvars.ContextVar[int | None] = contextvars.ContextVar("sim_node", default=None)


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each job at once, in the caller's thread: file work happens at a
    fixed point of the event order (a ThreadPoolExecutor only in name, which
    asyncio's default executor must be; it never starts a thread)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _VirtualSelector(selectors.BaseSelector):
    """The loop's selector: polls the real one without blocking and, when nothing
    is ready, moves the virtual clock forward by the wait the loop asked for."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._inner = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("simulation deadlock: nothing is ready and no timer is due")
            self._loop.advance(timeout)
        return ready

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Any:
        return self._inner.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at 0 (see the module docstring)."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_VirtualSelector(self))
        self.set_default_executor(InlineExecutor())
        # task -> the node that started it (None: the test)
        self.task_node: dict[asyncio.Task[Any], int | None] = {}
        self.set_task_factory(self._make_task)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def _make_task(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
        context = kwargs.get("context")
        node = context.get(_NODE) if context is not None else _NODE.get()
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self.task_node[task] = node
        task.add_done_callback(self.task_node.pop)  # type: ignore[arg-type]
        return task


@dataclass
class SimNetwork:
    """Who can reach whom, and how messages travel (seeded)."""

    rng: random.Random
    drop: float = 0.02
    max_delay_s: float = 0.02
    up: dict[int, SimNode] = field(default_factory=dict)
    # Pairs of node ids that cannot reach each other.
    cut: set[frozenset[int]] = field(default_factory=set)
    # Errors the nodes' handlers answered with (other than NotFound).
    errors: list[StrataError] = field(default_factory=list)

    def reachable(self, a: int, b: int) -> bool:
        return a in self.up and b in self.up and frozenset((a, b)) not in self.cut

    async def _leg(self, src: int, dst: int, what: str) -> None:
        await asyncio.sleep(self.rng.random() * self.max_delay_s)
        if not self.reachable(src, dst) or self.rng.random() < self.drop:
            raise PeerUnreachable(f"node {dst}: {what} lost by the simulated network")

    async def deliver(self, src: int, dst: int, handler: Callable[[SimNode], Awaitable[T]]) -> T:
        """Carry a request to `dst`, run `handler` there (as dst's task, shielded
        from the caller giving up, like the real handlers), carry the answer back.
        A handler's NotFound passes through (the peer lacks the timeline); any other
        StrataError is what a gRPC status would be, PeerUnreachable to the caller,
        and is kept in `errors` for the test to look at."""
        await self._leg(src, dst, "request")
        node = self.up[dst]
        task = node.spawn(handler(node))
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                raise PeerUnreachable(f"node {dst} went down while answering") from None
            raise
        except NotFound:
            await self._leg(dst, src, "answer")
            raise
        except StrataError as exc:
            self.errors.append(exc)
            raise PeerUnreachable(f"node {dst}: {type(exc).__name__}: {exc}") from exc
        await self._leg(dst, src, "answer")
        return result


class _SimConnection:
    """A PeerAppend connection: one request at a time, answered in order."""

    def __init__(self, network: SimNetwork, src: int, dst: int) -> None:
        self.network, self.src, self.dst = network, src, dst
        self.closed = False

    async def exchange(self, request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        if self.closed:
            raise PeerUnreachable(f"node {self.dst}: connection closed")
        try:
            return await self.network.deliver(self.src, self.dst, lambda n: n.replica(request).on_peer_append(request))
        except NotFound as exc:  # what the real stream server answers for a missing timeline
            self.closed = True
            raise PeerStreamRefused(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
        except PeerUnreachable:
            self.closed = True  # a lost message breaks the pairing: the connection is gone
            raise

    def close(self) -> None:
        self.closed = True


class SimTransport:
    """One node's PeerTransport over the SimNetwork."""

    def __init__(self, network: SimNetwork, node_id: int) -> None:
        self.network, self.node_id = network, node_id

    async def call(self, node_id: int, method: str, request: Any, timeout: float) -> Any:
        handlers: dict[str, Callable[[SimNode], Awaitable[Any]]] = {
            "RequestVote": lambda n: n.replica(request).on_vote_request(request),
            "PeerStreamPort": lambda n: _port_answer(),
            "PeerCreateTimeline": lambda n: n.cluster.on_peer_create(n.timelines, request),
        }
        try:
            async with asyncio.timeout(timeout):
                return await self.network.deliver(self.node_id, node_id, handlers[method])
        except TimeoutError:
            raise PeerUnreachable(f"node {node_id} {method}: no answer within {timeout}s") from None
        except NotFound as exc:  # gRPC's NOT_FOUND, which callers leave out like an unreachable node
            raise PeerUnreachable(f"node {node_id} {method}: NOT_FOUND {exc}") from exc

    async def open_append_connection(self, node_id: int) -> _SimConnection:
        if not self.network.reachable(self.node_id, node_id):
            await asyncio.sleep(self.network.max_delay_s)
            raise PeerUnreachable(f"node {node_id}: cannot connect")
        return _SimConnection(self.network, self.node_id, node_id)

    async def report_persisted(self, node_id: int, request: wal_pb2.PersistedRequest, timeout: float) -> wal_pb2.WalStatus:
        raise PeerUnreachable("the simulation has no pageserver")

    async def close(self) -> None:
        pass


async def _port_answer() -> peer_pb2.PeerStreamPortResponse:
    return peer_pb2.PeerStreamPortResponse(version=PEER_STREAM_VERSION, port=0)


class SimNode:
    """One walservice node: the production TimelineSet and Cluster on its own
    directory, started and killed by the simulation."""

    def __init__(self, node_id: int, nodes: int, data_dir: Path, network: SimNetwork, seed: int) -> None:
        self.node_id, self.data_dir, self.network = node_id, data_dir, network
        self.config = ClusterConfig(node_id, [f"sim-{i}" for i in range(1, nodes + 1)])
        self.seed = seed
        self.starts = 0
        self.context = contextvars.copy_context()
        self.context.run(_NODE.set, node_id)
        self.timelines: TimelineSet
        self.cluster: Cluster

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` as one of this node's tasks (cancelled when it is killed)."""
        return asyncio.get_running_loop().create_task(coro, context=self.context)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.starts += 1
        log = EventLogger(f"sim{self.node_id}")
        rng = random.Random(self.seed * 1000 + self.node_id * 10 + self.starts)

        def build() -> None:
            self.timelines = TimelineSet(self.data_dir, InlineExecutor(), log, segment_bytes=64 * 1024)
            self.cluster = Cluster(self.config, log, clock=loop.time, rng=rng, transport=SimTransport(self.network, self.node_id))
            self.timelines.cluster = self.cluster
            self.timelines.load()
            self.cluster.start_election_watch()

        self.context.run(build)
        self.network.up[self.node_id] = self

    def kill(self) -> None:
        """SIGKILL: every task of this node stops where it is; files written stay."""
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        self.network.up.pop(self.node_id, None)
        for task, node in list(loop.task_node.items()):
            if node == self.node_id:
                task.cancel()
        for tl in self.timelines:
            tl.wal.close()

    def replica(self, request: Any) -> Any:
        tl = self.timelines.get(request.tenant_id, request.timeline_id)
        if tl.broken is not None:
            raise tl.broken
        return tl.replica


def quiet_logs() -> None:
    """The simulated nodes log through `strata.sim*` loggers: keep them out of the
    test output (a failing check prints its own evidence)."""
    logging.getLogger("strata").setLevel(logging.WARNING)


def payloads(records: list[records_pb2.Record]) -> list[bytes]:
    return [r.SerializeToString() for r in records]
