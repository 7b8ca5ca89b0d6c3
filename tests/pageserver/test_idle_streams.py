"""Idle timelines hold no WAL stream (pageserver/ingest.py, "parked"): after
--wal-idle-timeout with nothing new the stream is dropped; a read that waits for WAL,
a branch at the latest LSN and the poll each bring the timeline's new WAL in."""

from __future__ import annotations

import time

from compute_shim import Client, connect_sqlite
from tests.env import Component, StrataEnv, wait_until


def parked_lines(ps: Component, timeline: str) -> int:
    return sum(1 for line in ps.log_text().splitlines() if "event=wal_stream_parked" in line and f"timeline={timeline}" in line)


def write_row(client: Client, tenant: str, timeline: str, value: str) -> int:
    db = connect_sqlite(client, tenant, timeline)
    db.execute("CREATE TABLE IF NOT EXISTS t(x)")
    db.execute("INSERT INTO t VALUES (?)", (value,))
    db.close()
    return client.status(tenant_id=tenant, timeline_id=timeline).flush_lsn


def test_a_parked_timeline_is_woken_by_a_read_and_by_a_branch(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    # A poll an hour away: only the read and the branch can bring the WAL in here.
    ps = strata_env.pageserver(wal, "--wal-idle-timeout", "0.5", "--wal-poll-interval", "3600")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        write_row(client, tenant, main, "first")
        wait_until("the idle stream to be dropped", lambda: parked_lines(ps, main) >= 1)
        # Written while parked, then read at the walservice's end by a new connection.
        end = write_row(client, tenant, main, "second")
        assert client.get_timeline(tenant_id=tenant, timeline_id=main).last_record_lsn < end  # not streamed
        db = connect_sqlite(client, tenant, main, lsn=0)
        assert db.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [("first",), ("second",)]
        db.close()
        wait_until("it to park again", lambda: parked_lines(ps, main) >= 2)
        # A branch at the latest LSN of a parked timeline sees its last commit.
        end = write_row(client, tenant, main, "third")
        branch = client.create_timeline(tenant_id=tenant, ancestor_timeline_id=main)
        assert branch.ancestor_lsn == end
        db = connect_sqlite(client, tenant, branch.timeline_id, lsn=0)
        assert db.execute("SELECT count(*) FROM t").fetchone() == (3,)
        db.close()


def test_wal_nobody_reads_reaches_a_parked_timeline_within_a_poll(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, "--wal-idle-timeout", "0.5", "--wal-poll-interval", "1")
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        write_row(client, tenant, main, "first")
        wait_until("the idle stream to be dropped", lambda: parked_lines(ps, main) >= 1)
        end = write_row(client, tenant, main, "unread")
        wait_until("the poll to bring the WAL in",
                   lambda: client.get_timeline(tenant_id=tenant, timeline_id=main).last_record_lsn >= end, timeout=20)
        # Parked again afterwards, and a restarted pageserver starts streaming (then parks) as before.
        wait_until("it to park again", lambda: parked_lines(ps, main) >= 2)
        ps.stop()
        ps.start()
        started = time.monotonic()
        wait_until("the restarted pageserver to park it", lambda: parked_lines(ps, main) >= 3)
        assert time.monotonic() - started < 20


def test_bad_idle_settings_are_refused(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice()
    try:
        strata_env.pageserver(wal, "--wal-idle-timeout", "0")
    except RuntimeError as exc:
        assert "--wal-idle-timeout and --wal-poll-interval must be > 0" in str(exc)
    else:
        raise AssertionError("a pageserver with --wal-idle-timeout 0 started")
