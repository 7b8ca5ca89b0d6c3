"""The cluster's members and how this node reaches them (docs/design/0005-replication.md).

- `ClusterConfig`: `--node-id N --peers A,B,C` (node N is the Nth address).
- `PeerTransport`: how this node reaches the others (the seam simulations and the
  test fault layer, walservice/peer_faults.py, plug into); `GrpcPeerTransport` is
  the production one (gRPC stubs, PeerAppend TCP connections).
- `PeerClients`: the other nodes through a transport, and `ask_all`, one RPC to
  every other node at once (a vote round, a timeline created or deleted on the
  cluster).

Owned by the process's one event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from strata.grpc_channels import channel_options, open_channel
from strata.v1 import peer_pb2, peer_pb2_grpc, wal_pb2, wal_pb2_grpc
from walservice.peer_stream import VERSION as PEER_STREAM_VERSION
from walservice.peer_stream import PeerAppendConnection

PEER_APPEND_TIMEOUT_S = 2.0


class PeerUnreachable(Exception):
    """A peer RPC failed (the peer is down, slow, or the fault layer dropped it)."""


@dataclass(frozen=True)
class ClusterConfig:
    node_id: int
    nodes: list[str]  # every node's address, in node-id order (node id = index + 1)

    @classmethod
    def parse(cls, node_id: int, peers: str) -> ClusterConfig | None:
        """None for a single node (no --peers)."""
        nodes = [a.strip() for a in peers.split(",") if a.strip()]
        if not nodes:
            return None
        if not 1 <= node_id <= len(nodes):
            raise ValueError(f"--node-id={node_id} must be between 1 and the number of --peers ({len(nodes)})")
        return cls(node_id, nodes)

    @property
    def majority(self) -> int:
        return len(self.nodes) // 2 + 1

    @property
    def others(self) -> list[int]:
        return [i for i in range(1, len(self.nodes) + 1) if i != self.node_id]

    def address(self, node_id: int) -> str:
        return self.nodes[node_id - 1]


class AppendConnection(Protocol):
    """One open PeerAppend connection to a follower: requests answered in order."""

    async def exchange(self, request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse: ...

    def close(self) -> None: ...


class PeerTransport(Protocol):
    """How this node's replication reaches the others: the seam a simulation (an
    in-memory network that drops, delays, reorders and partitions) or the test
    fault layer (walservice/peer_faults.py) plugs into. Every failure to reach a
    peer is PeerUnreachable; a peer's NOT_FOUND is grpc.aio.AioRpcError (gRPC) or
    PeerStreamRefused (a PeerAppend connection)."""

    async def call(self, node_id: int, method: str, request: object, timeout: float) -> Any: ...

    async def open_append_connection(self, node_id: int) -> AppendConnection: ...

    async def report_persisted(
        self, node_id: int, request: wal_pb2.PersistedRequest, timeout: float
    ) -> wal_pb2.WalStatus: ...

    async def close(self) -> None: ...


class GrpcPeerTransport:
    """The production transport: gRPC stubs to the other nodes (created on the
    loop) and PeerAppend's own TCP connections (walservice/peer_stream.py)."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._stubs: dict[int, peer_pb2_grpc.WalPeerStub] = {}
        self._wal_stubs: dict[int, wal_pb2_grpc.WalServiceStub] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}

    def stub(self, node_id: int) -> peer_pb2_grpc.WalPeerStub:
        stub = self._stubs.get(node_id)
        if stub is None:
            stub = self._stubs[node_id] = peer_pb2_grpc.WalPeerStub(self._channel(node_id))
        return stub

    def _channel(self, node_id: int) -> grpc.aio.Channel:
        channel = self._channels.get(node_id)
        if channel is None:
            # TLS when the node was started with --tls-ca ($STRATA_TLS_CA; strata/tls.py).
            channel = self._channels[node_id] = open_channel(self.config.address(node_id), channel_options(), aio=True)
        return channel

    async def open_append_connection(self, node_id: int) -> PeerAppendConnection:
        """A new PeerAppend connection to a node: its port is asked over gRPC
        (PeerStreamPort) each time, since a restarted node may listen elsewhere."""
        answer = await self.call(node_id, "PeerStreamPort", peer_pb2.PeerStreamPortRequest(), PEER_APPEND_TIMEOUT_S)
        if answer.version != PEER_STREAM_VERSION:
            raise PeerUnreachable(
                f"node {node_id} speaks PeerAppend connection version {answer.version}, this node {PEER_STREAM_VERSION}"
            )
        host = self.config.address(node_id).rsplit(":", 1)[0].strip("[]")
        try:
            async with asyncio.timeout(PEER_APPEND_TIMEOUT_S):
                return await PeerAppendConnection.open(host, answer.port)
        except (OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"node {node_id}: cannot connect to its PeerAppend port {host}:{answer.port}: {exc}") from exc

    async def call(self, node_id: int, method: str, request: object, timeout: float) -> Any:
        """One unary peer RPC; PeerUnreachable on any transport failure."""
        try:
            return await getattr(self.stub(node_id), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise
            raise PeerUnreachable(f"node {node_id} {method}: {exc.code().name} {exc.details()}") from exc

    async def report_persisted(self, node_id: int, request: wal_pb2.PersistedRequest, timeout: float) -> wal_pb2.WalStatus:
        """ReportPersisted on another node's client-facing service (a follower
        forwarding to the leader); its gRPC errors pass through."""
        stub = self._wal_stubs.get(node_id)
        if stub is None:
            stub = self._wal_stubs[node_id] = wal_pb2_grpc.WalServiceStub(self._channel(node_id))
        return await stub.ReportPersisted(request, timeout=timeout)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


class PeerClients:
    """The other nodes, through a PeerTransport (owned by the loop): one call, a
    PeerAppend connection, and `ask_all`, one RPC to every other node at once."""

    def __init__(self, config: ClusterConfig, transport: PeerTransport) -> None:
        self.config = config
        self.transport = transport

    async def call(self, node_id: int, method: str, request: object, timeout: float) -> Any:
        return await self.transport.call(node_id, method, request, timeout)

    async def open_append_connection(self, node_id: int) -> AppendConnection:
        return await self.transport.open_append_connection(node_id)

    async def report_persisted(self, node_id: int, request: wal_pb2.PersistedRequest, timeout: float) -> wal_pb2.WalStatus:
        return await self.transport.report_persisted(node_id, request, timeout)

    async def ask_all(self, method: str, request: object, timeout: float) -> list[tuple[int, Any]]:
        """The same unary RPC to every other node at once: (node id, answer) of each
        node that answered. One that did not (PeerUnreachable) or lacks the timeline
        (NOT_FOUND) is left out: the caller counts this node and the answers against
        `config.majority`."""

        async def ask(node: int) -> Any:
            try:
                return await self.call(node, method, request, timeout)
            except (PeerUnreachable, grpc.aio.AioRpcError):
                return None

        answers = await asyncio.gather(*(ask(n) for n in self.config.others))
        return [(n, a) for n, a in zip(self.config.others, answers) if a is not None]

    async def close(self) -> None:
        await self.transport.close()
