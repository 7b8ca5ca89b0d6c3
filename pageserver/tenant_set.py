"""The tenants of one pageserver: create, load at startup, attach, detach, delete.

`TenantSet` owns every `Tenant` (tenant.py) of the pageserver and the
tenant-wide steps that involve remote storage (docs/design/0003-remote-storage.md):

- at startup, each local tenant is loaded; with remote storage, the
  pageserver that holds the newest generation claims the next one, and a
  tenant for which a newer generation exists (attached elsewhere) is fenced;
- CreateTenant claims the first generation and writes tenant.json
  (create-only: a tenant that exists remotely is attached, not created);
- AttachTenant claims the next generation (fencing older attachments), writes
  its own index of every timeline and rebuilds the tenant on an empty disk
  (layers downloaded on demand); timelines with a deletion mark are finished,
  not loaded (timeline_deletion.py);
- DetachTenant uploads everything, then drops the local files;
- DeleteTenant deletes tenant.json first (a half-deleted tenant is not
  attachable) and the generations last.

It also runs the periodic loops: layer freezing, GC (`--gc-interval`),
generation checks (`--generation-check-interval`) and timeline expiry
(`--ttl-check-interval`).

Concurrency: owned by the event loop, like every Tenant; blocking work runs on
the executor over immutable inputs.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import replace
from pathlib import Path

from pageserver import generation as generations
from pageserver import remote_timeline
from pageserver.index_part import IndexPart, write_index_part
from pageserver.remote_timeline import Fenced
from pageserver.tenant import TENANT_FILE, PageserverContext, Tenant, TenantConfig, make_dir_durably
from pageserver.timeline import Timeline
from pageserver.timeline_deletion import DeletionMark, marked_timelines
from strata import ids
from strata.durable_file import write_durably
from strata.errors import AlreadyExists, FailedPrecondition, NotFound, StrataError, Unavailable
from strata.ids import TenantId, TimelineId
from strata.remote_storage import layout
from strata.remote_storage.interface import RemoteObjectExists, RemoteStorage


class TenantSet:
    """The tenants of this pageserver (owned by the event loop)."""

    def __init__(self, ctx: PageserverContext) -> None:
        self.ctx = ctx
        self.root = ctx.data_dir / "tenants"
        self.tenants: dict[str, Tenant] = {}

    def load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for tenant_dir in sorted(self.root.iterdir()):
            if tenant_dir.name.startswith("."):
                shutil.rmtree(tenant_dir)
                continue
            path = tenant_dir / TENANT_FILE
            config = TenantConfig.decode(path.read_bytes(), str(path))
            remote_indexes, remote_gen = self._remote_state_at_load(config)
            fenced_by = remote_gen if remote_gen is not None and remote_gen > config.generation else None
            if fenced_by is None and remote_gen is not None and config.generation > 0:
                config, fenced_by = self._claim_at_start(config, remote_gen, path)
            tenant = Tenant(config, tenant_dir, self.ctx)
            if fenced_by is not None:
                tenant.fenced = f"tenant_id={config.tenant_id} was attached elsewhere (generation {fenced_by} > {config.generation})"
                self.ctx.log.warning(
                    "tenant_fenced", tenant=config.tenant_id, generation=config.generation, remote_generation=fenced_by,
                    action="not serving it (found at startup)",
                )
            tenant.load(remote_indexes)
            self.tenants[config.tenant_id] = tenant
            self.ctx.log.info("tenant_loaded", tenant=config.tenant_id, timelines=len(tenant.timelines))

    def _claim_at_start(self, config: TenantConfig, remote_gen: int, path: Path) -> tuple[TenantConfig, int | None]:
        """A restart of the pageserver that holds the newest generation claims the
        next one (blocking), so that nothing it writes from now on can have the
        name of an object its previous run wrote. Returns the config and, if
        another pageserver claimed that generation first, the generation that
        fences us."""
        storage = self.ctx.remote
        assert storage is not None
        try:
            record = generations.claim_generation(storage, config.tenant_id, max(remote_gen, config.generation) + 1)
        except generations.GenerationTaken:
            return config, max(remote_gen, config.generation) + 1
        except Exception as exc:  # noqa: BLE001 - keep the old generation; fencing is checked before each upload
            self.ctx.log.warning("generation_claim_failed", tenant=config.tenant_id, generation=config.generation, error=repr(exc))
            return config, None
        claimed = replace(config, generation=record.generation)
        write_durably(path, claimed.encode())
        self.ctx.log.info(
            "generation_claimed", tenant=config.tenant_id, generation=record.generation, previous=config.generation,
            reason="restart",
        )
        return claimed, None

    def _remote_state_at_load(self, config: TenantConfig) -> tuple[dict[str, IndexPart | None], int | None]:
        """What remote storage already holds of a local tenant (blocking, at startup):
        its timelines' uploaded indexes and the remote generation. If remote
        storage cannot be read, nothing is known (generation None): every layer
        is uploaded again."""
        storage = self.ctx.remote
        if storage is None:
            return {}, None
        try:
            generation = generations.read_generation(storage, config.tenant_id)
            indexes: dict[str, IndexPart | None] = {}
            for timeline_id in remote_timeline.remote_index_generations(storage, TenantId(config.tenant_id)):
                indexes[timeline_id] = remote_timeline.download_index(storage, config.tenant_id, timeline_id)
            return indexes, generation
        except Exception as exc:  # noqa: BLE001 - uploads start over; fencing is checked before each index upload
            self.ctx.log.warning("remote_state_unavailable", tenant=config.tenant_id, error=repr(exc), action="reuploading")
            return {}, None

    def get(self, tenant_id: str, allow_fenced: bool = False) -> Tenant:
        ids.tenant_id(tenant_id)
        try:
            tenant = self.tenants[tenant_id]
        except KeyError:
            raise NotFound(f"tenant_id={tenant_id}: no such tenant (CreateTenant or AttachTenant first)") from None
        if tenant.fenced is not None and not allow_fenced:
            raise FailedPrecondition(tenant.fenced)
        return tenant

    def timeline(self, tenant_id: str, timeline_id: str) -> Timeline:
        return self.get(tenant_id).get_timeline(timeline_id)

    async def create_tenant(self, tenant_id: str, page_size: int, pitr_seconds: int) -> Tenant:
        tenant_id = ids.tenant_id(tenant_id) if tenant_id else ids.new_id()
        size = ids.page_size(page_size)
        ids.duration_seconds(pitr_seconds, "pitr_seconds")
        if tenant_id in self.tenants:
            raise AlreadyExists(f"tenant_id={tenant_id} already exists")
        config = TenantConfig(tenant_id, size, pitr_seconds or self.ctx.default_pitr_seconds)
        if self.ctx.remote is not None:
            config = await self._claim_remote(config)

        def fill(d: Path) -> None:
            (d / "timelines").mkdir()
            write_durably(d / TENANT_FILE, config.encode())

        directory = await asyncio.get_running_loop().run_in_executor(
            self.ctx.executor, make_dir_durably, self.root, tenant_id, fill
        )
        tenant = Tenant(config, directory, self.ctx)
        self.tenants[tenant_id] = tenant
        self.ctx.log.info("tenant_created", tenant=tenant_id, page_size=size)
        return tenant

    async def _claim_remote(self, config: TenantConfig) -> TenantConfig:
        """A new tenant in remote storage: the next generation, then tenant.json
        (create-only: a tenant that exists remotely is attached, not created)."""
        storage = self.ctx.remote
        assert storage is not None
        key = layout.tenant_config_key(TenantId(config.tenant_id))

        def claim() -> TenantConfig:
            if storage.exists(key):
                raise AlreadyExists(f"tenant_id={config.tenant_id} exists in remote storage ({key}): use AttachTenant")
            record = generations.claim_next(storage, config.tenant_id)
            claimed = replace(config, generation=record.generation)
            try:
                storage.upload_bytes(claimed.encode(), key)
            except RemoteObjectExists:
                raise AlreadyExists(f"tenant_id={config.tenant_id} was created elsewhere meanwhile ({key})") from None
            return claimed

        try:
            return await asyncio.get_running_loop().run_in_executor(self.ctx.executor, claim)
        except StrataError:
            raise
        except Exception as exc:
            raise Unavailable(f"tenant_id={config.tenant_id}: remote storage refused the tenant: {exc!r}") from exc

    async def delete_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.get(tenant_id, allow_fenced=True)
        await tenant.shutdown(flush=False)
        del self.tenants[tenant_id]
        self._forget_layers(tenant)
        await asyncio.get_running_loop().run_in_executor(self.ctx.executor, shutil.rmtree, tenant.directory)
        if tenant.fenced is None and self.ctx.remote is not None:
            for timeline_id in list(tenant.timelines):
                await tenant.deletions.delete_remote_best_effort(timeline_id)
            storage = self.ctx.remote
            def delete_tenant_objects() -> None:
                # tenant.json first (a half-deleted tenant is not attachable), the generations last.
                storage.delete([layout.tenant_config_key(TenantId(tenant_id))])
                storage.delete([o.key for o in storage.list(layout.generations_prefix(TenantId(tenant_id)))])

            try:
                await tenant.check_generation()  # before any deletion
                await asyncio.get_running_loop().run_in_executor(self.ctx.executor, delete_tenant_objects)
            except Exception as exc:  # noqa: BLE001 - best effort
                self.ctx.log.warning("remote_tenant_delete_failed", tenant=tenant_id, error=repr(exc))
        self.ctx.log.info("tenant_deleted", tenant=tenant_id)
        return tenant

    def _forget_layers(self, tenant: Tenant) -> None:
        if self.ctx.layer_cache is not None:
            for timeline in tenant.timelines.values():
                for layer in timeline.layer_map.historic:
                    self.ctx.layer_cache.forget(layer)

    def _require_remote(self, what: str) -> RemoteStorage:
        if self.ctx.remote is None:
            raise FailedPrecondition(f"{what} needs remote storage: start the pageserver with --remote-storage URL")
        return self.ctx.remote

    async def attach_tenant(self, tenant_id: str) -> Tenant:
        """Take the tenant over from remote storage: a new generation (fencing any
        older attachment), tenant.json and every timeline's index_part.json
        written locally, layers downloaded on demand, ingest from each remote
        disk_consistent_lsn."""
        tenant_id = ids.tenant_id(tenant_id)
        storage = self._require_remote("AttachTenant")
        existing = self.tenants.get(tenant_id)
        if existing is not None and existing.fenced is None:
            return existing  # attached here already
        if existing is not None:
            await self.delete_local(existing)
        loop = asyncio.get_running_loop()

        def fetch() -> tuple[TenantConfig, dict[str, IndexPart], dict[TimelineId, DeletionMark]]:
            key = layout.tenant_config_key(tenant_id)
            try:
                data = storage.download_bytes(key)
            except NotFound:
                raise NotFound(f"tenant_id={tenant_id}: remote storage has no such tenant (no {key})") from None
            config = TenantConfig.decode(data, f"remote {key}")
            record = generations.claim_next(storage, tenant_id, at_least=config.generation)  # fences older attachments
            config = replace(config, generation=record.generation)
            marks = marked_timelines(storage, tenant_id)
            indexes = {}
            for tl in remote_timeline.remote_index_generations(storage, tenant_id):
                if tl in marks:
                    continue  # being deleted: finished below, not loaded
                # Our own index of each timeline at once: from now on readers take ours.
                index = replace(remote_timeline.download_index(storage, tenant_id, tl), generation=config.generation)
                storage.upload_bytes(index.encode(), layout.index_key(tenant_id, tl, config.generation))
                indexes[tl] = index
            return config, indexes, marks

        try:
            config, indexes, marks = await loop.run_in_executor(self.ctx.executor, fetch)
        except StrataError:
            raise
        except Exception as exc:
            raise Unavailable(f"tenant_id={tenant_id}: attaching from remote storage failed: {exc!r}") from exc

        def fill(d: Path) -> None:
            (d / "timelines").mkdir()
            write_durably(d / TENANT_FILE, config.encode())
            for timeline_id, index in indexes.items():
                local = replace(index, generation=config.generation)
                make_dir_durably(d / "timelines", timeline_id, lambda t, i=local: write_index_part(t, i))

        if (self.root / tenant_id).exists():
            await loop.run_in_executor(self.ctx.executor, shutil.rmtree, self.root / tenant_id)
        directory = await loop.run_in_executor(self.ctx.executor, make_dir_durably, self.root, tenant_id, fill)
        tenant = Tenant(config, directory, self.ctx)
        tenant.load(dict(indexes))
        tenant.deletions.resume(marks)
        self.tenants[tenant_id] = tenant
        self.ctx.log.info(
            "tenant_attached", tenant=tenant_id, generation=config.generation, timelines=len(tenant.timelines),
            lsns=",".join(f"{tl}:{i.disk_consistent_lsn}" for tl, i in sorted(indexes.items())),
        )
        return tenant

    async def detach_tenant(self, tenant_id: str, timeout: float = 30.0) -> Tenant:
        """Stop ingest, flush and upload everything, then drop the local files."""
        self._require_remote("DetachTenant")
        tenant = self.get(tenant_id, allow_fenced=True)
        if tenant.fenced is None:
            await tenant.stop_ingest()
            for timeline in tenant.timelines.values():
                await timeline.checkpoint()
            if not await tenant.wait_uploaded(timeout):
                tenant.resume_ingest()  # keep serving: the local files are the only copy of what is not uploaded
                raise Unavailable(f"tenant_id={tenant_id}: uploads did not finish within {timeout:.0f}s; still attached here")
        await self.delete_local(tenant)
        self.ctx.log.info("tenant_detached", tenant=tenant_id)
        return tenant

    async def delete_local(self, tenant: Tenant) -> None:
        await tenant.shutdown(flush=False)
        self.tenants.pop(tenant.tenant_id, None)
        self._forget_layers(tenant)
        await asyncio.get_running_loop().run_in_executor(self.ctx.executor, shutil.rmtree, tenant.directory, True)

    async def run_ticks(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                tenant.tick()

    async def run_gc(self, interval_s: float) -> None:
        """Background GC of every timeline every `interval_s` (--gc-interval)."""
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                await tenant.gc_all()

    async def run_generation_checks(self, interval_s: float) -> None:
        """Every `interval_s` (--generation-check-interval): fence each tenant a
        newer generation attached elsewhere, even if it is idle (no uploads)."""
        while True:
            await asyncio.sleep(interval_s)
            for tenant in list(self.tenants.values()):
                if tenant.fenced is not None or self.ctx.remote is None:
                    continue
                try:
                    await tenant.check_generation()
                except Fenced:
                    pass  # logged by fence()
                except Exception as exc:  # noqa: BLE001 - remote storage down: the next round tries again
                    self.ctx.log.warning("generation_check_failed", tenant=tenant.tenant_id, error=repr(exc))

    async def run_expiry(self, interval_s: float) -> None:
        """Delete expired timelines every `interval_s` (--ttl-check-interval)."""
        while True:
            await asyncio.sleep(interval_s)
            now_us = time.time_ns() // 1000
            for tenant in list(self.tenants.values()):
                try:
                    await tenant.expire(now_us)
                except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                    self.ctx.log.error("timeline_expiry_failed", tenant=tenant.tenant_id, error=repr(exc))

    async def shutdown(self) -> None:
        for tenant in self.tenants.values():
            await tenant.shutdown(flush=True)
