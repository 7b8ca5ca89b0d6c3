"""Timeline deletion: the deletion mark, the order objects go in, the retries.

A timeline is deleted (DeleteTimeline, TTL expiry: tenant.py) crash-safely
(docs/design/0003-remote-storage.md, "Timeline expiry and deletion"): the
tenant stops it and writes the deletion mark locally, then `TimelineDeletions`
finishes it:

1. the remote mark (create-only; there already from an earlier try is fine);
2. the timeline's remote indexes, then its other objects
   (`delete_timeline_objects`: no index that can still be read ever names a
   deleted layer);
3. the walservice's WAL (DeleteTimeline: local segments on every node and the
   offloaded WAL);
4. the remote mark, last but one;
5. the local directory with the local mark, last.

Every step is idempotent, so a retry (in the background, with backoff), a
restart or an attach that finds a mark runs it again from the top. The
generation is checked before the first deletion and before the mark goes
(raises Fenced: a newer attachment finishes it).

Concurrency: owned by the event loop, like the Tenant it belongs to;
`running` (the deletions still going on in the background) is touched only
there. Blocking storage calls run on the executor.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from pageserver.remote_timeline import Fenced, remote_timelines
from strata import checksummed_json
from strata.errors import NotFound, Unavailable
from strata.ids import TenantId, TimelineId
from strata.remote_storage.interface import RemoteObjectExists, RemoteStorage
from strata.remote_storage.layout import DELETION_MARK, WAL_DIR, deletion_mark_key, index_generation, timeline_prefix
from strata.v1 import wal_pb2

if TYPE_CHECKING:
    from pageserver.tenant import Tenant

DELETION_MARK_FORMAT_VERSION = 1
MAX_RETRY_DELAY_S = 10.0


@dataclass(frozen=True)
class DeletionMark:
    """A timeline being deleted.

    Stored as `tenants/<t>/timelines/<tl>/deleted` remotely (create-only) and as
    `deleted` in the local timeline directory, both written before anything of
    the timeline is deleted and removed after everything else is: a pageserver
    that restarts or attaches and finds one finishes the deletion instead of
    loading the timeline. Layout: a JSON object through
    strata/checksummed_json.py (format_version 1, xxhash64 checksum) with the
    fields below; unknown or missing fields are CorruptionError."""

    tenant_id: str
    timeline_id: str
    generation: int  # of the pageserver that started the deletion
    marked_at_us: int
    reason: str  # "DeleteTimeline" or "expired"

    def encode(self) -> bytes:
        return checksummed_json.encode(asdict(self), DELETION_MARK_FORMAT_VERSION)

    @classmethod
    def decode(cls, data: bytes, where: str) -> DeletionMark:
        body = checksummed_json.decode(data, where, DELETION_MARK_FORMAT_VERSION)
        fields = set(cls.__dataclass_fields__)
        checksummed_json.check_fields(body, fields, where, fields)
        return cls(**body)


def local_mark(timeline_dir: Path) -> DeletionMark | None:
    """The deletion mark in a local timeline directory; None if there is none."""
    path = timeline_dir / DELETION_MARK
    return DeletionMark.decode(path.read_bytes(), str(path)) if path.exists() else None


def marked_timelines(storage: RemoteStorage, tenant_id: TenantId) -> dict[TimelineId, DeletionMark]:
    """Timelines of the tenant with a remote deletion mark (one listing of the
    timelines, one read per timeline). Blocking."""
    out = {}
    for timeline_id in remote_timelines(storage, tenant_id):
        key = deletion_mark_key(tenant_id, timeline_id)
        try:
            out[timeline_id] = DeletionMark.decode(storage.download_bytes(key), f"remote {key}")
        except NotFound:
            continue
    return out


def delete_timeline_objects(
    storage: RemoteStorage, tenant_id: TenantId, timeline_id: TimelineId, *, with_wal: bool, keep: frozenset[str] = frozenset()
) -> int:
    """Delete a timeline's remote objects but those in `keep`: its indexes
    first, so no index that can still be read names a deleted layer, then the
    rest (layers, vector indexes and, `with_wal`, the walservice's offloaded
    WAL; without it `wal/` is not even listed). Returns how many. Blocking."""
    prefix = timeline_prefix(tenant_id, timeline_id)
    if with_wal:
        keys = [o.key for o in storage.list(prefix)]
    else:
        level = storage.list_delimited(prefix)
        keys = [o.key for o in level.objects]
        for sub in level.prefixes:
            if sub != prefix + WAL_DIR + "/":
                keys.extend(o.key for o in storage.list(sub))
    keys = [k for k in keys if k not in keep]
    indexes = [k for k in keys if index_generation(k[len(prefix) :]) is not None]
    storage.delete(indexes)
    storage.delete([k for k in keys if k not in set(indexes)])
    return len(keys)


class TimelineDeletions:
    """One tenant's marked deletions: finishing them, and retrying in the background."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        # Marked deletions still running in the background, by timeline id.
        self.running: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, timeline_id: str) -> bool:
        return timeline_id in self.running

    async def finish(self, timeline_id: str, mark: DeletionMark) -> None:
        """Steps 1-5 of the module doc for a timeline whose mark is written locally."""
        tenant, ctx = self.tenant, self.tenant.ctx
        tid, tl = TenantId(tenant.tenant_id), TimelineId(timeline_id)
        storage = ctx.remote
        loop = asyncio.get_running_loop()
        mark_key = deletion_mark_key(tid, tl)
        if storage is not None:
            await tenant.check_generation()

            def delete_objects() -> int:
                try:
                    storage.upload_bytes(mark.encode(), mark_key)
                except RemoteObjectExists:
                    pass  # an earlier try (or another generation) marked it
                return delete_timeline_objects(storage, tid, tl, with_wal=True, keep=frozenset({mark_key}))

            n = await loop.run_in_executor(ctx.executor, delete_objects)
            ctx.log.info("remote_timeline_deleted", tenant=tid, timeline=tl, objects=n)
        request = wal_pb2.WalDeleteTimelineRequest(tenant_id=tid, timeline_id=tl)
        try:
            done = await ctx.wal_stub.DeleteTimeline(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"tenant_id={tid} timeline_id={tl}: the walservice did not delete the timeline's "
                f"WAL: {exc.code().name}: {exc.details()}"
            ) from exc
        ctx.log.info("wal_timeline_deleted", tenant=tid, timeline=tl, existed=done.existed, nodes=done.nodes_deleted)
        if storage is not None:
            await tenant.check_generation()
            await loop.run_in_executor(ctx.executor, storage.delete, [mark_key])
        await loop.run_in_executor(ctx.executor, shutil.rmtree, tenant.timelines_dir / timeline_id, True)
        self.running.pop(timeline_id, None)
        ctx.log.info("timeline_deleted", tenant=tid, timeline=tl, reason=mark.reason)

    def retry_in_background(self, timeline_id: str, mark: DeletionMark, error: Exception) -> None:
        """Keep finishing a marked deletion (with backoff) until it is done."""
        tenant = self.tenant
        tenant.ctx.log.warning(
            "timeline_deletion_failed", tenant=tenant.tenant_id, timeline=timeline_id, error=repr(error),
            action="retrying in the background",
        )
        if timeline_id in self.running and not self.running[timeline_id].done():
            return

        async def retry() -> None:
            delay = 0.5
            while not tenant.stopping and tenant.fenced is None:
                await asyncio.sleep(delay)
                try:
                    await self.finish(timeline_id, mark)
                    return
                except Fenced:
                    return
                except Exception as exc:  # noqa: BLE001 - logged; retried
                    tenant.ctx.log.warning(
                        "timeline_deletion_failed", tenant=tenant.tenant_id, timeline=timeline_id, error=repr(exc),
                        action="retrying in the background",
                    )
                    delay = min(delay * 2, MAX_RETRY_DELAY_S)

        self.running[timeline_id] = asyncio.get_running_loop().create_task(retry())

    def resume(self, marks: dict[str, DeletionMark]) -> None:
        """After a restart or an attach: finish the deletions these marks started (in the background)."""
        for timeline_id, mark in sorted(marks.items()):
            self.tenant.ctx.log.info(
                "timeline_deletion_resumed", tenant=self.tenant.tenant_id, timeline=timeline_id, reason=mark.reason,
                marked_by_generation=mark.generation,
            )

            async def finish(timeline_id: str = timeline_id, mark: DeletionMark = mark) -> None:
                try:
                    await self.finish(timeline_id, mark)
                except Fenced:
                    pass
                except Exception as exc:  # noqa: BLE001 - retried in the background
                    self.retry_in_background(timeline_id, mark, exc)

            self.running[timeline_id] = asyncio.get_running_loop().create_task(finish())

    def cancel_all(self) -> None:
        for task in self.running.values():
            task.cancel()

    async def delete_remote_best_effort(self, timeline_id: str) -> None:
        """DeleteTenant: the timeline's remote objects, best effort (its WAL is
        the walservice's). Leftovers are unreferenced once tenant.json is gone."""
        tenant = self.tenant
        storage = tenant.ctx.remote
        if storage is None or tenant.fenced is not None:
            return
        tid, tl = TenantId(tenant.tenant_id), TimelineId(timeline_id)
        try:
            await tenant.check_generation()  # before any deletion
            n = await asyncio.get_running_loop().run_in_executor(
                tenant.ctx.executor, lambda: delete_timeline_objects(storage, tid, tl, with_wal=False)
            )
            tenant.ctx.log.info("remote_timeline_deleted", tenant=tid, timeline=tl, objects=n)
        except Exception as exc:  # noqa: BLE001 - leftovers are unreferenced
            tenant.ctx.log.warning("remote_timeline_delete_failed", tenant=tid, timeline=tl, error=repr(exc))
