"""`strata up` / `strata status` / `strata down` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

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
        # The same next steps as a fresh `up`, against the running stack's addresses.
        assert "Try:" in again.stdout and f"--target {addresses['walservice']}" in again.stdout, again.stdout
        again_s3 = strata("up", "--data-dir", str(data), "--s3", cwd=tmp_path)
        assert again_s3.returncode == 0 and "runs without --s3" in again_s3.stdout, again_s3.stdout
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 2
    for pid in state["processes"]:
        assert not Path(f"/proc/{pid['pid']}").exists() or "Z" in Path(f"/proc/{pid['pid']}/stat").read_text().split(")")[-1][:3]
    after = strata("status", "--data-dir", str(data), cwd=tmp_path)
    assert after.returncode == 1 and "Nothing is running" in after.stdout


def test_up_s3_runs_a_local_s3_server_as_remote_storage(tmp_path: Path) -> None:
    data = tmp_path / "s3stack"
    up = strata("up", "--data-dir", str(data), "--s3", cwd=tmp_path)
    state = json.loads((data / "stack.json").read_text()) if (data / "stack.json").exists() else {"processes": []}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        addresses = {p["name"]: p["address"] for p in state["processes"]}
        assert list(addresses) == ["s3", "walservice", "pageserver"]
        # No minio on PATH here: moto_server, and the output says plainly that it is in memory.
        assert "s3://strata/stack" in up.stdout and "IN MEMORY" in up.stdout
        endpoint = f"http://{addresses['s3']}"
        assert f"AWS_ENDPOINT_URL={endpoint}" in up.stdout
        for p in state["processes"][1:]:
            assert p["argv"][p["argv"].index("--remote-storage") + 1] == "s3://strata/stack"

        with Client(pageserver=addresses["pageserver"], walservice=addresses["walservice"]) as c:
            tenant = c.create_tenant(page_size=512).tenant_id
            timeline = c.create_timeline(tenant_id=tenant).timeline_id
            page = bytes(range(256)) * 2
            lsn = c.append(tenant_id=tenant, timeline_id=timeline, records=[
                records_pb2.Record(image=records_pb2.PageImage(rel=7, blkno=0, page=page))
            ]).end_lsn
            assert c.get_page(tenant_id=tenant, timeline_id=timeline, rel=7, blkno=0, lsn=lsn, timeout=20).page == page
            c.compact(tenant_id=tenant, timeline_id=timeline)  # flushes the in-memory layer: a layer file goes up

            s3 = boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id="strata", aws_secret_access_key="strata-local-only",
                region_name="us-east-1",
            )
            prefix = f"stack/tenants/{tenant}/timelines/{timeline}/"

            def keys() -> list[str]:
                return [o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket="strata", Prefix=prefix).get("Contents", [])]

            def uploaded() -> bool:
                remote_lsn = c.get_timeline(tenant_id=tenant, timeline_id=timeline).remote_consistent_lsn
                found = keys()
                return remote_lsn >= lsn and any(k.endswith(".delta") for k in found) and any(k.startswith("wal/") for k in found)

            # Uploads and WAL offload run in the background: poll (bounded) until the layer, the index
            # naming it and the WAL are all in the bucket.
            deadline = time.monotonic() + 60
            while not uploaded():
                assert time.monotonic() < deadline, f"objects in the bucket under {prefix}: {keys()}"
                time.sleep(0.2)
            assert any(k.startswith("index_part.json-") for k in keys())

        status = strata("status", "--data-dir", str(data), cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == 3 and "IN MEMORY" in status.stdout
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0 and down.stdout.count("stopped") == 3, down.stdout + down.stderr
    for p in state["processes"]:
        assert not _running(p["pid"]), p
    # moto_server's objects are gone with it: this data dir's state cannot start against a new, empty one.
    again = strata("up", "--data-dir", str(data), "--s3", cwd=tmp_path)
    assert again.returncode == 1 and "use a fresh --data-dir" in again.stderr, again.stdout + again.stderr
    assert not (data / "stack.json").exists()


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_strata_without_a_command_prints_help(tmp_path: Path) -> None:
    result = strata(cwd=tmp_path)
    assert result.returncode == 2 and "walservice" in result.stdout and "pageserver" in result.stdout
    assert os.path.exists(sys.executable)


def test_up_replicas_must_be_1_3_or_5(tmp_path: Path) -> None:
    for bad in ("2", "4", "0", "three"):
        result = strata("up", "--data-dir", str(tmp_path / "stack"), "--replicas", bad, cwd=tmp_path)
        assert result.returncode == 2 and "must be 1, 3 or 5" in result.stderr, result.stderr
    assert not (tmp_path / "stack").exists()


def test_cluster_ports_are_recorded_and_reused(tmp_path: Path) -> None:
    """The first `up --replicas 3` fixes the nodes' ports in cluster.json; a restart
    reuses them (and the count), and a cluster node never moves to another port."""
    import socket

    import pytest

    from deploy import local_stack

    layout = local_stack.cluster_layout(tmp_path, 3)
    assert layout.replicas == 3 and len(set(layout.ports)) == 3
    assert local_stack.cluster_layout(tmp_path, None) == layout == local_stack.cluster_layout(tmp_path, 3)
    with pytest.raises(SystemExit, match="--replicas 3"):
        local_stack.cluster_layout(tmp_path, 5)
    specs = local_stack.components(tmp_path, [], "", layout.replicas, layout.ports)
    assert specs[0].fixed_port and specs[0].default_port == layout.ports[0]
    assert f"127.0.0.1:{layout.ports[2]}" in specs[0].args[specs[0].args.index("--peers") + 1]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", layout.ports[0]))
        busy.listen()
        with pytest.raises(SystemExit, match="is busy"):
            local_stack._start(specs[0], tmp_path)
