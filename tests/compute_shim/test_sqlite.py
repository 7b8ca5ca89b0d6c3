"""SQLite on Strata pages (compute_shim/sqlite.py) against real processes."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import apsw
import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import sqlite_workload as wl
from compute_shim import Client, CommitRefused, CommitUncertain, PageError, WriteConflict, connect_sqlite
from compute_shim import sqlite as strata_sqlite
from compute_shim.page_records import SPLICE_OVERHEAD, page_records, patch_or_image
from compute_shim.sqlite import SQLITE_REL, StrataDbFile, _DbConfig
from compute_shim.sqlite_pragmas import refused_pragma
from strata.redo import apply_to_page, validate_record
from strata.v1 import records_pb2
from tests.compute_shim.conftest import Stack
from tests.env import StrataEnv

USERS = 600


def integrity(db: apsw.Connection) -> list[tuple[object, ...]]:
    return [tuple(r) for r in db.execute("PRAGMA integrity_check")]


def test_workload_matches_local_file_and_time_travels(stack: Stack, tmp_path: Path) -> None:
    main = stack.new_timeline()
    local = apsw.Connection(str(tmp_path / "local.db"))
    local.execute("PRAGMA page_size=4096")
    db = connect_sqlite(stack.client, stack.tenant, main)
    at_step: list[tuple[str, int, wl.Answers]] = []
    nblocks: dict[str, int] = {}
    for step in wl.steps(USERS):
        wl.run_step(local, step)
        wl.run_step(db, step)
        expected = wl.answers(local)
        assert wl.answers(db) == expected, f"after step {step.name}"
        lsn = stack.end_lsn(main)
        at_step.append((step.name, lsn, expected))
        size = stack.client.get_rel_size(tenant_id=stack.tenant, timeline_id=main, rel=SQLITE_REL, lsn=lsn)
        nblocks[step.name] = size.nblocks
    assert integrity(db) == [("ok",)]
    assert db.execute("PRAGMA page_size").fetchall() == [(4096,)]
    # VACUUM after deleting half the rows shrank the relation (a RelSize record).
    assert nblocks["drop_and_vacuum"] < nblocks["alter"]
    assert at_step[-1][2]["users"][0][0] == USERS // 2
    db.close()

    # A fresh compute (empty page cache) sees the same database.
    stack.client.page_cache.drop_timeline(stack.tenant, main)
    again = connect_sqlite(stack.client, stack.tenant, main)
    assert wl.answers(again) == at_step[-1][2]
    again.close()

    # Time travel: at each step's LSN, that step's answers.
    for name, lsn, expected in at_step:
        old = connect_sqlite(stack.client, stack.tenant, main, lsn=lsn)
        assert wl.answers(old) == expected, f"time travel to step {name} at lsn={lsn}"
        assert integrity(old) == [("ok",)]
        old.close()


def test_page_cache_serves_repeat_reads_and_read_ahead_batches_scans(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute(
        "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT);"
        "INSERT INTO big(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<6000) SELECT printf('%0300d', x) FROM c"
    )
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    lsn = stack.end_lsn(main)
    db.close()
    with Client(pageserver=stack.pageserver.address, walservice=stack.walservice.address) as fresh:
        scan = "SELECT count(*), sum(length(v)) FROM big"
        first = connect_sqlite(fresh, stack.tenant, main, lsn=lsn)
        assert first.execute(scan).fetchall() == [(6000, 6000 * 300)]
        first.close()
        after_first = fresh.page_cache.stats()
        assert after_first.versions >= pages - 1
        assert after_first.misses < pages / 10, f"a cold scan of {pages} pages is read ahead in batches: {after_first}"
        second = connect_sqlite(fresh, stack.tenant, main, lsn=lsn)  # SQLite's own cache is empty again
        assert second.execute(scan).fetchall() == [(6000, 6000 * 300)]
        after_second = fresh.page_cache.stats()
        assert after_second.misses == after_first.misses, "every page of the second scan came from the page cache"
        assert after_second.hits >= after_first.hits + pages - 1


def test_read_only_connection_refuses_writes(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    lsn = stack.end_lsn(main)
    old = connect_sqlite(stack.client, stack.tenant, main, lsn=lsn)
    with pytest.raises(apsw.ReadOnlyError):
        old.execute("INSERT INTO t VALUES (2)")
    assert stack.end_lsn(main) == lsn
    with pytest.raises(ValueError, match="past the timeline's end"):
        connect_sqlite(stack.client, stack.tenant, main, lsn=lsn + 1000)


def test_branch_is_isolated_both_ways(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT); INSERT INTO kv VALUES ('a', 'main-1')")
    fork_lsn = stack.end_lsn(main)
    branch = stack.new_timeline(ancestor_timeline_id=main, ancestor_lsn=fork_lsn)
    agent = connect_sqlite(stack.client, stack.tenant, branch)
    assert agent.execute("SELECT v FROM kv").fetchall() == [("main-1",)]
    agent.execute("UPDATE kv SET v = 'agent'; INSERT INTO kv VALUES ('b', 'agent-only')")
    agent.execute("ALTER TABLE kv ADD COLUMN extra INTEGER")
    db.execute("INSERT INTO kv VALUES ('c', 'main-2')")
    assert db.execute("SELECT k, v FROM kv ORDER BY k").fetchall() == [("a", "main-1"), ("c", "main-2")]
    assert agent.execute("SELECT k, v FROM kv ORDER BY k").fetchall() == [("a", "agent"), ("b", "agent-only")]
    # Fresh connections (no cached pages of either) agree.
    stack.client.page_cache.drop_timeline(stack.tenant, main)
    stack.client.page_cache.drop_timeline(stack.tenant, branch)
    fresh_main = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
    fresh_branch = connect_sqlite(stack.client, stack.tenant, branch, lsn=0)
    assert fresh_main.execute("SELECT k, v FROM kv ORDER BY k").fetchall() == [("a", "main-1"), ("c", "main-2")]
    assert [r[1] for r in fresh_branch.execute("PRAGMA table_info(kv)")] == ["k", "v", "extra"]
    assert integrity(fresh_main) == [("ok",)] and integrity(fresh_branch) == [("ok",)]


def test_second_writer_is_refused_cleanly(stack: Stack) -> None:
    """A commit by another writer while a transaction is open fails that transaction
    with WriteConflict, and nothing of it reaches Strata; the retry starts at the new end."""
    main = stack.new_timeline()
    first = connect_sqlite(stack.client, stack.tenant, main, end_check_s=0)
    first.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT); INSERT INTO t(who) VALUES ('first')")
    other_compute = Client(pageserver=stack.pageserver.address, walservice=stack.walservice.address)  # its own page cache
    second = connect_sqlite(other_compute, stack.tenant, main, end_check_s=0)
    second.execute("BEGIN")
    assert second.execute("SELECT count(*) FROM t").fetchall() == [(1,)]  # its transaction reads at this end
    first.execute("INSERT INTO t(who) VALUES ('first again')")  # ... which moves meanwhile
    end = stack.end_lsn(main)
    second.execute("INSERT INTO t(who) VALUES ('second')")
    with pytest.raises(WriteConflict, match="another writer moved the timeline"):
        second.execute("COMMIT")
    assert stack.end_lsn(main) == end, "the refused transaction must not reach Strata"
    assert not second.in_transaction, "SQLite rolls the failed commit back"
    # The refused connection's retry starts at the timeline's end and commits on top.
    second.execute("INSERT INTO t(who) VALUES ('second, retried')")
    check = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
    assert check.execute("SELECT who FROM t ORDER BY id").fetchall() == [("first",), ("first again",), ("second, retried",)]
    assert integrity(check) == [("ok",)]
    # Between transactions nobody is stale: the first writer's next one starts at the second's commit.
    first.execute("DELETE FROM t WHERE who = 'first'")
    assert second.execute("SELECT who FROM t ORDER BY id").fetchall() == [("first again",), ("second, retried",)]
    other_compute.close()


def test_each_transaction_of_a_read_write_connection_starts_at_the_end(stack: Stack) -> None:
    """What the module docstring says: a read-write connection starts each transaction
    at the timeline's end (`end_check_s=0`: asked at every transaction), reads at that one LSN until it ends, and its own commit
    moves it to that commit's end."""
    main = stack.new_timeline()
    a = connect_sqlite(stack.client, stack.tenant, main, end_check_s=0)
    a.execute("CREATE TABLE t(who TEXT); INSERT INTO t VALUES ('a1')")
    other_compute = Client(pageserver=stack.pageserver.address, walservice=stack.walservice.address)
    b = connect_sqlite(other_compute, stack.tenant, main, end_check_s=0)
    assert b.execute("SELECT who FROM t").fetchall() == [("a1",)], "b opened at the end: a's commit is in"
    a.execute("INSERT INTO t VALUES ('a2')")
    assert a.execute("SELECT who FROM t").fetchall() == [("a1",), ("a2",)], "a reads at its own commit's end"
    assert b.execute("SELECT who FROM t").fetchall() == [("a1",), ("a2",)], "b's next transaction starts at the end"
    b.execute("BEGIN")
    assert b.execute("SELECT who FROM t").fetchall() == [("a1",), ("a2",)]
    a.execute("INSERT INTO t VALUES ('a3')")
    assert b.execute("SELECT who FROM t").fetchall() == [("a1",), ("a2",)], "within a transaction: one LSN"
    b.execute("COMMIT")  # read-only: nothing to ship, nothing refused
    assert b.execute("SELECT count(*) FROM t").fetchall() == [(3,)]
    b.execute("INSERT INTO t VALUES ('b1')")
    assert a.execute("SELECT who FROM t").fetchall() == [("a1",), ("a2",), ("a3",), ("b1",)]
    other_compute.close()


def test_a_writer_opened_before_another_s_create_table_sees_the_table(stack: Stack) -> None:
    """Issue 16.7: a read-write connection whose snapshot predates another writer's
    CREATE TABLE used to fail `no such table` on every try, never reaching the
    conflict that would have refreshed it."""
    main = stack.new_timeline()
    early = connect_sqlite(stack.client, stack.tenant, main, end_check_s=0)
    assert early.execute("SELECT count(*) FROM sqlite_schema").fetchall() == [(0,)]
    other_compute = Client(pageserver=stack.pageserver.address, walservice=stack.walservice.address)
    creator = connect_sqlite(other_compute, stack.tenant, main, end_check_s=0)
    creator.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT); INSERT INTO t(who) VALUES ('creator')")
    early.execute("INSERT INTO t(who) VALUES ('early')")
    assert early.execute("SELECT who FROM t ORDER BY id").fetchall() == [("creator",), ("early",)]
    assert creator.execute("SELECT who FROM t ORDER BY id").fetchall() == [("creator",), ("early",)]
    assert integrity(connect_sqlite(stack.client, stack.tenant, main, lsn=0)) == [("ok",)]
    other_compute.close()

class CountingClient(Client):
    """A real Client that counts its Status calls."""

    status_calls = 0

    def status(self, **kwargs):  # type: ignore[override]
        self.status_calls += 1
        return super().status(**kwargs)


def test_end_check_s_bounds_how_often_a_writer_asks_for_the_end(stack: Stack) -> None:
    """The rule's knob: `end_check_s=0` asks the walservice at every transaction; a
    long one asks none within it, and a transaction started on that stale end cannot
    commit over another writer's work (WriteConflict), after which it asks again."""
    main = stack.new_timeline()
    every = CountingClient(pageserver=stack.pageserver.address, walservice=stack.walservice.address)
    db = connect_sqlite(every, stack.tenant, main, end_check_s=0)
    db.execute("CREATE TABLE t(who TEXT); INSERT INTO t VALUES ('a')")
    before = every.status_calls
    for _ in range(20):
        db.execute("SELECT count(*) FROM t").fetchall()
    assert every.status_calls - before == 20, "end_check_s=0: one Status call per transaction"
    lazy_client = CountingClient(pageserver=stack.pageserver.address, walservice=stack.walservice.address)
    lazy = connect_sqlite(lazy_client, stack.tenant, main, end_check_s=3600)
    before = lazy_client.status_calls
    for _ in range(20):
        assert lazy.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    assert lazy_client.status_calls == before, "within end_check_s no transaction asks"
    db.execute("INSERT INTO t VALUES ('b')")
    assert lazy.execute("SELECT count(*) FROM t").fetchall() == [(1,)], "a stale start, as the rule allows"
    with pytest.raises(WriteConflict):
        lazy.execute("INSERT INTO t VALUES ('lazy')")
    lazy.execute("INSERT INTO t VALUES ('lazy, retried')")  # a failed commit re-reads the end first
    assert db.execute("SELECT who FROM t ORDER BY rowid").fetchall() == [("a",), ("b",), ("lazy, retried",)]
    with pytest.raises(ValueError, match="end_check_s"):
        connect_sqlite(every, stack.tenant, main, end_check_s=-1)
    every.close()
    lazy_client.close()


CHILD = textwrap.dedent(
    """
    import sys
    from compute_shim import Client, connect_sqlite
    from compute_shim import sqlite as strata_sqlite
    spilled = []  # pages SQLite wrote to the database file before any commit
    write = strata_sqlite.StrataDbFile.xWrite
    strata_sqlite.StrataDbFile.xWrite = lambda self, data, offset: spilled.append(offset) or write(self, data, offset)
    pageserver, walservice, tenant, timeline = sys.argv[1:5]
    db = connect_sqlite(Client(pageserver=pageserver, walservice=walservice), tenant, timeline)
    db.execute("PRAGMA cache_size=8")  # 8 pages: the transaction below spills to the database file
    db.execute("BEGIN")
    db.execute(
        "INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<4000) "
        "SELECT printf('%0300d', x) FROM c"
    )
    db.execute("UPDATE t SET v = 'overwritten' WHERE id <= 10")
    print(f"in transaction, spilled {len(spilled)} pages", flush=True)
    sys.stdin.read()
    """
)


def test_sigkill_mid_transaction_leaves_previous_commit(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<50) SELECT 'committed' FROM c")
    db.close()
    end = stack.end_lsn(main)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, stack.pageserver.address, stack.walservice.address, stack.tenant, main],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        line = child.stdout.readline().decode()
        assert line.startswith("in transaction, spilled "), child.stderr.read().decode()
        assert int(line.split()[3]) > 50, f"the transaction must spill to the database file: {line}"
    finally:
        child.kill()
        child.wait()
    assert stack.end_lsn(main) == end, "an uncommitted transaction reached the WAL"
    after = connect_sqlite(stack.client, stack.tenant, main)
    assert after.execute("SELECT count(*), min(v), max(v) FROM t").fetchall() == [(50, "committed", "committed")]
    assert integrity(after) == [("ok",)]
    after.execute("INSERT INTO t(v) VALUES ('after the crash')")
    assert after.execute("SELECT count(*) FROM t").fetchall() == [(51,)]


def test_patch_when_smaller_than_image() -> None:
    old = bytes(4096)
    small = bytearray(old)
    small[100:104] = b"abcd"
    small[4000:4002] = b"xy"
    record = patch_or_image(1, 7, old, bytes(small))
    assert record is not None and record.WhichOneof("kind") == "patch"
    # Splices cover the changed 8-byte words.
    assert [(s.offset, len(s.data)) for s in record.patch.splices] == [(96, 8), (4000, 8)]
    assert all(s.data == bytes(small)[s.offset : s.offset + len(s.data)] for s in record.patch.splices)
    whole = bytes(range(256)) * 16
    assert patch_or_image(1, 7, old, whole).WhichOneof("kind") == "image"
    assert patch_or_image(1, 7, old, old) is None
    # Nearby changes share one splice rather than paying a splice's overhead twice.
    near = bytearray(old)
    near[10] = 1
    near[70] = 1
    merged = patch_or_image(1, 7, old, bytes(near))
    assert [(s.offset, len(s.data)) for s in merged.patch.splices] == [(8, 64)]
    # Changes in every word: the image is smaller than a patch.
    scattered = bytearray(old)
    scattered[::8] = b"\x01" * len(scattered[::8])
    assert patch_or_image(1, 7, old, bytes(scattered)).WhichOneof("kind") == "image"
    assert isinstance(merged, records_pb2.Record)


def wait_until_reachable(stack: Stack, timeline: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stack.client.status(tenant_id=stack.tenant, timeline_id=timeline, timeout=2)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_commit_with_unknown_outcome_then_reread(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('before')")
    stack.walservice.kill()
    with pytest.raises(CommitUncertain, match="may or may not have been applied"):
        db.execute("INSERT INTO t VALUES ('while down')")
    stack.walservice.start()
    wait_until_reachable(stack, main)  # the client's channel reconnects with gRPC's backoff
    db.execute("INSERT INTO t VALUES ('after')")
    assert db.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [("before",), ("after",)]
    check = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
    assert check.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [("before",), ("after",)]
    assert integrity(check) == [("ok",)]


def test_page_size_follows_the_tenant_and_a_mismatch_is_refused(stack: Stack, tmp_path: Path) -> None:
    for page_size in (512, 65536):
        tenant = stack.client.create_tenant(page_size=page_size).tenant_id
        timeline = stack.client.create_timeline(tenant_id=tenant).timeline_id
        db = connect_sqlite(stack.client, tenant, timeline)
        db.execute("CREATE TABLE t(x); INSERT INTO t SELECT zeroblob(700) FROM (SELECT 1 UNION ALL SELECT 2)")
        db.close()
        again = connect_sqlite(stack.client, tenant, timeline, lsn=0)
        assert again.execute("PRAGMA page_size").fetchall() == [(page_size,)]
        assert again.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    # A database file written with 4096-byte SQLite pages into a tenant of 8192-byte pages.
    local = apsw.Connection(str(tmp_path / "4k.db"))
    local.execute("PRAGMA page_size=4096; CREATE TABLE t(x)")
    local.close()
    data = (tmp_path / "4k.db").read_bytes()
    tenant = stack.client.create_tenant(page_size=8192).tenant_id
    timeline = stack.client.create_timeline(tenant_id=tenant).timeline_id
    image = records_pb2.PageImage(rel=SQLITE_REL, blkno=0, page=data[:8192].ljust(8192, b"\0"))
    stack.client.append(tenant_id=tenant, timeline_id=timeline, records=[records_pb2.Record(image=image)])
    with pytest.raises(ValueError, match="page_size is 4096 but the tenant's page size is 8192"):
        connect_sqlite(stack.client, tenant, timeline)


def test_closing_mid_transaction_leaves_only_committed(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('committed')")
    end = stack.end_lsn(main)
    db.execute("PRAGMA cache_size=8")
    db.execute("BEGIN")
    db.execute(
        "INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<3000) "
        "SELECT printf('%0300d', x) FROM c"
    )
    db.execute("UPDATE t SET v = 'changed' WHERE id = 1")
    db.close(force=True)  # SQLite rolls the open transaction back, spilled pages included
    assert stack.end_lsn(main) == end
    after = connect_sqlite(stack.client, stack.tenant, main)
    assert after.execute("SELECT id, v FROM t").fetchall() == [(1, "committed")]
    assert integrity(after) == [("ok",)]


def test_transaction_over_the_batch_limit_is_refused_whole(strata_env: StrataEnv) -> None:
    wal = strata_env.walservice("--max-batch-bytes", "200000")
    ps = strata_env.pageserver(wal)
    with Client(pageserver=ps.address, walservice=wal.address) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        main = client.create_timeline(tenant_id=tenant).timeline_id
        db = connect_sqlite(client, tenant, main)
        db.execute("CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('small')")
        end = client.status(tenant_id=tenant, timeline_id=main).flush_lsn
        with pytest.raises(CommitRefused, match="INVALID_ARGUMENT.*nothing of this transaction was written"):
            db.execute(
                "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<2000) "
                "SELECT hex(randomblob(200)) FROM c"
            )
        assert client.status(tenant_id=tenant, timeline_id=main).flush_lsn == end
        db.execute("INSERT INTO t VALUES ('small again')")
        assert db.execute("SELECT v FROM t").fetchall() == [("small",), ("small again",)]
        check = connect_sqlite(client, tenant, main, lsn=0)
        assert check.execute("SELECT v FROM t").fetchall() == [("small",), ("small again",)]


@settings(max_examples=200, deadline=None)
@given(
    page_size=st.sampled_from([512, 4096]),
    changes=st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=300)), max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_page_records_redo_to_the_new_page(page_size: int, changes: list[tuple[int, bytes]], seed: int) -> None:
    """Whatever changed, the record (patch or image) redoes the old page into the new one
    with the contract's redo, and is never larger than a whole image."""
    rng = random.Random(seed)
    old = bytes(rng.getrandbits(8) for _ in range(page_size)) if seed % 2 else bytes(page_size)
    new = bytearray(old)
    for offset, data in changes:
        offset %= page_size
        new[offset : offset + len(data)] = data[: page_size - offset]
    new_bytes = bytes(new)
    records = page_records(1, [(3, old, new_bytes), (4, new_bytes, new_bytes)])
    if new_bytes == old:
        assert records == []
        return
    assert [b for b, _ in records] == [3], "an unchanged page gets no record"
    record = records[0][1]
    validate_record(record, page_size, "record")
    page = bytearray(old)
    apply_to_page(page, record)
    assert bytes(page) == new_bytes
    image_size = records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=3, page=new_bytes)).ByteSize()
    assert record.ByteSize() <= image_size + SPLICE_OVERHEAD


class FlakyReadAheadClient(Client):
    """A real client whose second GetPages read fails once (a fault injected into the read-ahead path)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read_pages_calls = 0

    def read_pages(self, **kwargs: object) -> list[bytes | PageError]:  # type: ignore[override]
        self.read_pages_calls += 1
        if self.read_pages_calls == 2:
            raise OSError("injected: this GetPages stream broke")
        return super().read_pages(**kwargs)  # type: ignore[arg-type]


def test_a_failed_read_ahead_window_is_read_again(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute(
        "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT);"
        "INSERT INTO big(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<3000) SELECT printf('%0300d', x) FROM c"
    )
    db.close()
    with FlakyReadAheadClient(pageserver=stack.pageserver.address, walservice=stack.walservice.address) as flaky:
        ro = connect_sqlite(flaky, stack.tenant, main, lsn=0)
        assert ro.execute("SELECT count(*), sum(length(v)) FROM big").fetchall() == [(3000, 3000 * 300)]
        assert flaky.read_pages_calls > 2
        assert "event=sqlite_read_ahead_failed" in caplog.text, "the injected failure hit a background window"
        assert [tuple(r) for r in ro.execute("PRAGMA integrity_check")] == [("ok",)]


@pytest.mark.parametrize(
    "pragma",
    ["main.journal_mode=WAL", "journal_mode='off'", "JOURNAL_MODE = w", "journal_mode=Of", "locking_mode=Exclusive"],
)
def test_pragmas_that_would_break_commits_are_refused(stack: Stack, pragma: str) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(x)")
    with pytest.raises(apsw.SQLError, match="refused on a Strata database: .*keep"):
        db.execute(f"PRAGMA {pragma}")
    for allowed in ("PRAGMA synchronous=OFF", "PRAGMA journal_mode=DELETE", "PRAGMA journal_mode=xyz", "INSERT INTO t VALUES (1)"):
        db.execute(allowed).fetchall()  # apsw runs a script lazily past a statement that returns rows
    check = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
    assert check.execute("SELECT x FROM t").fetchall() == [(1,)]


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("journal_mode", "WAL", True), ("journal_mode", "w", True), ("journal_mode", "wA", True),
        ("journal_mode", "OFF", True), ("journal_mode", "o", True), ("JOURNAL_MODE", "oF", True),
        ("journal_mode", "memory", False), ("journal_mode", "d", False), ("journal_mode", "xyz", False),
        ("journal_mode", "", False), ("journal_mode", None, False), ("journal_mode", " wal", False),
        ("locking_mode", "EXCLUSIVE", True), ("locking_mode", "exclusive", True), ("locking_mode", "excl", False),
        ("synchronous", "OFF", False), ("synchronous", "0", False), ("synchronous", "8", False),
    ],
)
def test_pragma_values_are_read_as_sqlite_reads_them(name: str, value: str | None, refused: bool, tmp_path: Path) -> None:
    assert (refused_pragma(name, value) is not None) == refused
    if name.lower() == "journal_mode" and value is not None:
        # What SQLite itself makes of the value, on a local file.
        local = apsw.Connection(str(tmp_path / "local.db"))
        mode = local.execute(f"PRAGMA journal_mode='{value}'").fetchall()[0][0]
        assert (mode in ("off", "wal")) == refused, mode


@pytest.mark.parametrize("level", ["OFF", "0", "off", "NORMAL", "1", "FULL", "2", "EXTRA", "3", "no", "yes"])
def test_every_synchronous_level_commits(stack: Stack, level: str) -> None:
    """Commits ship at SQLITE_FCNTL_SYNC, which SQLite sends whether or not it then
    syncs the file (under synchronous=OFF it does not)."""
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute(f"PRAGMA synchronous={level}").fetchall()
    db.execute("CREATE TABLE t(x)")
    for i in range(3):
        before = stack.end_lsn(main)
        db.execute("INSERT INTO t VALUES (?)", (i,))
        assert stack.end_lsn(main) > before, "the commit was shipped when it returned"
    check = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
    assert check.execute("SELECT x FROM t ORDER BY x").fetchall() == [(0,), (1,), (2,)]


def series(n: int) -> str:
    """A row source of n rows (this SQLite has no generate_series)."""
    return f"(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT x FROM c)"


def _raw_file(stack: Stack, timeline: str, lsn: int | None, client: Client | None = None) -> StrataDbFile:
    c = client or stack.client
    page_size = c.status(tenant_id=stack.tenant, timeline_id=timeline).page_size
    return StrataDbFile(_DbConfig(c, stack.tenant, timeline, SQLITE_REL, page_size, lsn))


def test_truncate_then_extend_reads_zeros(stack: Stack) -> None:
    """The database file truncated below its committed size and written past the cut
    again, in one transaction: the blocks in between read as zeros, before the commit
    and after it, from the cache and from the pageserver."""
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(x); INSERT INTO t SELECT randomblob(3000) FROM " + series(40))
    db.close()
    f = _raw_file(stack, main, None)
    ps = f.ps
    nblocks = f.xFileSize() // ps
    assert nblocks > 20
    original = [f.xRead(ps, b * ps) for b in range(nblocks)]
    zeros = bytes(ps)
    assert all(p != zeros for p in original[:5])
    f.xTruncate(5 * ps)
    f.xWrite(b"x" * ps, 12 * ps)
    f.xWrite(b"y" * 100, 10 * ps + 50)  # a partial write past the cut builds on zeros
    assert f.xFileSize() == 13 * ps
    expect = original[:5] + [zeros] * 5 + [zeros[:50] + b"y" * 100 + zeros[150:], zeros, b"x" * ps]
    assert [f.xRead(ps, b * ps) for b in range(13)] == expect
    assert f.xFileControl(apsw.SQLITE_FCNTL_SYNC, 0)  # the commit point
    assert f.xFileControl(apsw.SQLITE_FCNTL_COMMIT_PHASETWO, 0)
    f.xUnlock(0)
    assert [f.xRead(ps, b * ps) for b in range(13)] == expect
    end = stack.end_lsn(main)
    assert f.read_lsn == end
    cached = _raw_file(stack, main, end)  # same client: served from its page cache where it can
    with Client(pageserver=stack.pageserver.address, walservice=stack.walservice.address) as fresh:
        remote = _raw_file(stack, main, end, client=fresh)  # a cold cache: the pageserver's answer
        for g in (cached, remote):
            assert g.xFileSize() == 13 * ps
            assert [g.xRead(ps, b * ps) for b in range(13)] == expect
            g.xClose()
    f.xClose()


def test_vacuum_shrinks_then_regrowth_reads_fresh_pages(stack: Stack, tmp_path: Path) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    local = apsw.Connection(str(tmp_path / "local.db"))
    local.execute(f"PRAGMA page_size={db.execute('PRAGMA page_size').fetchall()[0][0]}")
    script = [
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX t_v ON t(v)",
        "INSERT INTO t(v) SELECT randomblob(500) FROM " + series(2000),
        "DELETE FROM t WHERE id % 10 != 0",
        "VACUUM",
        "INSERT INTO t(v) SELECT zeroblob(700) FROM " + series(1500),
        "UPDATE t SET v = zeroblob(10) WHERE id % 3 = 0",
        "VACUUM",
    ]
    for sql in script:
        local.execute(sql.replace("randomblob", "zeroblob"))
        db.execute(sql.replace("randomblob", "zeroblob"))
        pages = db.execute("PRAGMA page_count").fetchall()[0][0]
        size = stack.client.get_rel_size(tenant_id=stack.tenant, timeline_id=main, rel=SQLITE_REL, lsn=stack.end_lsn(main)).nblocks
        assert size == pages, f"after {sql!r}: Strata holds {size} blocks, SQLite {pages} pages"
        ro = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
        assert integrity(ro) == [("ok",)]
        q = "SELECT count(*), sum(length(v)), sum(id) FROM t"
        assert ro.execute(q).fetchall() == local.execute(q).fetchall()
        ro.close()


@pytest.mark.parametrize("mode", ["PERSIST", "TRUNCATE", "DELETE"])
def test_journal_scratch_is_freed_after_commit_and_rollback(stack: Stack, mode: str) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    assert db.execute(f"PRAGMA journal_mode={mode}").fetchall() == [(mode.lower(),)]
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    db.execute("INSERT INTO t(v) SELECT zeroblob(1000) FROM " + series(300))
    assert strata_sqlite._vfs is not None
    for end in ("COMMIT", "ROLLBACK"):
        db.execute("BEGIN")
        db.execute("UPDATE t SET v = randomblob(1000)")
        assert strata_sqlite._vfs.scratch_bytes() > 200 * 1000, "the journal holds the old pages"
        db.execute(end)
        assert strata_sqlite._vfs.scratch_bytes() == 0, f"after {end}"
    assert db.execute("SELECT count(*) FROM t WHERE v = zeroblob(1000)").fetchall() == [(0,)]
    assert integrity(db) == [("ok",)]
    db.close()
    assert strata_sqlite._vfs.scratch_bytes() == 0
