"""The pageserver's gRPC services: PageService (reads) and TimelineService.

Handlers validate their request before touching state and map StrataError onto
the contract's codes through `unary_rpc` (strata/grpc_server.py). Reads run on
the event loop: a read for an LSN not yet ingested waits for it until the call's
deadline (DEADLINE_EXCEEDED after), and LSN 0 reads the latest ingested state
and says which LSN that was.

GetPages is the fast path: each request message carries up to
MAX_PAGES_PER_MESSAGE page requests (more: INVALID_ARGUMENT, and the stream
ends) and gets its answers in order, in one response message or, past
RESPONSE_MESSAGE_BYTES, several (all but the last marked `more`), each sent as
soon as it is full (strata/page_limits.py); a request that fails gets its status
code and message in its PageResult, and the others are served. A message's
failed pages are logged as one line with their count.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from pageserver.tenant import Tenant
from pageserver.tenant_set import TenantSet
from pageserver.timeline import Timeline
from strata import ids
from strata.ids import Lsn
from strata.errors import InvalidArgument, StrataError, abort_with
from strata.grpc_server import decoding_service, is_our_failure, log_rpc_failure, unary_rpc
from strata.logs import EventLogger
from strata.page_limits import MAX_PAGES_PER_MESSAGE, RESPONSE_MESSAGE_BYTES, RESULT_OVERHEAD_BYTES
from strata.v1 import page_pb2, page_pb2_grpc, records_pb2, timeline_pb2, timeline_pb2_grpc

T = TypeVar("T")


def timeline_info(tl: Timeline, with_sizes: bool = True) -> timeline_pb2.TimelineInfo:
    return timeline_pb2.TimelineInfo(
        tenant_id=tl.tenant_id,
        timeline_id=tl.timeline_id,
        ancestor_timeline_id=tl.ancestor.timeline_id if tl.ancestor else "",
        ancestor_lsn=tl.ancestor_lsn,
        last_record_lsn=tl.last_record_lsn,
        disk_consistent_lsn=tl.disk_consistent_lsn,
        remote_consistent_lsn=tl.remote_consistent_lsn,
        gc_cutoff_lsn=tl.gc_cutoff_lsn,
        logical_size=tl.logical_size() if with_sizes else 0,
        physical_size=tl.physical_size(),
        expires_at_us=tl.index.expires_at_us,
        state="deleted" if tl.deleted else "active",
        name=tl.index.name,
    )


def tenant_info(tenant: Tenant) -> timeline_pb2.TenantInfo:
    c = tenant.config
    return timeline_pb2.TenantInfo(
        tenant_id=c.tenant_id,
        page_size=c.page_size,
        pitr_seconds=c.pitr_seconds,
        timeline_count=len(tenant.timelines),
        generation=c.generation,
        state="fenced" if tenant.fenced else "active",
        remote_storage=tenant.ctx.remote_url,
    )


def wait_budget(context: grpc.aio.ServicerContext) -> float | None:
    """How long a handler may wait for an LSN: the call's remaining time less a
    margin, so that DEADLINE_EXCEEDED comes from here, saying which LSN was not
    reached, and not from the client's own timer a moment later."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return remaining - min(0.5, 0.1 * remaining)


async def _read_timeline(tenants: TenantSet, req, context: grpc.aio.ServicerContext) -> tuple[Timeline, int]:
    """The timeline a read names and the LSN to read at (waiting for it, and for
    the ancestors' branch points, if needed)."""
    tl = tenants.timeline(req.tenant_id, req.timeline_id)
    lsn = tl.read_lsn(req.lsn)
    tl.check_readable(lsn)
    await tl.wait_for_lsn(lsn, wait_budget(context))
    return tl, lsn


async def _read_checked(tl: Timeline, lsn: int, fn: Callable[[], T]) -> T:
    """`tl.read(fn)` at `lsn`, refused if GC raised the cutoff past `lsn`
    meanwhile (it may have removed layers the read walked)."""
    out = await tl.read(fn)
    tl.check_readable(lsn)
    return out


# ListCommits: the answer's size without a limit, and the most one call may ask for.
DEFAULT_COMMITS_LIMIT = 100
MAX_COMMITS_LIMIT = 10_000


class PageServicer(page_pb2_grpc.PageServiceServicer):
    def __init__(self, tenants: TenantSet, log: EventLogger) -> None:
        self.tenants = tenants
        self.log = log

    @unary_rpc
    async def GetPage(self, request: page_pb2.GetPageRequest, context: grpc.aio.ServicerContext) -> page_pb2.GetPageResponse:
        tl, lsn = await _read_timeline(self.tenants, request, context)
        page = await _read_checked(tl, lsn, lambda: tl.get_page(request.rel, request.blkno, lsn))
        return page_pb2.GetPageResponse(page=page, lsn=lsn)

    @unary_rpc
    async def GetRelSize(self, request: page_pb2.RelRequest, context: grpc.aio.ServicerContext) -> page_pb2.RelSizeResponse:
        tl, lsn = await _read_timeline(self.tenants, request, context)
        state = await _read_checked(tl, lsn, lambda: tl.get_rel_state(request.rel, lsn))
        return page_pb2.RelSizeResponse(exists=state.exists, nblocks=state.nblocks if state.exists else 0, lsn=lsn)

    async def GetPages(
        self, request_iterator: AsyncIterator[page_pb2.GetPagesRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[page_pb2.GetPagesResponse]:
        async for message in request_iterator:
            if len(message.requests) > MAX_PAGES_PER_MESSAGE:
                exc = InvalidArgument(
                    f"requests: a GetPages message carries at most {MAX_PAGES_PER_MESSAGE} page requests "
                    f"(MAX_PAGES_PER_MESSAGE), this one {len(message.requests)}; split it over several messages"
                )
                log_rpc_failure(self.log, "GetPages", None, exc)
                await abort_with(context, exc)
            async for response in self._answer(message, context):
                yield response
                # Each stream lets the others run between its response messages.
                await asyncio.sleep(0)

    async def _answer(
        self, message: page_pb2.GetPagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[page_pb2.GetPagesResponse]:
        """One request message's answers, in order, in response messages of at most
        RESPONSE_MESSAGE_BYTES (all but the last marked `more`), each handed on
        as soon as it is full. The pages that failed are logged once, with a count."""
        # Built in place: each page is copied once into the response, and a
        # message's timelines are looked up (and their ids checked) once.
        response = page_pb2.GetPagesResponse()
        size = 0
        failures = _Failures()
        timelines: dict[tuple[str, str], Timeline] = {}
        for req in message.requests:
            try:
                tl = timelines.get((req.tenant_id, req.timeline_id))
                if tl is None:
                    tl = timelines[(req.tenant_id, req.timeline_id)] = self.tenants.timeline(req.tenant_id, req.timeline_id)
                lsn = req.lsn or tl.last_record_lsn
                tl.check_readable(lsn)
                # Fast path: ingested already, and a hot page in the materialized cache.
                page = tl.cached_page(req.rel, req.blkno, lsn) if lsn <= tl.last_record_lsn else None
                if page is None:
                    await tl.wait_for_lsn(lsn, wait_budget(context))
                    page = await _read_checked(tl, lsn, lambda: tl.get_page(req.rel, req.blkno, lsn))
                cost, error = len(page) + RESULT_OVERHEAD_BYTES, None
            except StrataError as exc:
                failures.add(req, exc)
                page, lsn, error = b"", 0, exc
                cost = len(str(exc)) + RESULT_OVERHEAD_BYTES
            if response.responses and size + cost > RESPONSE_MESSAGE_BYTES:
                response.more = True
                yield response
                response, size = page_pb2.GetPagesResponse(), 0
            size += cost
            if error is None:
                response.responses.add(page=page, lsn=lsn)
            else:
                response.responses.add(error_code=error.code.value[0], error=str(error))
        failures.log(self.log, len(message.requests))
        yield response


class _Failures:
    """The pages of one GetPages message that failed: logged as one line (the
    first failure's request and error, and how many failed), not one per page."""

    def __init__(self) -> None:
        self.count = 0
        # The request and error logged: the first failure, or the first of our
        # own (corruption, internal: logged at error) if there is one.
        self.shown: tuple[page_pb2.GetPageRequest, StrataError] | None = None

    def add(self, req: page_pb2.GetPageRequest, exc: StrataError) -> None:
        self.count += 1
        if self.shown is None or (is_our_failure(exc) and not is_our_failure(self.shown[1])):
            self.shown = (req, exc)

    def log(self, log: EventLogger, pages: int) -> None:
        if self.shown is not None:
            req, exc = self.shown
            log_rpc_failure(log, "GetPages", req, exc, failed=self.count, pages=pages)


class TimelineServicer(timeline_pb2_grpc.TimelineServiceServicer):
    def __init__(self, tenants: TenantSet, log: EventLogger) -> None:
        self.tenants = tenants
        self.log = log

    @unary_rpc
    async def CreateTenant(self, request: timeline_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext) -> timeline_pb2.TenantInfo:
        tenant = await self.tenants.create_tenant(request.tenant_id, request.page_size, request.pitr_seconds)
        return tenant_info(tenant)

    @unary_rpc
    async def ListTenants(self, request: timeline_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext) -> timeline_pb2.ListTenantsResponse:
        return timeline_pb2.ListTenantsResponse(tenants=[tenant_info(t) for t in self.tenants.tenants.values()])

    @unary_rpc
    async def DeleteTenant(self, request: timeline_pb2.TenantRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TenantInfo:
        return tenant_info(await self.tenants.delete_tenant(request.tenant_id))

    @unary_rpc
    async def CreateTimeline(self, request: timeline_pb2.CreateTimelineRequest, context: grpc.aio.ServicerContext) -> timeline_pb2.TimelineInfo:
        tenant = self.tenants.get(request.tenant_id)
        tl = await tenant.create_timeline(
            request.timeline_id, request.ancestor_timeline_id, request.ancestor_lsn, request.ttl_seconds, wait_budget(context),
            name=request.name,
        )
        return timeline_info(tl, with_sizes=False)

    @unary_rpc
    async def GetTimeline(self, request: records_pb2.TimelineRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TimelineInfo:
        return timeline_info(self.tenants.timeline(request.tenant_id, request.timeline_id))

    @unary_rpc
    async def GetTimelineByName(self, request: timeline_pb2.TimelineNameRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TimelineInfo:
        return timeline_info(self.tenants.get(request.tenant_id).timeline_by_name(request.name))

    @unary_rpc
    async def ListTimelines(self, request: timeline_pb2.TenantRef, context: grpc.aio.ServicerContext) -> timeline_pb2.ListTimelinesResponse:
        tenant = self.tenants.get(request.tenant_id)
        return timeline_pb2.ListTimelinesResponse(timelines=[timeline_info(tl, with_sizes=False) for tl in tenant.timelines.values()])

    @unary_rpc
    async def DeleteTimeline(self, request: records_pb2.TimelineRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TimelineInfo:
        tenant = self.tenants.get(request.tenant_id)
        return timeline_info(await tenant.delete_timeline(request.timeline_id), with_sizes=False)

    @unary_rpc
    async def GetLsnByTimestamp(self, request: timeline_pb2.LsnByTimestampRequest, context: grpc.aio.ServicerContext) -> timeline_pb2.LsnByTimestampResponse:
        tl = self.tenants.timeline(request.tenant_id, request.timeline_id)
        lsn, kind = tl.lsn_by_timestamp(request.timestamp_us)
        if kind != "past":  # a sample is a batch end already; this makes sure it is a commit point
            lsn = tl.commit_at_or_below(lsn)
        return timeline_pb2.LsnByTimestampResponse(lsn=lsn, kind=kind)

    @unary_rpc
    async def ListCommits(self, request: timeline_pb2.ListCommitsRequest, context: grpc.aio.ServicerContext) -> timeline_pb2.ListCommitsResponse:
        """Commits with start_lsn <= end_lsn <= end_lsn (pageserver/commit_log.py), at
        most `limit`, oldest first (or the newest ones, newest first). Waits until
        `end_lsn` is ingested, so no commit at or below it is missing."""
        limit = request.limit or DEFAULT_COMMITS_LIMIT
        if limit > MAX_COMMITS_LIMIT:
            raise InvalidArgument(f"limit={request.limit} is past the cap {MAX_COMMITS_LIMIT}; page with start_lsn/end_lsn")
        if request.end_lsn and request.start_lsn > request.end_lsn:
            raise InvalidArgument(f"start_lsn={request.start_lsn} is past end_lsn={request.end_lsn}; give start_lsn <= end_lsn")
        tl = self.tenants.timeline(request.tenant_id, request.timeline_id)
        tl.check_readable(Lsn(0))  # DATA_LOSS for a stopped timeline
        if request.end_lsn:
            await tl.wait_for_lsn(Lsn(request.end_lsn), wait_budget(context))
        found = tl.list_commits(Lsn(request.start_lsn), Lsn(request.end_lsn), request.include_ancestors)
        found = found[::-1][:limit] if request.newest_first else found[:limit]
        commits = [
            timeline_pb2.Commit(
                end_lsn=c.end_lsn, start_lsn=c.start_lsn, commit_time_us=c.time_us, records=c.records, bytes=c.bytes,
                timeline_id=owner,
            )
            for owner, c in found
        ]
        return timeline_pb2.ListCommitsResponse(commits=commits, gc_cutoff_lsn=tl.gc_cutoff_lsn)

    @unary_rpc
    async def Compact(self, request: records_pb2.TimelineRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TimelineInfo:
        """Freeze and flush what is in memory, then compact L0 and write images where due."""
        tenant = self.tenants.get(request.tenant_id)
        tl = tenant.get_timeline(request.timeline_id)
        await tl.wait_for_lsn(tl.last_record_lsn, wait_budget(context))  # image layers read the ancestors
        await tl.checkpoint()
        running = tenant.schedule_compaction(tl, force=True)
        await running
        if tl.layer_map.l0_deltas():
            # A background (unforced) compaction was already running: force one more.
            await tenant.schedule_compaction(tl, force=True)
        return timeline_info(tl)

    @unary_rpc
    async def Gc(self, request: records_pb2.TimelineRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TimelineInfo:
        """Flush what is in memory, then one GC pass (pageserver/gc.py) with the
        tenant's PITR window; the answer carries the new gc_cutoff_lsn."""
        tenant = self.tenants.get(request.tenant_id)
        tl = tenant.get_timeline(request.timeline_id)
        await tl.checkpoint()
        await tenant.gc(tl)
        return timeline_info(tl)

    @unary_rpc
    async def AttachTenant(self, request: timeline_pb2.TenantRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TenantInfo:
        return tenant_info(await self.tenants.attach_tenant(request.tenant_id))

    @unary_rpc
    async def DetachTenant(self, request: timeline_pb2.TenantRef, context: grpc.aio.ServicerContext) -> timeline_pb2.TenantInfo:
        ids.tenant_id(request.tenant_id)
        info = tenant_info(await self.tenants.detach_tenant(request.tenant_id))
        info.state = "detached"
        return info


def register(server: grpc.aio.Server, tenants: TenantSet, log: EventLogger) -> list[str]:
    services = [
        (PageServicer(tenants, log), page_pb2.DESCRIPTOR.services_by_name["PageService"]),
        (TimelineServicer(tenants, log), timeline_pb2.DESCRIPTOR.services_by_name["TimelineService"]),
    ]
    server.add_generic_rpc_handlers(tuple(decoding_service(servicer, service, log) for servicer, service in services))
    return [service.full_name for _, service in services]
