"""`strata db` against a real `strata up` stack: the default tenant `up` made,
databases by name, branches by name at an LSN, and clear refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_shim import Client, connect_sqlite
from deploy import default_tenant
from strata.errors import CorruptionError
from tests.deploy.test_admin_cli import addresses
from tests.deploy.test_local_stack import strata


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("db") / "stack"
    up = strata("up", "--data-dir", str(data), "--free-ports", cwd=data.parent)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"db create notes --data-dir {data}" in up.stdout, up.stdout
    try:
        yield data
    finally:
        down = strata("down", "--data-dir", str(data), cwd=data.parent)
        assert down.returncode == 0, down.stdout + down.stderr


def db(stack: Path, *args: str):  # type: ignore[no-untyped-def]
    return strata("db", *args, "--data-dir", str(stack), cwd=stack.parent)


def test_up_made_a_default_tenant_that_outlives_down(stack: Path, tmp_path: Path) -> None:
    tenant = default_tenant.read(stack)
    assert tenant is not None
    assert json.loads((stack / "stack.json").read_text())["default_tenant"] == tenant
    with Client(**addresses(stack)) as c:
        assert tenant in {t.tenant_id for t in c.list_tenants().tenants}
    # Another data dir: down, up again, the same tenant.
    other = tmp_path / "again"
    assert strata("up", "--data-dir", str(other), "--free-ports", cwd=tmp_path).returncode == 0
    first = default_tenant.read(other)
    assert strata("down", "--data-dir", str(other), cwd=tmp_path).returncode == 0
    up = strata("up", "--data-dir", str(other), "--free-ports", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert default_tenant.read(other) == first
    finally:
        strata("down", "--data-dir", str(other), cwd=tmp_path)
    # A damaged record is an error naming the file, never a silently new tenant.
    (other / default_tenant.FILE_NAME).write_text('{"tenant_id": "x"}')
    with pytest.raises(CorruptionError, match="default_tenant.json"):
        default_tenant.read(other)


def test_create_list_show_branch_delete(stack: Path) -> None:
    created = db(stack, "create", "notes", "--proxy", "db.example:9000")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "http://db.example:9000/db/notes/"
    assert "created database notes" in created.stderr
    tenant = default_tenant.read(stack)
    with Client(**addresses(stack)) as c:
        info = c.get_timeline_by_name(tenant_id=tenant, name="notes")
        sql = connect_sqlite(c, tenant, info.timeline_id, on_commit=lambda lsn: commits.append(lsn))
        commits: list[int] = []
        sql.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('first')")
        sql.execute("INSERT INTO t VALUES ('second')")
        sql.close()
        first_commit = commits[-2]
        c.get_page(tenant_id=tenant, timeline_id=info.timeline_id, rel=1, blkno=0, lsn=commits[-1], timeout=20)
    branched = db(stack, "create", "undo", "--from", "notes", "--at", str(first_commit), "--ttl", "3600", "--json")
    assert branched.returncode == 0, branched.stderr
    body = json.loads(branched.stdout)
    assert (body["name"], body["ancestor_name"], body["ancestor_lsn"]) == ("undo", "notes", first_commit)
    assert body["expires_at_us"] > 0 and body["url"].endswith("/db/undo/")
    with Client(**addresses(stack)) as c:
        old = connect_sqlite(c, tenant, body["timeline_id"], lsn=0)
        assert old.execute("SELECT group_concat(x) FROM t").fetchall() == [("first",)]
        old.close()

    log = json.loads(db(stack, "log", "notes", "--json").stdout)
    ends = [c["end_lsn"] for c in log]
    assert ends == sorted(ends, reverse=True) and ends[:2] == [commits[-1], commits[-2]], log
    assert all(c["commit_time_us"] > 0 and c["records"] >= 1 and c["database"] == "notes" for c in log)
    table = db(stack, "log", "notes", "--limit", "1")
    assert table.returncode == 0 and str(commits[-1]) in table.stdout and str(commits[-2]) not in table.stdout
    assert "--limit N for more" in table.stderr
    branch_log = json.loads(db(stack, "log", "undo", "--json").stdout)
    assert branch_log[0]["end_lsn"] == first_commit and branch_log[0]["database"] == "notes", branch_log
    assert db(stack, "list", "--limit", "3").returncode == 2

    listed = db(stack, "list")
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {"notes", "undo"} and rows["undo"][1:3] == ["notes", str(first_commit)], listed.stdout
    as_json = json.loads(db(stack, "list", "--json").stdout)
    assert [d["name"] for d in as_json] == ["notes", "undo"]

    shown = db(stack, "show", "undo")
    assert shown.returncode == 0 and f"notes at lsn {first_commit}" in shown.stdout, shown.stdout

    taken = db(stack, "create", "notes")
    assert taken.returncode == 1 and "already has a database named 'notes'" in taken.stderr
    missing = db(stack, "show", "nope")
    assert missing.returncode == 1 and "no database named 'nope'" in missing.stderr and "notes, undo" in missing.stderr
    refused = db(stack, "delete", "notes")
    assert refused.returncode == 1 and "child" in refused.stderr, refused.stderr
    assert db(stack, "delete", "undo").returncode == 0
    assert db(stack, "create", "undo", "--from", "notes").returncode == 0, "a deleted database's name is free again"
    assert db(stack, "delete", "undo").returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("create", "Bad_Name"), "not a database name"),
        (("create",), "take one"),
        (("list", "notes"), "takes no name"),
        (("create", "x", "--at", "5"), "need --from"),
        (("show", "notes", "--ttl", "5"), "go with `db create`"),
    ],
)
def test_bad_usage_exits_2(stack: Path, args: tuple[str, ...], message: str) -> None:
    result = db(stack, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_no_default_tenant_without_a_stack(tmp_path: Path, stack: Path) -> None:
    pageserver = addresses(stack)["pageserver"]
    result = strata("db", "list", "--pageserver", pageserver, "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 1 and "pass --tenant T" in result.stderr
    tenant = default_tenant.read(stack)
    result = strata("db", "list", "--pageserver", pageserver, "--tenant", tenant, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
