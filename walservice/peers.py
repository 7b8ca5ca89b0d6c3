"""The cluster's members and how this node reaches them (docs/design/0005-replication.md).

- `ClusterConfig`: `--node-id N --peers A,B,C` (node N is the Nth address).
- `PeerClients`: the gRPC stubs to the other nodes, with the test-only fault layer
  (`STRATA_PEER_FAULTS`), and `ask_all`, one RPC to every other node at once (a
  vote round, a timeline created or deleted on the cluster).

Owned by the process's one event loop.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from typing import Any

import grpc

from strata.grpc_channels import channel_options
from strata.logs import EventLogger
from strata.v1 import peer_pb2, peer_pb2_grpc, wal_pb2_grpc
from walservice.peer_stream import VERSION as PEER_STREAM_VERSION
from walservice.peer_stream import PeerAppendConnection

PEER_APPEND_TIMEOUT_S = 2.0
FAULTS_ENV = "STRATA_PEER_FAULTS"


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


@dataclass
class PeerFaults:
    """Test-only: drop or delay outgoing peer RPCs (`STRATA_PEER_FAULTS=drop=P,delay_ms=D,seed=S`)."""

    drop: float = 0.0
    delay_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_env(cls) -> PeerFaults | None:
        spec = os.environ.get(FAULTS_ENV, "")
        if not spec:
            return None
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
        return cls(float(fields.get("drop", 0)), float(fields.get("delay_ms", 0)), random.Random(int(fields.get("seed", 0))))


class PeerClients:
    """Stubs to the other nodes, created on the loop."""

    def __init__(self, config: ClusterConfig, log: EventLogger) -> None:
        self.config = config
        self.log = log
        self.faults = PeerFaults.from_env()
        if self.faults is not None:
            log.warning("peer_faults_enabled", drop=self.faults.drop, delay_ms=self.faults.delay_ms)
        self._stubs: dict[int, peer_pb2_grpc.WalPeerStub] = {}
        self._wal_stubs: dict[int, wal_pb2_grpc.WalServiceStub] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}

    def stub(self, node_id: int) -> peer_pb2_grpc.WalPeerStub:
        stub = self._stubs.get(node_id)
        if stub is None:
            stub = self._stubs[node_id] = peer_pb2_grpc.WalPeerStub(self._channel(node_id))
        return stub

    def wal_stub(self, node_id: int) -> wal_pb2_grpc.WalServiceStub:
        """The client-facing service of another node (ReportPersisted forwarded to the leader)."""
        stub = self._wal_stubs.get(node_id)
        if stub is None:
            stub = self._wal_stubs[node_id] = wal_pb2_grpc.WalServiceStub(self._channel(node_id))
        return stub

    def _channel(self, node_id: int) -> grpc.aio.Channel:
        channel = self._channels.get(node_id)
        if channel is None:
            channel = self._channels[node_id] = grpc.aio.insecure_channel(
                self.config.address(node_id),
                options=channel_options(),
            )
        return channel

    async def inject_faults(self, node_id: int) -> None:
        """The test fault layer (STRATA_PEER_FAULTS): maybe drop (PeerUnreachable), maybe delay."""
        if self.faults is not None:
            if self.faults.rng.random() < self.faults.drop:
                raise PeerUnreachable(f"node {node_id}: dropped by the fault layer")
            if self.faults.delay_ms:
                await asyncio.sleep(self.faults.rng.random() * self.faults.delay_ms / 1000)

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
        """One unary peer RPC; PeerUnreachable on any transport failure (or injected fault)."""
        await self.inject_faults(node_id)
        try:
            return await getattr(self.stub(node_id), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise
            raise PeerUnreachable(f"node {node_id} {method}: {exc.code().name} {exc.details()}") from exc

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
        for channel in self._channels.values():
            await channel.close()
