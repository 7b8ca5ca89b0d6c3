"""`strata sql` (deploy/sql_shell.py) as a user runs it, on a StrataEnv stack."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from compute_shim import connect_sqlite
from deploy.local_stack import ProcessRecord, _write_state
from deploy.sql_shell import parse_time_us
# The compute_shim tests' stack (a walservice, a pageserver, a client, a tenant).
from tests.compute_shim.conftest import Stack, stack  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def strata(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strata", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def iso_now(us: int | None = None) -> str:
    """An ISO 8601 UTC time with microseconds (now, or `us` since the epoch)."""
    us = int(time.time() * 1_000_000) if us is None else us
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us / 1e6)) + f".{us % 1_000_000:06d}Z"


def endpoint_args(stack: Stack) -> list[str]:
    return ["--pageserver", stack.pageserver.address, "--walservice", stack.walservice.address]


def test_sql_shell_writes_reads_and_time_travels(stack: Stack) -> None:
    main = stack.new_timeline()
    write = strata("sql", stack.tenant, main, *endpoint_args(stack), stdin="CREATE TABLE t(x);\nINSERT INTO t VALUES ('one');\n")
    assert write.returncode == 0, write.stderr
    first = stack.end_lsn(main)
    time.sleep(0.05)
    between_us = int(time.time() * 1_000_000)
    time.sleep(0.05)
    more = strata("sql", stack.tenant, main, *endpoint_args(stack), "-c", "INSERT INTO t VALUES ('two')")
    assert more.returncode == 0, more.stderr
    # It says the LSN of the commit it made: the timeline's end now.
    assert more.stderr == f"committed at lsn {stack.end_lsn(main)}\n", more.stderr
    now = strata("sql", stack.tenant, main, *endpoint_args(stack), "-c", "SELECT group_concat(x) FROM t")
    assert now.stdout == "one,two\n"
    past = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at", str(first), "-c", "SELECT group_concat(x) FROM t")
    assert past.stdout == "one\n", past.stderr
    iso = iso_now(between_us)
    by_time = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at-time", iso, "-c", "SELECT group_concat(x) FROM t")
    assert by_time.stdout == "one\n", by_time.stderr
    assert f"lsn {first}" in by_time.stderr
    readonly = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at", str(first), "-c", "DELETE FROM t")
    assert readonly.returncode != 0 and "read" in readonly.stderr.lower()
    check = connect_sqlite(stack.client, stack.tenant, main, lsn=0)
    assert check.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


def test_sql_shell_finds_the_local_stack_and_says_when_there_is_none(stack: Stack, tmp_path: Path) -> None:
    main = stack.new_timeline()
    data_dir = tmp_path / "stackdir"
    data_dir.mkdir()
    _write_state(data_dir, [
        ProcessRecord(c.name, c.proc.pid, c.address, str(c.log_path), []) for c in (stack.walservice, stack.pageserver)
    ])
    out = strata("sql", stack.tenant, main, "--data-dir", str(data_dir), "-c", "SELECT 40 + 2")
    assert out.returncode == 0 and out.stdout == "42\n", out.stderr
    missing = strata("sql", stack.tenant, main, "--data-dir", str(tmp_path / "nothing"), "-c", "SELECT 1")
    assert missing.returncode != 0 and "no running local stack" in missing.stderr and "strata up" in missing.stderr
    bad_lsn = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at", "999999999", "-c", "SELECT 1")
    assert bad_lsn.returncode != 0 and "past the timeline's end" in bad_lsn.stderr


def test_parse_time() -> None:
    assert parse_time_us("1970-01-01T00:00:01Z") == 1_000_000
    assert parse_time_us("1970-01-01T01:00:01+01:00") == 1_000_000
    assert parse_time_us("1970-01-01T00:00:01") == 1_000_000


def test_at_time_after_a_large_commit_reads_all_of_it(stack: Stack) -> None:
    """A 10 MB transaction is one Append the walservice streams in 1 MiB chunks: the LSN for a
    time after it is its end, never a chunk boundary inside it."""
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute(
        "CREATE TABLE t(x); INSERT INTO t SELECT randomblob(1000) FROM "
        "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<10000) SELECT x FROM c)"
    )
    end = stack.end_lsn(main)
    time.sleep(0.05)
    iso = iso_now()
    time.sleep(0.05)
    db.execute("INSERT INTO t VALUES ('later')")
    stack.client.get_page(tenant_id=stack.tenant, timeline_id=main, rel=1, blkno=0, lsn=stack.end_lsn(main))  # ingested
    out = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at-time", iso, "-c", "SELECT count(*) FROM t")
    assert out.returncode == 0, out.stderr
    assert f"lsn {end}" in out.stderr and out.stdout == "10000\n"


def test_at_inside_a_transaction_opens_at_the_commit_before_it_and_says_so(stack: Stack) -> None:
    main = stack.new_timeline()
    db = connect_sqlite(stack.client, stack.tenant, main)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    before = stack.end_lsn(main)
    db.execute("BEGIN; " + "".join(f"INSERT INTO t VALUES (randomblob(3000)); " for _ in range(300)) + "COMMIT")
    inside = (before + stack.end_lsn(main)) // 2
    out = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at", str(inside), "-c", "SELECT count(*) FROM t")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1\n"
    assert out.stderr == f"--at {inside}: the last commit at or below is lsn {before}\n", out.stderr
    exact = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at", str(before), "-c", "SELECT count(*) FROM t")
    assert exact.stdout == "1\n" and exact.stderr == "", exact.stderr
    branch = strata("branch", stack.tenant, "--from", main, "--at", str(inside), *endpoint_args(stack))
    assert branch.returncode == 0, branch.stderr
    assert f"--at {inside}: the last commit at or below is lsn {before}\n" in branch.stderr
    info = stack.client.get_timeline(tenant_id=stack.tenant, timeline_id=branch.stdout.strip())
    assert info.ancestor_lsn == before


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def assert_one_line_error(out: subprocess.CompletedProcess[str], prefix: str, *needles: str) -> None:
    """Exit code 1, one line on stderr that starts with `prefix` and says each needle, no traceback."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), out.stderr
    for needle in needles:
        assert needle in lines[0], out.stderr


def test_sql_errors_are_one_line(stack: Stack, tmp_path: Path) -> None:
    main = stack.new_timeline()
    stack.client.status(tenant_id=stack.tenant, timeline_id=main)
    unknown = "0123456789abcdef0123456789abcdef"
    out = strata("sql", unknown, main, *endpoint_args(stack), "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", f"no tenant {unknown}", stack.tenant)
    out = strata("sql", stack.tenant, unknown, *endpoint_args(stack), "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", f"tenant {stack.tenant} has no timeline {unknown}; its timelines: ")
    # Swapped ids: said as such (it was the walservice's "no such timeline ... (CreateTimeline first)").
    out = strata("sql", main, stack.tenant, *endpoint_args(stack), "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", "the ids are swapped", f"{stack.tenant} is the tenant")
    # A negative LSN is bad usage (it was "below the GC cutoff").
    out = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at", "-5", "-c", "SELECT 1")
    assert out.returncode == 2 and "-5 is negative" in out.stderr and "GC cutoff" not in out.stderr, out.stderr
    out = strata("sql", stack.tenant, main, *endpoint_args(stack), "-c", "SELECT * FROM no_such_table")
    assert_one_line_error(out, "strata sql: ", "no such table")
    out = strata("sql", stack.tenant, main, *endpoint_args(stack), "--at-time", "yesterday", "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", "not an ISO 8601 time")
    # Nothing listening at the given endpoints.
    out = strata("sql", stack.tenant, main, "--pageserver", "127.0.0.1:1", "--walservice", "127.0.0.1:1", "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", "cannot reach the stack", "127.0.0.1:1", "is it running")
    # A stack.json whose processes are gone.
    data_dir = tmp_path / "stopped"
    data_dir.mkdir()
    pid = dead_pid()
    _write_state(data_dir, [ProcessRecord(n, pid, "127.0.0.1:1", "", []) for n in ("walservice", "pageserver")])
    out = strata("sql", stack.tenant, main, "--data-dir", str(data_dir), "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", "no running local stack", "strata up")


def test_sql_below_the_gc_cutoff_is_one_line(stack: Stack) -> None:
    tenant = stack.client.create_tenant(page_size=4096, pitr_seconds=1).tenant_id
    main = stack.client.create_timeline(tenant_id=tenant).timeline_id
    db = connect_sqlite(stack.client, tenant, main)
    db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    old = stack.client.status(tenant_id=tenant, timeline_id=main).flush_lsn
    db.execute("INSERT INTO t VALUES (2)")
    db.close()
    time.sleep(1.5)
    cutoff = stack.client.gc(tenant_id=tenant, timeline_id=main, timeout=60).gc_cutoff_lsn
    assert cutoff > old
    out = strata("sql", tenant, main, *endpoint_args(stack), "--at", str(old), "-c", "SELECT 1")
    assert_one_line_error(out, "strata sql: ", "below the GC cutoff", str(cutoff))
    out = strata("branch", tenant, "--from", main, "--at", str(old), *endpoint_args(stack))
    assert_one_line_error(out, "strata branch: ", "gc cutoff", str(cutoff))
    out = strata("sql", tenant, main, *endpoint_args(stack), "--at", str(cutoff), "-c", "SELECT count(*) FROM t")
    assert out.returncode == 0 and out.stdout == "2\n", out.stderr
