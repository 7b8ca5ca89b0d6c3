"""The pageserver with remote storage as the truth (`--remote-storage`).

Real walservice and pageserver processes, compared with tests/model.py through
tests/pageserver/world.py:
- kill -9 while layers and indexes are being uploaded, lose the local disk,
  attach the tenant on a new pageserver with an empty disk: every page at every
  LSN comes back, on file://, on S3 through moto's ThreadedMotoServer in this
  process, and through a `moto_server` subprocess over HTTP;
- a bit flipped in a cached layer file is detected and the layer re-downloaded;
- remote storage down (file:// made unreachable; the S3 endpoint stopped for
  seconds during ingest and uploads): ingest and reads go on, requests are
  retried, uploads and remote_consistent_lsn catch up, the logs say so, and
  nothing is lost;
- generation fencing: attaching the tenant elsewhere fences the first
  pageserver (also an idle one, by the periodic check); a restart claims the
  next generation;
- deletion: kill -9 mid-deletion, the restart or an attach finishes it.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import grpc
import pytest
from moto.server import ThreadedMotoServer

from compute_shim import Client
from pageserver.generation import GenerationTaken, claim_generation, list_generations
from pageserver.remote_timeline import download_index, remote_index_generations
from strata.remote_storage.layout import index_key, timeline_key
from strata.remote_storage.local_fs import LocalFsStorage
from tests.env import Component, StrataEnv, wait_until
from tests.pageserver.test_kill9 import TINY_LAYERS, Appender
from tests.strata.remote_storage.harness import MotoServer, aws_env, free_port, moto_server  # noqa: F401 - fixtures
from tests.pageserver.world import RecordGen, World

SEED = 20261205


def uploaded(client: Client, world: World, timeline_id: str) -> bool:
    """Whether everything flushed is in remote storage."""
    info = client.get_timeline(tenant_id=world.tenant_id, timeline_id=timeline_id)
    return info.remote_consistent_lsn > 0 and info.remote_consistent_lsn == info.disk_consistent_lsn


def attach_on_empty_disk(
    env: StrataEnv, wal: Component, old: Component, url: str, world: World, rng: random.Random, cache_bytes: int | None = None
) -> Component:
    """Lose `old`'s disk; attach the world's tenant on a fresh pageserver; check
    every timeline. With `cache_bytes` (small) layers are evicted and downloaded
    again as the checks go."""
    shutil.rmtree(old.data_dir)
    cache = ("--local-cache-bytes", str(cache_bytes)) if cache_bytes else ()
    ps = env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url, *cache, name="pageserver-new")
    client = Client(pageserver=ps.address, walservice=wal.address)
    world.client = client
    info = client.attach_tenant(tenant_id=world.tenant_id, timeout=60)
    assert info.generation >= 2, info
    assert len(client.list_timelines(tenant_id=world.tenant_id).timelines) == len(world.timelines)
    world.check_all(rng, limit=None)  # every LSN: all are retained (default 7-day PITR)
    log = ps.log_text()
    assert "event=layer_downloaded" in log
    if cache_bytes:
        assert "event=layer_evicted" in log
        sizes = [p.stat().st_size for p in ps.data_dir.rglob("*") if p.suffix in (".delta", ".image")]
        # Between reads the cache is back under budget (a read may hold one more layer than fits).
        assert sum(sizes) <= cache_bytes + max(sizes, default=0), f"{sum(sizes)} local layer bytes"
    return ps


def kill_mid_upload_then_attach(env: StrataEnv, url: str, seed: int, cache_bytes: int | None = None) -> None:
    rng = random.Random(seed)
    wal = env.walservice()
    ps = env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        appender = Appender(world, [main], rng.randrange(1 << 32))
        appender.start()
        try:
            appender.wait_for(30)
            appender.timelines.append(world.branch(main, 0))
            appender.wait_for(40)
            wait_until("a first upload", lambda: "event=index_uploaded" in ps.log_text())
            appender.wait_for(rng.randint(1, 10))
            ps.kill()  # layers and indexes are being uploaded all the time with tiny layers
            appender.wait_for(5)  # WAL keeps coming while no pageserver runs
        finally:
            appender.finish()
        assert "event=layer_uploaded" in ps.log_text()
    new = attach_on_empty_disk(env, wal, ps, url, world, rng, cache_bytes)
    world.client.close()
    assert new.stop() == 0


class InProcessMoto:
    """moto's ThreadedMotoServer inside this test process, over HTTP on
    127.0.0.1. Its objects live in this process's moto backend, so `stop` then
    `start` on the same port is an S3 outage that loses nothing."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def create_bucket(self, bucket: str) -> None:
        boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)


@pytest.fixture
def in_process_moto() -> Iterator[InProcessMoto]:
    server = InProcessMoto()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["file", "s3-moto-in-process", "s3-moto-server"])
def test_kill9_mid_upload_then_attach_on_an_empty_disk(
    strata_env: StrataEnv, tmp_path: Path, request: pytest.FixtureRequest, aws_env: pytest.MonkeyPatch, backend: str  # noqa: F811
) -> None:
    """Kill -9 while layers and indexes go up, lose the disk, attach elsewhere:
    every page at every LSN (all retained: the PITR window is the default 7
    days) equals the model, on each backend."""
    if backend == "file":
        kill_mid_upload_then_attach(strata_env, f"file://{tmp_path / 'remote'}", SEED, cache_bytes=40_000)
        return
    server = request.getfixturevalue("in_process_moto" if backend == "s3-moto-in-process" else "moto_server")
    bucket = f"strata-ps-{random.randrange(1 << 30)}"
    server.create_bucket(bucket)
    aws_env.setenv("AWS_ENDPOINT_URL", server.endpoint)
    kill_mid_upload_then_attach(strata_env, f"s3://{bucket}/prefix", SEED + 1)


def test_s3_down_for_seconds_during_ingest_and_uploads(
    strata_env: StrataEnv, in_process_moto: InProcessMoto, aws_env: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The S3 endpoint stops answering for a few seconds while WAL streams in and
    layers go up: requests are retried (logged), ingest and reads go on, uploads
    catch up, and nothing is lost: after that an attach on an empty disk serves
    every page at every LSN."""
    rng = random.Random(SEED + 9)
    bucket = f"strata-down-{random.randrange(1 << 30)}"
    in_process_moto.create_bucket(bucket)
    aws_env.setenv("AWS_ENDPOINT_URL", in_process_moto.endpoint)
    url = f"s3://{bucket}/prefix"
    wal = strata_env.walservice("--remote-storage", url, "--offload-interval", "0.5")
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        appender = Appender(world, [main], rng.randrange(1 << 32))
        appender.start()
        try:
            appender.wait_for(30)
            wait_until("a first index upload", lambda: "event=index_uploaded" in ps.log_text())
            in_process_moto.stop()
            outage_started = time.monotonic()
            appender.wait_for(40)  # ingest goes on while S3 is down
            before = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main)
            time.sleep(max(0.0, 3.0 - (time.monotonic() - outage_started)))
            in_process_moto.start()
            appender.wait_for(20)
        finally:
            appender.finish()
        log = ps.log_text()
        retries = [l for l in log.splitlines() if "event=remote_retry" in l or "event=remote_upload_failed" in l]
        assert retries, "the outage left no trace in the pageserver's log"
        assert all("level=warn" in l for l in retries), retries[:3]
        assert "level=error" not in log, [l for l in log.splitlines() if "level=error" in l][:3]
        world.wait_ingested(main)
        wait_until("uploads to catch up", lambda: uploaded(client, world, main), timeout=90)
        info = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main)
        assert info.remote_consistent_lsn > before.remote_consistent_lsn
        world.check_all(rng, limit=None)
    assert ps.stop() == 0
    attach_on_empty_disk(strata_env, wal, ps, url, world, rng)
    world.client.close()


def test_bit_flip_in_a_cached_layer_is_redownloaded(strata_env: StrataEnv, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    remote = LocalFsStorage(tmp_path / "remote")
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", f"file://{remote.root}")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        world.append_random(main, RecordGen(rng, 512), 40)
        world.wait_ingested(main)
        client.compact(tenant_id=world.tenant_id, timeline_id=main, timeout=60)
        wait_until("uploads", lambda: uploaded(client, world, main))
    assert ps.stop() == 0
    tl_dir = ps.data_dir / "tenants" / world.tenant_id / "timelines" / main
    layer = max((p for p in tl_dir.iterdir() if p.suffix in (".delta", ".image")), key=lambda p: p.stat().st_size)
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0x10
    layer.write_bytes(bytes(data))

    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world.client = client
        world.check_all(rng, limit=None)
    log = ps.new_log_text()
    assert "event=layer_corrupt" in log and layer.name in log, "the flipped bit was not detected"
    assert "event=layer_downloaded" in log
    from strata.ids import TenantId, TimelineId

    remote_copy = remote.download_bytes(timeline_key(TenantId(world.tenant_id), TimelineId(main), layer.name))
    assert layer.read_bytes() == remote_copy, "the local layer is not the remote copy again"


def test_remote_storage_down_then_back(strata_env: StrataEnv, tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    remote = tmp_path / "remote"
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", f"file://{remote}")
    gen = RecordGen(rng, 512)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        world.append_random(main, gen, 20)
        world.wait_ingested(main)
        wait_until("uploads", lambda: uploaded(client, world, main))
        before = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main).remote_consistent_lsn

        saved = tmp_path / "remote.saved"
        remote.rename(saved)
        remote.write_text("not a directory")
        world.append_random(main, gen, 30)  # ingest goes on: layers are flushed locally
        world.wait_ingested(main)
        world.check_all(rng, limit=10)  # and reads
        wait_until("the upload failure logged", lambda: "event=remote_upload_failed" in ps.log_text())
        info = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main)
        assert info.disk_consistent_lsn > before, "no layer was flushed while remote storage was down"
        assert info.remote_consistent_lsn == before, "remote_consistent_lsn moved while remote storage was down"

        remote.unlink()
        saved.rename(remote)
        wait_until("uploads to catch up", lambda: uploaded(client, world, main))
        info = client.get_timeline(tenant_id=world.tenant_id, timeline_id=main)
        assert info.remote_consistent_lsn >= info.disk_consistent_lsn > before
        assert "event=remote_upload_recovered" in ps.log_text()
        wait_until(
            "the walservice to hear remote_consistent_lsn",
            lambda: client.status(tenant_id=world.tenant_id, timeline_id=main).remote_consistent_lsn >= info.remote_consistent_lsn,
        )
        world.check_all(rng, limit=10)
    # What went up after the outage is enough for an attach elsewhere.
    assert ps.stop() == 0
    attach_on_empty_disk(strata_env, wal, ps, f"file://{remote}", world, rng)
    world.client.close()


def index_generations(storage: LocalFsStorage, tenant_id: str, timeline_id: str) -> list[int]:
    return remote_index_generations(storage, tenant_id).get(timeline_id, [])


def test_generation_fencing(strata_env: StrataEnv, tmp_path: Path) -> None:
    """A second attach fences the first: its uploads are refused (no index of its
    generation goes up after the attach), it stops serving with one clear log
    line; and the generations are create-only objects."""
    rng = random.Random(SEED + 4)
    url = f"file://{tmp_path / 'remote'}"
    storage = LocalFsStorage(tmp_path / "remote")
    wal = strata_env.walservice()
    first = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url, "--generation-check-interval", "3600", name="first")
    second = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url, name="second")
    gen = RecordGen(rng, 512)
    with Client(pageserver=first.address, walservice=wal.address) as c1, Client(pageserver=second.address, walservice=wal.address) as c2:
        world = World.create(c1, 512)
        main = world.create_root()
        # CreateTimeline answered only once the timeline's index was in remote storage.
        assert download_index(storage, world.tenant_id, main).generation == 1
        world.append_random(main, gen, 20)
        world.wait_ingested(main)
        wait_until("uploads", lambda: uploaded(c1, world, main))
        assert list_generations(storage, world.tenant_id) == [1]
        assert index_generations(storage, world.tenant_id, main) == [1]

        info = c2.attach_tenant(tenant_id=world.tenant_id, timeout=60)
        assert info.generation == 2
        assert list_generations(storage, world.tenant_id) == [1, 2]
        # The attach uploaded its own index at once: readers take it from now on.
        assert download_index(storage, world.tenant_id, main).generation == 2
        index_1 = storage.download_bytes(index_key(world.tenant_id, main, 1))
        world.append_random(main, gen, 30)  # the first flushes layers and tries to upload their index
        wait_until("the first pageserver to be fenced", lambda: "event=tenant_fenced" in first.log_text())
        fenced = [l for l in first.log_text().splitlines() if "event=tenant_fenced" in l]
        assert len(fenced) == 1 and "level=warn" in fenced[0], fenced
        assert f"tenant={world.tenant_id}" in fenced[0] and "generation=1" in fenced[0] and "remote_generation=2" in fenced[0]
        with pytest.raises(grpc.RpcError) as err:
            c1.get_rel_size(tenant_id=world.tenant_id, timeline_id=main, rel=1, lsn=0, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "attached elsewhere" in err.value.details()
        # Once its background work has ended nothing of the first can go up any more.
        wait_until("the first's uploads to stop", lambda: "event=tenant_background_stopped" in first.log_text())
        # Refused: the first's index never moved after the attach (or went away with the second's cleanup).
        assert not storage.exists(index_key(world.tenant_id, main, 1)) or storage.download_bytes(index_key(world.tenant_id, main, 1)) == index_1
        assert "event=index_uploaded" not in first.log_text().split(fenced[0])[1]

        world.client = c2
        world.check_all(rng, limit=15)
        wait_until("the second's uploads", lambda: uploaded(c2, world, main))
        assert download_index(storage, world.tenant_id, main).generation == 2
        wait_until("the first generation's index to be deleted", lambda: index_generations(storage, world.tenant_id, main) == [2])

        # Generations are create-only: claiming one that exists fails.
        with pytest.raises(GenerationTaken):
            claim_generation(storage, world.tenant_id, 2)


def test_an_idle_stale_pageserver_is_fenced_by_the_background_check(strata_env: StrataEnv, tmp_path: Path) -> None:
    rng = random.Random(SEED + 6)
    url = f"file://{tmp_path / 'remote'}"
    wal = strata_env.walservice()
    first = strata_env.pageserver(wal, "--remote-storage", url, "--generation-check-interval", "0.5", name="first")
    second = strata_env.pageserver(wal, "--remote-storage", url, name="second")
    with Client(pageserver=first.address, walservice=wal.address) as c1, Client(pageserver=second.address, walservice=wal.address) as c2:
        world = World.create(c1, 512)
        main = world.create_root()
        world.append_random(main, RecordGen(rng, 512), 5)
        world.wait_ingested(main)
        c2.attach_tenant(tenant_id=world.tenant_id, timeout=60)
        # No ingest, no upload on the first: only the periodic check can notice.
        wait_until("the idle first pageserver to be fenced", lambda: "event=tenant_fenced" in first.log_text(), timeout=20)
        with pytest.raises(grpc.RpcError) as err:
            c1.get_rel_size(tenant_id=world.tenant_id, timeout=10, timeline_id=main, rel=1, lsn=0)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_restart_claims_the_next_generation(strata_env: StrataEnv, tmp_path: Path) -> None:
    """A restarted pageserver that still holds the newest generation claims the
    next one, so nothing it writes can reuse a name its previous run wrote."""
    rng = random.Random(SEED + 7)
    url = f"file://{tmp_path / 'remote'}"
    storage = LocalFsStorage(tmp_path / "remote")
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world = World.create(client, 512)
        main = world.create_root()
        world.append_random(main, RecordGen(rng, 512), 20)
        world.wait_ingested(main)
        wait_until("uploads", lambda: uploaded(client, world, main))
    assert ps.stop() == 0
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        world.client = client
        [tenant] = [t for t in client.list_tenants().tenants if t.tenant_id == world.tenant_id]
        assert tenant.generation == 2, tenant
        world.append_random(main, RecordGen(rng, 512), 20)
        world.wait_ingested(main)
        wait_until("uploads", lambda: uploaded(client, world, main))
        assert list_generations(storage, world.tenant_id) == [1, 2]
        wait_until("the old index to go", lambda: index_generations(storage, world.tenant_id, main) == [2])
        world.check_all(rng, limit=10)
    assert "event=generation_claimed" in ps.log_text()


def test_detach_then_attach_elsewhere(strata_env: StrataEnv, tmp_path: Path) -> None:
    """DetachTenant uploads what is only in memory and drops the local copy; another pageserver attaches it."""
    rng = random.Random(SEED + 5)
    url = f"file://{tmp_path / 'remote'}"
    wal = strata_env.walservice()
    first = strata_env.pageserver(wal, "--remote-storage", url, name="first")  # default sizes: all in memory
    second = strata_env.pageserver(wal, "--remote-storage", url, name="second")
    with Client(pageserver=first.address, walservice=wal.address) as c1, Client(pageserver=second.address, walservice=wal.address) as c2:
        world = World.create(c1, 512)
        main = world.create_root()
        world.append_random(main, RecordGen(rng, 512), 15)
        world.wait_ingested(main)
        assert c1.get_timeline(tenant_id=world.tenant_id, timeline_id=main).remote_consistent_lsn == 0
        info = c1.detach_tenant(tenant_id=world.tenant_id, timeout=60)
        assert info.state == "detached"
        assert not (first.data_dir / "tenants" / world.tenant_id).exists()
        assert "event=tenant_detached" in first.log_text()
        wal.stop()  # everything must come from remote storage now
        c2.attach_tenant(tenant_id=world.tenant_id, timeout=60)
        tl = c2.get_timeline(tenant_id=world.tenant_id, timeline_id=main)
        assert tl.disk_consistent_lsn == world.timelines[main].last_lsn, tl
        world.client = c2
        world.check_all(rng, limit=None)


def timeline_remote_keys(storage: LocalFsStorage, tenant_id: str, timeline_id: str) -> list[str]:
    return [o.key for o in storage.list(f"tenants/{tenant_id}/timelines/{timeline_id}/")]


def wal_holds(wal: Component, tenant_id: str, timeline_id: str) -> bool:
    return (wal.data_dir / "timelines" / tenant_id / timeline_id).exists()


def test_kill9_mid_deletion_is_finished_on_restart_and_on_attach(strata_env: StrataEnv, tmp_path: Path) -> None:
    """DeleteTimeline writes its mark first: killed while the walservice cannot
    delete the WAL (the deletion stalls half done), the pageserver finishes the
    deletion when it restarts on its disk, and a new pageserver attaching the
    tenant on an empty disk finishes another one."""
    rng = random.Random(SEED + 8)
    url = f"file://{tmp_path / 'remote'}"
    storage = LocalFsStorage(tmp_path / "remote")
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *TINY_LAYERS, "--remote-storage", url)
    gen = RecordGen(rng, 512)
    with Client(pageserver=ps.address, walservice=wal.address, timeout=10) as client:
        world = World.create(client, 512)
        main = world.create_root()
        world.append_random(main, gen, 10)
        first, second = world.branch(main, 0), world.branch(main, 0)
        for tl in (main, first, second):
            world.append_random(tl, gen, 15)
            world.wait_ingested(tl)
            client.compact(tenant_id=world.tenant_id, timeline_id=tl, timeout=60)
            wait_until("uploads", lambda tl=tl: uploaded(client, world, tl))
            assert any(k.endswith(".delta") or k.endswith(".image") for k in timeline_remote_keys(storage, world.tenant_id, tl))
        local_first = ps.data_dir / "tenants" / world.tenant_id / "timelines" / first

        wal.stop()  # the deletion's walservice step cannot finish
        with pytest.raises(grpc.RpcError) as err:
            client.delete_timeline(tenant_id=world.tenant_id, timeline_id=first, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "marked" in err.value.details()
        # Half done: the mark is there (remote and local), every other object of the timeline is gone.
        assert timeline_remote_keys(storage, world.tenant_id, first) == [f"tenants/{world.tenant_id}/timelines/{first}/deleted"]
        assert (local_first / "deleted").exists()
        ps.kill()
    assert "event=timeline_deletion_failed" in ps.log_text()

    wal.start()
    assert wal_holds(wal, world.tenant_id, first)
    ps.start()
    wait_until("the restarted pageserver to finish the deletion", lambda: not local_first.exists())
    assert timeline_remote_keys(storage, world.tenant_id, first) == []
    assert not wal_holds(wal, world.tenant_id, first)
    assert "event=timeline_deletion_resumed" in ps.new_log_text()

    with Client(pageserver=ps.address, walservice=wal.address, timeout=10) as client:
        world.client = client
        assert {t.timeline_id for t in client.list_timelines(tenant_id=world.tenant_id).timelines} == {main, second}
        wal.stop()
        with pytest.raises(grpc.RpcError):
            client.delete_timeline(tenant_id=world.tenant_id, timeline_id=second, timeout=5)
        assert timeline_remote_keys(storage, world.tenant_id, second) == [f"tenants/{world.tenant_id}/timelines/{second}/deleted"]
        ps.kill()
    wal.start()
    del world.timelines[first], world.timelines[second]
    # On an empty disk: the attach finds the mark and finishes the deletion.
    new = attach_on_empty_disk(strata_env, wal, ps, url, world, rng)
    wait_until("the attach to finish the deletion", lambda: timeline_remote_keys(storage, world.tenant_id, second) == [])
    wait_until("the walservice to lose the WAL", lambda: not wal_holds(wal, world.tenant_id, second))
    assert {t.timeline_id for t in world.client.list_timelines(tenant_id=world.tenant_id).timelines} == {main}
    world.client.close()
    assert new.stop() == 0
