"""The WalPeer gRPC servicer: node-to-node replication RPCs
(proto/strata/v1/peer.proto, docs/design/0005-replication.md).

Each handler finds the timeline and hands the request to its TimelineReplica
(walservice/replication.py), which owns the term state; StrataError maps onto
status codes through strata.grpc_server.unary_rpc like the client-facing service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from strata.errors import StrataError
from strata.grpc_server import log_rpc_failure, stream_handler, unary_handler, unary_rpc
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
        # Open PeerAppend streams (each RPC's task) -> whether it is answering a
        # request now. Owned by the event loop; see `end_streams`.
        self._streams: dict[asyncio.Task[Any], bool] = {}
        self._ending = False

    def end_streams(self) -> None:
        """Shutdown, once this node's own appends are drained: end the leaders'
        PeerAppend streams into this node, so a graceful stop does not wait out
        its whole grace for streams that never end by themselves. A stream
        waiting for its next request is cancelled now; one answering a request
        finishes that answer first and then ends (no write is cut halfway, no
        answer is lost). The leader's Replicator sees the node go away, as it
        would a moment later when the process exits."""
        self._ending = True
        for task, busy in self._streams.items():
            if not busy:
                task.cancel()

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

    async def PeerAppend(
        self, requests: AsyncIterator[peer_pb2.PeerAppendRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.PeerAppendResponse]:
        """One answer per request, in order; a failure (no such timeline: NOT_FOUND)
        ends the stream with its status, and the leader opens a new one."""
        request = None
        task = asyncio.current_task()
        assert task is not None
        if self._ending:
            return
        self._streams[task] = False
        try:
            async for request in requests:
                self._streams[task] = True
                answer = await asyncio.shield(self._replica(request).on_peer_append(request))
                self._streams[task] = False
                yield answer
                if self._ending:
                    return
        except StrataError as exc:
            log_rpc_failure(self.log, "PeerAppend", request, exc)
            await context.abort(exc.code, str(exc))
        finally:
            del self._streams[task]

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
            "PeerAppend": stream_handler(self.PeerAppend, peer_pb2.PeerAppendRequest, peer_pb2.PeerAppendResponse),
            "PeerCreateTimeline": unary_handler(self.PeerCreateTimeline, peer_pb2.PeerTimeline, peer_pb2.PeerTimelineResponse),
            "PeerDeleteTimeline": unary_handler(
                self.PeerDeleteTimeline, peer_pb2.PeerDeleteTimelineRequest, peer_pb2.PeerDeleteTimelineResponse
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        return [SERVICE_NAME]
