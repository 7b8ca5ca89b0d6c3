"""The test-only peer fault layer: a PeerTransport wrapper that drops or delays
outgoing peer messages (`STRATA_PEER_FAULTS=drop=P,delay_ms=D,seed=S`).

Each unary call and each PeerAppend exchange is dropped with probability P
(PeerUnreachable, nothing sent) or delayed up to D ms, from one seeded RNG. The
server wraps its transport in it when the variable is set (and logs
`event=peer_faults_enabled`); nothing else reads the variable, and the
production transport (walservice/peers.py) has no fault code of its own.
Owned by the process's event loop.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from typing import Any

from strata.logs import EventLogger
from strata.v1 import peer_pb2, wal_pb2
from walservice.peers import AppendConnection, PeerTransport, PeerUnreachable

FAULTS_ENV = "STRATA_PEER_FAULTS"


@dataclass
class PeerFaults:
    drop: float = 0.0
    delay_ms: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def parse(cls, spec: str) -> PeerFaults:
        """`drop=P,delay_ms=D,seed=S` (each optional); ValueError for anything else."""
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
        unknown = set(fields) - {"drop", "delay_ms", "seed"}
        if unknown:
            raise ValueError(f"{FAULTS_ENV}={spec!r}: unknown keys {sorted(unknown)} (expected drop, delay_ms, seed)")
        return cls(float(fields.get("drop", 0)), float(fields.get("delay_ms", 0)), random.Random(int(fields.get("seed", 0))))

    async def inject(self, node_id: int) -> None:
        """Maybe drop (PeerUnreachable), maybe delay, one message to `node_id`."""
        if self.rng.random() < self.drop:
            raise PeerUnreachable(f"node {node_id}: dropped by the fault layer")
        if self.delay_ms:
            await asyncio.sleep(self.rng.random() * self.delay_ms / 1000)


class _FaultyConnection:
    def __init__(self, inner: AppendConnection, faults: PeerFaults, node_id: int) -> None:
        self.inner, self.faults, self.node_id = inner, faults, node_id

    async def exchange(self, request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        await self.faults.inject(self.node_id)
        return await self.inner.exchange(request)

    def close(self) -> None:
        self.inner.close()


class FaultyPeerTransport:
    """`inner` with PeerFaults applied to every outgoing message."""

    def __init__(self, inner: PeerTransport, faults: PeerFaults) -> None:
        self.inner, self.faults = inner, faults

    async def call(self, node_id: int, method: str, request: object, timeout: float) -> Any:
        await self.faults.inject(node_id)
        return await self.inner.call(node_id, method, request, timeout)

    async def open_append_connection(self, node_id: int) -> AppendConnection:
        return _FaultyConnection(await self.inner.open_append_connection(node_id), self.faults, node_id)

    async def report_persisted(self, node_id: int, request: wal_pb2.PersistedRequest, timeout: float) -> wal_pb2.WalStatus:
        await self.faults.inject(node_id)
        return await self.inner.report_persisted(node_id, request, timeout)

    async def close(self) -> None:
        await self.inner.close()


def with_faults_from_env(transport: PeerTransport, log: EventLogger) -> PeerTransport:
    """`transport`, wrapped in the fault layer when STRATA_PEER_FAULTS is set."""
    spec = os.environ.get(FAULTS_ENV, "")
    if not spec:
        return transport
    faults = PeerFaults.parse(spec)
    log.warning("peer_faults_enabled", drop=faults.drop, delay_ms=faults.delay_ms)
    return FaultyPeerTransport(transport, faults)
