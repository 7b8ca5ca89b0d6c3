"""Database names: a timeline's DNS-label name, unique within its tenant, stored
in its index (so it survives restarts and reaches remote storage), freed by a
delete or a TTL expiry, looked up with GetTimelineByName. Real processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from compute_shim import Client
from tests.env import StrataEnv, wait_until


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_names_are_unique_valid_and_looked_up(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        tenant = c.create_tenant().tenant_id
        main = c.create_timeline(tenant_id=tenant, name="main")
        assert main.name == "main"
        assert c.get_timeline_by_name(tenant_id=tenant, name="main").timeline_id == main.timeline_id
        agent = c.create_timeline(tenant_id=tenant, ancestor_timeline_id=main.timeline_id, name="agent-1")
        unnamed = c.create_timeline(tenant_id=tenant)
        assert unnamed.name == ""
        listed = {tl.timeline_id: tl.name for tl in c.list_timelines(tenant_id=tenant).timelines}
        assert listed == {main.timeline_id: "main", agent.timeline_id: "agent-1", unnamed.timeline_id: ""}
        code, details = code_of(lambda: c.create_timeline(tenant_id=tenant, name="main"))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "'main'" in details and main.timeline_id in details
        assert len(c.list_timelines(tenant_id=tenant).timelines) == 3, "a refused create makes nothing"
        for bad in ("Main", "1db", "-x", "a" * 64, "with space", "ünï", "a_b", "x\n"):
            code, details = code_of(lambda: c.create_timeline(tenant_id=tenant, name=bad))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "DNS label" in details, (bad, details)
        assert c.create_timeline(tenant_id=tenant, name="a" * 63).name == "a" * 63
        code, details = code_of(lambda: c.get_timeline_by_name(tenant_id=tenant, name="nope"))
        assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details and "agent-1" in details and "main" in details
        code, _ = code_of(lambda: c.get_timeline_by_name(tenant_id=tenant, name="Not A Name"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # Another tenant has its own namespace.
        other = c.create_tenant().tenant_id
        assert c.create_timeline(tenant_id=other, name="main").timeline_id != main.timeline_id


def test_names_survive_restart_and_are_freed_by_delete(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        tenant = c.create_tenant().tenant_id
        first = c.create_timeline(tenant_id=tenant, name="db").timeline_id
    ps.kill()
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        assert c.get_timeline_by_name(tenant_id=tenant, name="db").timeline_id == first
        code, _ = code_of(lambda: c.create_timeline(tenant_id=tenant, name="db"))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        c.delete_timeline(tenant_id=tenant, timeline_id=first)
        code, _ = code_of(lambda: c.get_timeline_by_name(tenant_id=tenant, name="db"))
        assert code == grpc.StatusCode.NOT_FOUND
        second = c.create_timeline(tenant_id=tenant, name="db").timeline_id
        assert second != first
    ps.stop()
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        assert c.get_timeline_by_name(tenant_id=tenant, name="db").timeline_id == second


def test_ttl_expiry_frees_the_name(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, "--ttl-check-interval", "0.2")
    with Client(pageserver=ps.address, walservice=wal.address) as c:
        tenant = c.create_tenant().tenant_id
        short = c.create_timeline(tenant_id=tenant, name="scratch", ttl_seconds=1).timeline_id

        def expired() -> bool:
            return all(tl.timeline_id != short for tl in c.list_timelines(tenant_id=tenant).timelines)

        wait_until("the timeline expires", expired, timeout=30)
        assert c.create_timeline(tenant_id=tenant, name="scratch").timeline_id != short


def test_an_attach_on_an_empty_disk_lists_the_names(strata_env: StrataEnv, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'remote'}"
    wal = strata_env.walservice()
    first = strata_env.pageserver(wal, "--remote-storage", url, name="first")
    with Client(pageserver=first.address, walservice=wal.address) as c:
        tenant = c.create_tenant().tenant_id
        main = c.create_timeline(tenant_id=tenant, name="main").timeline_id
        branch = c.create_timeline(tenant_id=tenant, ancestor_timeline_id=main, name="feature-x").timeline_id
        c.detach_tenant(tenant_id=tenant, timeout=60)
    first.stop()
    shutil.rmtree(first.data_dir)
    second = strata_env.pageserver(wal, "--remote-storage", url, name="second")
    with Client(pageserver=second.address, walservice=wal.address) as c:
        c.attach_tenant(tenant_id=tenant, timeout=60)
        names = {tl.name: tl.timeline_id for tl in c.list_timelines(tenant_id=tenant).timelines}
        assert names == {"main": main, "feature-x": branch}
        assert c.get_timeline_by_name(tenant_id=tenant, name="feature-x").ancestor_timeline_id == main
        code, _ = code_of(lambda: c.create_timeline(tenant_id=tenant, name="main"))
        assert code == grpc.StatusCode.ALREADY_EXISTS
