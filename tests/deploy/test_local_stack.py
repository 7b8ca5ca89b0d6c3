"""`strata up` / `strata status` / `strata down` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from compute_shim import Client
from strata.v1 import records_pb2


def strata(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (python -m strata if absent)."""
    script = Path(sys.executable).parent / "strata"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "strata"]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_up_status_down(tmp_path: Path) -> None:
    data = tmp_path / "stack"
    up = strata("up", "--data-dir", str(data), cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "walservice" in up.stdout and "pageserver" in up.stdout and "Try:" in up.stdout
        state = json.loads((data / "stack.json").read_text())
        addresses = {p["name"]: p["address"] for p in state["processes"]}
        assert set(addresses) == {"walservice", "pageserver"}

        # The stack works end to end: a write through the walservice is read back from the pageserver.
        with Client(pageserver=addresses["pageserver"], walservice=addresses["walservice"]) as c:
            tenant = c.create_tenant(page_size=512).tenant_id
            timeline = c.create_timeline(tenant_id=tenant).timeline_id
            page = bytes(range(256)) * 2
            lsn = c.append(tenant_id=tenant, timeline_id=timeline, records=[
                records_pb2.Record(image=records_pb2.PageImage(rel=7, blkno=0, page=page))
            ]).end_lsn
            assert c.get_page(tenant_id=tenant, timeline_id=timeline, rel=7, blkno=0, lsn=lsn, timeout=20).page == page

        status = strata("status", "--data-dir", str(data), cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == 2
        assert tenant in status.stdout and timeline in status.stdout

        again = strata("up", "--data-dir", str(data), cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 2
    for pid in state["processes"]:
        assert not Path(f"/proc/{pid['pid']}").exists() or "Z" in Path(f"/proc/{pid['pid']}/stat").read_text().split(")")[-1][:3]
    after = strata("status", "--data-dir", str(data), cwd=tmp_path)
    assert after.returncode == 1 and "Nothing is running" in after.stdout


def test_up_refuses_s3_until_remote_storage_exists(tmp_path: Path) -> None:
    result = strata("up", "--data-dir", str(tmp_path / "s"), "--s3", cwd=tmp_path)
    assert result.returncode == 2
    assert "not built yet" in result.stdout
    assert not (tmp_path / "s" / "stack.json").exists()


def test_strata_without_a_command_prints_help(tmp_path: Path) -> None:
    result = strata(cwd=tmp_path)
    assert result.returncode == 2 and "walservice" in result.stdout and "pageserver" in result.stdout
    assert os.path.exists(sys.executable)
