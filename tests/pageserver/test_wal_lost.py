"""A walservice that lost a timeline the pageserver ingested (pageserver/ingest.py,
NOT_FOUND): it is not re-created empty; the timeline is stopped with DATA_LOSS
saying what is gone. One that holds nothing past its start is registered again."""

from __future__ import annotations

import grpc
import pytest

from compute_shim import Client, connect_sqlite
from tests.env import StrataEnv, wait_until


@pytest.fixture
def allowed_errors() -> list[str]:
    return [r"event=timeline_lost_by_walservice", r"event=rpc_failed .*code=DATA_LOSS"]


def test_a_timeline_the_walservice_lost_is_data_loss_not_an_empty_database(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        fresh = client.create_timeline(tenant_id=tenant).timeline_id  # nothing written: nothing to lose
        db = connect_sqlite(client, tenant, main)
        db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('acknowledged')")
        end = client.status(tenant_id=tenant, timeline_id=main).flush_lsn
        wait_until("ingest", lambda: client.get_timeline(tenant_id=tenant, timeline_id=main).last_record_lsn >= end)
        db.close()
        for timeline in (main, fresh):  # behind the pageserver's back
            assert client.wal_delete_timeline(tenant_id=tenant, timeline_id=timeline).existed
    ps.stop()
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        wait_until("the lost timeline to be noticed", lambda: "event=timeline_lost_by_walservice" in ps.new_log_text())
        [line] = [l for l in ps.new_log_text().splitlines() if "event=timeline_lost_by_walservice" in l]
        assert f"timeline={main}" in line and f"lsn={end}" in line
        # Its pages answer DATA_LOSS saying what is gone (it used to read as an empty database).
        with pytest.raises(grpc.RpcError) as lost:
            client.get_page(tenant_id=tenant, timeline_id=main, rel=1, blkno=0, lsn=end)
        assert lost.value.code() == grpc.StatusCode.DATA_LOSS
        assert "the walservice no longer has this timeline" in lost.value.details()
        assert f"every commit it acknowledged past lsn={end}" in lost.value.details()
        with pytest.raises(grpc.RpcError) as gone:
            client.status(tenant_id=tenant, timeline_id=main)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND, "not re-created empty"
        # The timeline with nothing past its start is registered again, and works.
        wait_until("the fresh timeline to be registered again", lambda: f"event=wal_timeline_registered tenant={tenant} timeline={fresh}" in ps.new_log_text())
        db = connect_sqlite(client, tenant, fresh)
        db.execute("CREATE TABLE u(y); INSERT INTO u VALUES (1)")
        assert db.execute("SELECT y FROM u").fetchall() == [(1,)]
        db.close()



def test_a_pageserver_killed_before_its_first_flush_still_sees_the_loss(strata_env: StrataEnv) -> None:
    """SIGKILLed before any layer flush, the pageserver's durable state says nothing
    past the timeline's start; its wal_seen.json marker still tells it that it took
    WAL, so the walservice's loss is DATA_LOSS, not an empty database registered again."""
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)  # default checkpoint size: nothing below is flushed
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        fresh = client.create_timeline(tenant_id=tenant).timeline_id
        db = connect_sqlite(client, tenant, main)
        db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('acknowledged')")
        end = client.status(tenant_id=tenant, timeline_id=main).flush_lsn
        wait_until("ingest", lambda: client.get_timeline(tenant_id=tenant, timeline_id=main).last_record_lsn >= end)
        assert client.get_timeline(tenant_id=tenant, timeline_id=main).disk_consistent_lsn == 0, "flushed: not this case"
        db.close()
        ps.kill()
        for timeline in (main, fresh):
            assert client.wal_delete_timeline(tenant_id=tenant, timeline_id=timeline).existed
    ps.start()
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        wait_until("the lost timeline to be noticed", lambda: "event=timeline_lost_by_walservice" in ps.new_log_text())
        with pytest.raises(grpc.RpcError) as lost:
            client.get_page(tenant_id=tenant, timeline_id=main, rel=1, blkno=0, lsn=0)
        assert lost.value.code() == grpc.StatusCode.DATA_LOSS
        with pytest.raises(grpc.RpcError) as gone:
            client.status(tenant_id=tenant, timeline_id=main)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND, "not re-created empty"
        wait_until("the fresh timeline to be registered again", lambda: f"event=wal_timeline_registered tenant={tenant} timeline={fresh}" in ps.new_log_text())
