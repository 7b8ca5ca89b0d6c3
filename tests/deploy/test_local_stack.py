"""`strata up` / `strata status` / `strata down` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import grpc

from compute_shim import Client
from strata.v1 import records_pb2


def strata(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (python -m strata if absent)."""
    script = Path(sys.executable).parent / "strata"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "strata"]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_up_status_down(tmp_path: Path) -> None:
    data = tmp_path / "stack"
    up = strata("up", "--data-dir", str(data), "--free-ports", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "walservice" in up.stdout and "pageserver" in up.stdout and "Try:" in up.stdout
        state = json.loads((data / "stack.json").read_text())
        addresses = {p["name"]: p["address"] for p in state["processes"]}
        assert set(addresses) == {"walservice", "pageserver", "proxy"}

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
        assert status.stdout.count("SERVING") == 3  # the walservice, the pageserver, the proxy
        assert tenant in status.stdout and timeline in status.stdout
        as_json = json.loads(strata("status", "--data-dir", str(data), "--json", cwd=tmp_path).stdout)
        assert {p["name"]: p["health"] for p in as_json["processes"]} == {
            "walservice": "SERVING", "pageserver": "SERVING", "proxy": "SERVING"}
        [listed] = [t for t in as_json["tenants"] if t["tenant_id"] == tenant]
        assert [tl["timeline_id"] for tl in listed["timelines"]] == [timeline]
        assert listed["timelines"][0]["last_record_lsn"] >= lsn  # a number, as the table prints it

        # Every "Try:" line acts on this stack when pasted in the same directory, as `up` was run.
        tries = dict(re.findall(r"^  (.+?)\s+# (.+)$", up.stdout, re.M))
        paste = {what.split(",")[0]: line for line, what in tries.items()}
        assert all(f"--data-dir {data}" in line for line in tries if " status" in line or " down" in line), up.stdout
        pasted = subprocess.run(paste["what runs"], shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0 and pasted.stdout.count("SERVING") == 3, pasted.stdout + pasted.stderr
        assert f"demo --data-dir {data}" in up.stdout

        again = strata("up", "--data-dir", str(data), cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stdout
        # The same next steps as a fresh `up`, against the running stack's addresses.
        assert "Try:" in again.stdout and f"--target {addresses['walservice']}" in again.stdout, again.stdout
        again_s3 = strata("up", "--data-dir", str(data), "--s3", cwd=tmp_path)
        assert again_s3.returncode == 0 and "runs without --s3" in again_s3.stdout, again_s3.stdout
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 3
    for pid in state["processes"]:
        assert not Path(f"/proc/{pid['pid']}").exists() or "Z" in Path(f"/proc/{pid['pid']}/stat").read_text().split(")")[-1][:3]
    after = strata("status", "--data-dir", str(data), cwd=tmp_path)
    assert after.returncode == 1 and "Nothing is running" in after.stdout


def test_up_s3_runs_a_local_s3_server_as_remote_storage(tmp_path: Path) -> None:
    data = tmp_path / "s3stack"
    up = strata("up", "--data-dir", str(data), "--s3", "--free-ports", cwd=tmp_path)
    state = json.loads((data / "stack.json").read_text()) if (data / "stack.json").exists() else {"processes": []}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        addresses = {p["name"]: p["address"] for p in state["processes"]}
        assert list(addresses) == ["s3", "walservice", "pageserver", "proxy"]
        # No minio on PATH here: moto_server, and the output says plainly that it is in memory.
        assert "s3://strata/stack" in up.stdout and "IN MEMORY" in up.stdout
        endpoint = f"http://{addresses['s3']}"
        assert f"AWS_ENDPOINT_URL={endpoint}" in up.stdout
        for p in state["processes"][1:-1]:  # the storage services (not the S3 server, not the proxy)
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
        assert status.stdout.count("SERVING") == 4 and "IN MEMORY" in status.stdout  # s3, walservice, pageserver, proxy
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0 and down.stdout.count("stopped") == 4, down.stdout + down.stderr
    for p in state["processes"]:
        assert not _running(p["pid"]), p
    # moto_server's objects are gone with it: this data dir's state cannot start against a new, empty one.
    again = strata("up", "--data-dir", str(data), "--s3", "--free-ports", cwd=tmp_path)
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

    layout = local_stack.cluster_layout(tmp_path, 3, free_ports=True)
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


def test_a_busy_default_port_stops_up_before_anything_starts(tmp_path: Path) -> None:
    """The walservice and the pageserver are on 7676 and 6400 or `up` says why not (a client
    that names one names the other); --free-ports is the way out, and `up` prints each address."""
    data = tmp_path / "stack"
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 7676))
            holder.listen()
        except OSError:
            pass  # busy already: as good
        up = strata("up", "--data-dir", str(data), cwd=tmp_path)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "port 7676 of the walservice is busy" in up.stderr and "--free-ports" in up.stderr, up.stderr
    assert not (data / "stack.json").exists() and "Traceback" not in up.stderr


def test_a_closed_pipe_ends_a_command_quietly(tmp_path: Path) -> None:
    """`strata status | head -3`: the reader is gone before the output is written."""
    script = Path(sys.executable).parent / "strata"
    proc = subprocess.Popen([str(script), "status", "--data-dir", str(tmp_path / "none")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def test_a_benchmark_run_against_the_stack_leaves_nothing_and_up_says_it_checks_the_wal(tmp_path: Path) -> None:
    """The "Try:" benchmark deletes the timelines it made in the user's walservice; a later
    `up` says what the walservice does before it listens (it reads every segment)."""
    data = tmp_path / "stack"
    up = strata("up", "--data-dir", str(data), "--free-ports", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "checking" not in up.stdout, "a fresh walservice has nothing to check"
        addresses = {p["name"]: p["address"] for p in json.loads((data / "stack.json").read_text())["processes"]}
        with Client(pageserver=addresses["pageserver"], walservice=addresses["walservice"]) as c:
            tenant = c.create_tenant(page_size=512).tenant_id
            timeline = c.create_timeline(tenant_id=tenant).timeline_id
            c.append(tenant_id=tenant, timeline_id=timeline, records=[
                records_pb2.Record(image=records_pb2.PageImage(rel=7, blkno=0, page=bytes(512)))
            ])
        bench = subprocess.run(
            [sys.executable, "-m", "bench.wal_append", "--quick", "--no-postgres", "--target", addresses["walservice"],
             "--duration", "0.3", "--warmup", "0.1", "--writers", "1", "--batches", "1,16", "--work-dir", str(tmp_path)],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
        )
        assert bench.returncode == 0, bench.stdout + bench.stderr
        on_disk = sorted(p.relative_to(data / "walservice" / "timelines").as_posix() for p in (data / "walservice" / "timelines").glob("*/*"))
        assert on_disk == [f"{tenant}/{timeline}"], on_disk
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
        assert down.returncode == 0, down.stdout + down.stderr
        again = strata("up", "--data-dir", str(data), "--free-ports", cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "walservice: checking 1 timeline(s)" in again.stdout and "before it listens" in again.stdout, again.stdout
    finally:
        strata("down", "--data-dir", str(data), cwd=tmp_path)


def test_up_tls_serves_tls_everywhere_and_the_cli_finds_the_ca(tmp_path: Path) -> None:
    """`strata up --tls`: a local CA under DIR/tls (keys 0600), every component on
    TLS (HTTPS on the proxy), and the CLI commands reach it through stack.json."""
    data = tmp_path / "stack"
    up = strata("up", "--data-dir", str(data), "--free-ports", "--tls", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "TLS: every component serves TLS" in up.stdout and "https://" in up.stdout, up.stdout
        assert (data / "tls" / "server.key").stat().st_mode & 0o077 == 0
        state = json.loads((data / "stack.json").read_text())
        assert state["tls_ca"] == str((data / "tls" / "ca.pem").resolve())
        addresses = {p["name"]: p["address"] for p in state["processes"]}
        with Client(pageserver=addresses["pageserver"], retries=0, timeout=3) as plain:
            try:
                plain.list_tenants()
                raise AssertionError("a plaintext client was served by a --tls pageserver")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        status = strata("status", "--data-dir", str(data), cwd=tmp_path)
        assert status.returncode == 0 and status.stdout.count("SERVING") == 3, status.stdout + status.stderr
        created = strata("db", "create", "notes", "--data-dir", str(data), cwd=tmp_path)
        assert created.returncode == 0 and f"https://{addresses['proxy']}/db/notes/" in created.stdout, created.stdout + created.stderr
        sql = strata("sql", state["default_tenant"], json.loads(
            strata("db", "show", "notes", "--json", "--data-dir", str(data), cwd=tmp_path).stdout)["timeline_id"],
            "--data-dir", str(data), "-c", "CREATE TABLE t(x); INSERT INTO t VALUES (1); SELECT count(*) FROM t", cwd=tmp_path)
        assert sql.returncode == 0 and "1" in sql.stdout, sql.stdout + sql.stderr
    finally:
        strata("down", "--data-dir", str(data), cwd=tmp_path)
    # A later `up` of the data dir keeps TLS and its certificates.
    cert = (data / "tls" / "server.pem").read_bytes()
    again = strata("up", "--data-dir", str(data), "--free-ports", cwd=tmp_path)
    try:
        assert again.returncode == 0 and "TLS: every component serves TLS" in again.stdout, again.stdout + again.stderr
        assert (data / "tls" / "server.pem").read_bytes() == cert
    finally:
        strata("down", "--data-dir", str(data), cwd=tmp_path)
