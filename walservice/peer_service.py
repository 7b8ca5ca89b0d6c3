"""The WalPeer gRPC servicer: node-to-node replication RPCs
(proto/strata/v1/peer.proto, docs/design/0005-replication.md).

Each handler finds the timeline and hands the request to its TimelineReplica
(walservice/replication.py), which owns the term state; StrataError maps onto
status codes through strata.grpc_server.unary_rpc like the client-facing service.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from strata.grpc_server import unary_handler, unary_rpc
from strata.logs import EventLogger
from strata.v1 import peer_pb2
from walservice.replication import Cluster, TimelineReplica
from walservice.timelines import TimelineSet

SERVICE_NAME = "strata.v1.WalPeer"


class PeerServicer:
    def __init__(self, timelines: TimelineSet, cluster: Cluster, log: EventLogger) -> None:
        self.timelines = timelines
        self.cluster = cluster
        self.log = log

    def _replica(self, request: Any) -> TimelineReplica:
        tl = self.timelines.get(request.tenant_id, request.timeline_id)
        tl.check_usable()
        assert tl.replica is not None
        return tl.replica

    # The handlers run shielded: a peer that gives up on a call (deadline, crash)
    # must not cancel a vote or a write halfway through its state changes.

    @unary_rpc
    async def RequestVote(self, request: peer_pb2.VoteRequest, context: grpc.aio.ServicerContext) -> peer_pb2.VoteResponse:
        return await asyncio.shield(self._replica(request).on_vote_request(request))

    @unary_rpc
    async def PeerAppend(self, request: peer_pb2.PeerAppendRequest, context: grpc.aio.ServicerContext) -> peer_pb2.PeerAppendResponse:
        return await asyncio.shield(self._replica(request).on_peer_append(request))

    @unary_rpc
    async def PeerCreateTimeline(self, request: peer_pb2.PeerTimeline, context: grpc.aio.ServicerContext) -> peer_pb2.PeerTimelineResponse:
        return await self.cluster.on_peer_create(self.timelines, request)

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {
            "RequestVote": unary_handler(self.RequestVote, peer_pb2.VoteRequest, peer_pb2.VoteResponse),
            "PeerAppend": unary_handler(self.PeerAppend, peer_pb2.PeerAppendRequest, peer_pb2.PeerAppendResponse),
            "PeerCreateTimeline": unary_handler(self.PeerCreateTimeline, peer_pb2.PeerTimeline, peer_pb2.PeerTimelineResponse),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        return [SERVICE_NAME]
