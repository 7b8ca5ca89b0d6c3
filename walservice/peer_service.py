"""The WalPeer gRPC servicer: node-to-node replication RPCs
(proto/strata/v1/peer.proto, docs/design/0005-replication.md), and the
PeerAppend connections, which are plain TCP (walservice/peer_stream.py).

Each handler finds the timeline and hands the request to its TimelineReplica
(walservice/replication.py), which owns the term state (walservice/election.py);
StrataError maps onto status codes through strata.grpc_server.unary_rpc like the
client-facing service.
"""

from __future__ import annotations

import ssl
import asyncio
from typing import Any

import grpc

from strata.grpc_server import unary_handler, unary_rpc
from strata.logs import EventLogger
from strata.v1 import peer_pb2
from walservice.peer_stream import VERSION as PEER_STREAM_VERSION
from walservice.peer_stream import PeerStreamServer
from walservice.replication import Cluster, TimelineReplica
from walservice.timelines import TimelineSet

SERVICE_NAME = "strata.v1.WalPeer"


class PeerServicer:
    def __init__(
        self, timelines: TimelineSet, cluster: Cluster, log: EventLogger, max_message_bytes: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.timelines = timelines
        self.cluster = cluster
        self.log = log
        # PeerAppend's own connections (walservice/peer_stream.py).
        self.streams = PeerStreamServer(self.answer_peer_append, log, max_message_bytes, ssl_context)

    async def start_streams(self, host: str, port: int) -> int:
        """Listen for the leaders' PeerAppend connections (before serving gRPC, which
        tells leaders the port); return the port."""
        port = await self.streams.start(host, port)
        self.log.info("peer_stream_listening", host=host, port=port)
        return port

    def end_streams(self) -> None:
        """Shutdown, once this node's own appends are drained: end the leaders'
        PeerAppend connections into this node. One waiting for its next request
        ends now; one answering a request finishes that answer first (no write is
        cut halfway, no answer is lost). The leader's Replicator sees the node go
        away, as it would a moment later when the process exits."""
        self.streams.end_streams()

    async def close(self) -> None:
        await self.streams.close()

    def _replica(self, request: Any) -> TimelineReplica:
        tl = self.timelines.get(request.tenant_id, request.timeline_id)
        # A node shutting down (SIGTERM) still answers its peers until its files
        # close: the leader's rounds in flight may need this node for a majority.
        if tl.broken is not None:
            raise tl.broken
        assert tl.replica is not None
        return tl.replica

    # The handlers run shielded: a peer that gives up on a call (deadline, crash)
    # must not cancel a vote or a write halfway through its state changes.

    @unary_rpc
    async def RequestVote(self, request: peer_pb2.VoteRequest, context: grpc.aio.ServicerContext) -> peer_pb2.VoteResponse:
        return await asyncio.shield(self._replica(request).on_vote_request(request))

    async def answer_peer_append(self, request: peer_pb2.PeerAppendRequest) -> peer_pb2.PeerAppendResponse:
        """One PeerAppend request off a leader's connection (a StrataError, e.g.
        NOT_FOUND for a timeline this node lacks, ends the connection with it)."""
        return await asyncio.shield(self._replica(request).on_peer_append(request))

    @unary_rpc
    async def PeerStreamPort(
        self, request: peer_pb2.PeerStreamPortRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PeerStreamPortResponse:
        return peer_pb2.PeerStreamPortResponse(port=self.streams.port, version=PEER_STREAM_VERSION)

    @unary_rpc
    async def PeerCreateTimeline(self, request: peer_pb2.PeerTimeline, context: grpc.aio.ServicerContext) -> peer_pb2.PeerTimelineResponse:
        return await self.cluster.on_peer_create(self.timelines, request)

    @unary_rpc
    async def PeerDeleteTimeline(
        self, request: peer_pb2.PeerDeleteTimelineRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.PeerDeleteTimelineResponse:
        return await asyncio.shield(self.cluster.on_peer_delete(self.timelines, request))

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {
            "RequestVote": unary_handler(self.RequestVote, peer_pb2.VoteRequest, peer_pb2.VoteResponse),
            "PeerStreamPort": unary_handler(self.PeerStreamPort, peer_pb2.PeerStreamPortRequest, peer_pb2.PeerStreamPortResponse),
            "PeerCreateTimeline": unary_handler(self.PeerCreateTimeline, peer_pb2.PeerTimeline, peer_pb2.PeerTimelineResponse),
            "PeerDeleteTimeline": unary_handler(
                self.PeerDeleteTimeline, peer_pb2.PeerDeleteTimelineRequest, peer_pb2.PeerDeleteTimelineResponse
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        return [SERVICE_NAME]
