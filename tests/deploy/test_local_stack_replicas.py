"""`strata up --replicas 3`: a 3-node walservice cluster behind the local stack."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc

from compute_shim import Client
from strata.v1 import records_pb2
from tests.deploy.test_local_stack import strata


def test_up_replicas_3_survives_a_walservice_kill(tmp_path: Path) -> None:
    data = tmp_path / "stack"
    up = strata("up", "--data-dir", str(data), "--replicas", "3", "--free-ports", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        processes = json.loads((data / "stack.json").read_text())["processes"]
        names = [p["name"] for p in processes]
        assert names == ["walservice1", "walservice2", "walservice3", "pageserver", "proxy"]
        wal = ",".join(p["address"] for p in processes if p["name"].startswith("walservice"))
        assert f"--target {wal}" in up.stdout
        with Client(pageserver=processes[3]["address"], walservice=wal, timeout=30) as c:
            tenant = c.create_tenant(page_size=512).tenant_id
            timeline = c.create_timeline(tenant_id=tenant).timeline_id

            def write(tag: int) -> int:
                page = bytes([tag]) * 512
                return c.append(tenant_id=tenant, timeline_id=timeline, records=[
                    records_pb2.Record(image=records_pb2.PageImage(rel=7, blkno=0, page=page))
                ]).end_lsn

            write(1)
            leader = c.status(tenant_id=tenant, timeline_id=timeline).leader_node_id
            os.kill(processes[leader - 1]["pid"], signal.SIGKILL)
            # A call racing the kill on the old channel may fail with an unknown
            # outcome (UNAVAILABLE, no leader hint): writing the same page image
            # again is harmless, so retry as an application would.
            for attempt in range(3):
                try:
                    lsn = write(2)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < 2, exc
            assert c.get_page(tenant_id=tenant, timeline_id=timeline, rel=7, blkno=0, lsn=lsn).page == bytes([2]) * 512
        status = strata("status", "--data-dir", str(data), cwd=tmp_path)
        assert status.stdout.count("SERVING") == 4 and "not running" in status.stdout  # 2 of 3 nodes, the pageserver, the proxy
        # The commands that find the stack through its data dir find a cluster's nodes too
        # (they looked for a node named "walservice": "no running local stack").
        sql = strata("sql", tenant, timeline, "--data-dir", str(data), "-c", "CREATE TABLE t(x); SELECT 40 + 2", cwd=tmp_path)
        assert sql.returncode == 0 and sql.stdout == "42\n", sql.stdout + sql.stderr
        branch = strata("branch", tenant, "--from", timeline, "--data-dir", str(data), cwd=tmp_path)
        assert branch.returncode == 0, branch.stderr
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
