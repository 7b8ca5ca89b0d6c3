"""`strata tenants`, `strata timelines`, `strata branch` against a real `strata up` stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_shim import Client
from deploy import default_tenant
from deploy.local_stack import ProcessRecord, _write_state
from strata.v1 import records_pb2
from tests.deploy.test_local_stack import strata

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("admin") / "stack"
    up = strata("up", "--data-dir", str(data), "--free-ports", cwd=data.parent)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield data
    finally:
        down = strata("down", "--data-dir", str(data), cwd=data.parent)
        assert down.returncode == 0, down.stdout + down.stderr


def addresses(data: Path) -> dict[str, str]:
    """The storage services' addresses (what `Client` takes; the proxy speaks HTTP)."""
    return {p["name"]: p["address"] for p in json.loads((data / "stack.json").read_text())["processes"] if p["name"] != "proxy"}


def test_tenants_timelines_and_branches(stack: Path) -> None:
    d = ("--data-dir", str(stack))
    first = strata("tenants", *d, cwd=stack)
    made_by_up = default_tenant.read(stack)
    assert first.returncode == 0 and made_by_up and made_by_up in first.stdout, first.stdout + first.stderr

    created = strata("tenants", "create", "--page-size", "512", "--pitr-seconds", "5400", *d, cwd=stack)
    assert created.returncode == 0, created.stderr
    tenant = created.stdout.strip()
    assert HEX32.match(tenant), created.stdout
    assert "page size 512" in created.stderr

    listed = strata("tenants", *d, cwd=stack)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(tenant))
    assert row.split()[1:3] == ["512", "1h30m"], listed.stdout

    root = strata("branch", tenant, *d, cwd=stack)
    assert root.returncode == 0 and "root timeline" in root.stderr, root.stderr
    main = root.stdout.strip()
    assert HEX32.match(main)

    # Two commits on main; branch at the first: the branch sees the first page and not the second.
    with Client(**addresses(stack)) as c:
        def put(byte: int) -> int:
            record = records_pb2.Record(image=records_pb2.PageImage(rel=1, blkno=0, page=bytes([byte]) * 512))
            return c.append(tenant_id=tenant, timeline_id=main, records=[record]).end_lsn

        first, second = put(1), put(2)
        c.get_page(tenant_id=tenant, timeline_id=main, rel=1, blkno=0, lsn=second, timeout=20)
        branched = strata("branch", tenant, "--from", main, "--at", str(first), "--ttl", "3600", *d, cwd=stack)
        assert branched.returncode == 0, branched.stderr
        child = branched.stdout.strip()
        assert f"of {main} at LSN {first}" in branched.stderr and "expires" in branched.stderr
        info = c.get_timeline(tenant_id=tenant, timeline_id=child)
        assert (info.ancestor_timeline_id, info.ancestor_lsn) == (main, first) and info.expires_at_us > 0
        assert c.get_page(tenant_id=tenant, timeline_id=child, rel=1, blkno=0, lsn=0, timeout=20).page == bytes([1]) * 512

    grandchild = strata("branch", tenant, "--from", child, *d, cwd=stack).stdout.strip()
    table = strata("timelines", tenant, *d, cwd=stack)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIMELINE", "ANCESTOR", "BRANCH", "LSN", "LAST", "RECORD", "LSN", "GC", "CUTOFF", "EXPIRES"]
    # Tree order: each branch right under its ancestor, indented one step deeper.
    assert [line.split()[0] for line in lines[1:]] == [main, child, grandchild]
    assert lines[2].startswith("  " + child) and lines[3].startswith("    " + grandchild)
    main_row, child_row = lines[1].split(), lines[2].split()
    assert main_row[1:3] == ["-", "-"] and int(main_row[3]) >= second and main_row[5] == "never"
    assert child_row[1:3] == [main, str(first)] and "(in " in lines[2]


def test_errors_are_refused_at_once_naming_what_exists(stack: Path) -> None:
    d = ("--data-dir", str(stack))
    unknown = "0123456789abcdef0123456789abcdef"
    tenant = strata("tenants", "create", *d, cwd=stack).stdout.strip()
    main = strata("branch", tenant, *d, cwd=stack).stdout.strip()
    result = strata("timelines", unknown, *d, cwd=stack)
    assert result.returncode == 1 and f"strata timelines: no tenant {unknown}" in result.stderr and tenant in result.stderr, result.stderr
    # A malformed id is bad usage, said before anything is sent.
    bad = strata("branch", "not-a-tenant", *d, cwd=stack)
    assert bad.returncode == 2 and "'not-a-tenant' is not a tenant id" in bad.stderr, bad.stderr
    usage = strata("branch", unknown, "--at", "5", *d, cwd=stack)
    assert usage.returncode == 2 and "--at LSN needs --from" in usage.stderr
    negative = strata("branch", tenant, "--from", main, "--at", "-5", *d, cwd=stack)
    assert negative.returncode == 2 and "-5 is negative" in negative.stderr, negative.stderr
    page = strata("tenants", "create", "--page-size", "1000", *d, cwd=stack)
    assert page.returncode == 1 and "INVALID_ARGUMENT" in page.stderr and page.stdout == "", page.stderr
    no_parent = strata("branch", tenant, "--from", unknown, *d, cwd=stack)
    assert no_parent.returncode == 1 and f"strata branch: tenant {tenant} has no timeline {unknown}" in no_parent.stderr, no_parent.stderr
    assert main in no_parent.stderr, "it names the timelines there are"
    # Past the end: refused at once (it was a wait for the pageserver's 10 s deadline), naming the end.
    past = strata("branch", tenant, "--from", main, "--at", "5000", *d, cwd=stack)
    assert past.returncode == 1 and "--at 5000 is past the end of timeline" in past.stderr and "its last LSN is 0" in past.stderr, past.stderr
    # The two ids the wrong way round.
    swapped = strata("timelines", main, *d, cwd=stack)
    assert swapped.returncode == 1 and f"{main} is a timeline of tenant {tenant}, not a tenant" in swapped.stderr, swapped.stderr
    for result in (result, page, no_parent, past, swapped):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_json_listings_and_deletion(stack: Path) -> None:
    d = ("--data-dir", str(stack))
    tenant = strata("tenants", "create", "--page-size", "512", *d, cwd=stack).stdout.strip()
    main = strata("branch", tenant, *d, cwd=stack).stdout.strip()
    child = strata("branch", tenant, "--from", main, *d, cwd=stack).stdout.strip()
    tenants = json.loads(strata("tenants", "--json", *d, cwd=stack).stdout)
    assert {"tenant_id": tenant, "page_size": 512, "timeline_count": 2}.items() <= next(t for t in tenants if t["tenant_id"] == tenant).items()
    timelines = json.loads(strata("timelines", tenant, "--json", *d, cwd=stack).stdout)
    assert [(tl["timeline_id"], tl["ancestor_timeline_id"]) for tl in timelines] == [(main, ""), (child, main)]
    # A timeline with a branch stays (the server's refusal); its branch goes, then it, then the tenant.
    refused = strata("timelines", tenant, "delete", main, *d, cwd=stack)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr, refused.stderr
    for args in (("timelines", tenant, "delete", child), ("timelines", tenant, "delete", main)):
        deleted = strata(*args, *d, cwd=stack)
        assert deleted.returncode == 0 and f"deleted timeline {args[-1]}" in deleted.stderr, deleted.stderr
    assert json.loads(strata("timelines", tenant, "--json", *d, cwd=stack).stdout) == []
    gone = strata("tenants", "delete", tenant, *d, cwd=stack)
    assert gone.returncode == 0 and f"deleted tenant {tenant}" in gone.stderr, gone.stderr
    assert tenant not in {t["tenant_id"] for t in json.loads(strata("tenants", "--json", *d, cwd=stack).stdout)}
    usage = strata("tenants", "delete", *d, cwd=stack)
    assert usage.returncode == 2 and "takes one tenant id" in usage.stderr, usage.stderr


def test_without_a_running_stack(tmp_path: Path) -> None:
    result = strata("tenants", "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 1 and "no Strata stack is running" in result.stderr and "strata up" in result.stderr
    # A port nobody listens on: the client says it cannot reach the pageserver, not a traceback.
    unreachable = strata("tenants", "--pageserver", "127.0.0.1:1", cwd=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach the pageserver at 127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    # A stack.json left behind by a stack that is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    data = tmp_path / "stopped"
    data.mkdir()
    _write_state(data, [ProcessRecord(n, gone.pid, "127.0.0.1:1", "", []) for n in ("walservice", "pageserver")])
    for args in (["tenants"], ["timelines", "0123456789abcdef0123456789abcdef"], ["branch", "0123456789abcdef0123456789abcdef"]):
        result = strata(*args, "--data-dir", str(data), cwd=tmp_path)
        assert result.returncode == 1 and "is not running" in result.stderr and "strata up" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_demo_on_the_started_stack(stack: Path) -> None:
    """`strata demo` against the stack `strata up` started (found through its data dir):
    every check passes, and they are the exact ones, each step timed."""
    out = strata("demo", "--data-dir", str(stack), cwd=stack)
    demo_as = str(Path(sys.executable).parent / "strata")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "CHECK FAILED" not in text, text
    steps = [line for line in text.splitlines() if re.match(r"^\[\s*\d+\.\d ms\] ", line)]
    assert len(steps) == 7, text
    for claim in (
        "main's state: ",
        "per agent: ",
        "main still has ",
        "agent 7 just before the mistake: ",
        "a time-travel query read the past",
        "by time: the last commit at or before the load finished is lsn ",
    ):
        assert claim in text, text
    # The undo branch's digest is the pre-mistake digest; main's, in the past, the loaded one.
    digests = re.findall(r"sha256 ([0-9a-f]{12})", text)
    loaded, main_now, undone, before_mistake, past = digests
    assert loaded == main_now == past and undone == before_mistake and undone != loaded, text
    # The `strata sql` lines it prints reach the same stack when pasted, run as the demo was.
    line = next(line.strip() for line in text.splitlines() if " sql " in line and "--at" not in line)
    assert line.startswith(demo_as.split()[0]) or line.startswith("strata "), line
    count = subprocess.run(
        f"{line} -c 'SELECT count(*) FROM orders'", shell=True, cwd=stack, capture_output=True, text=True, timeout=60
    )
    assert count.returncode == 0 and int(count.stdout) > 0, count.stderr
