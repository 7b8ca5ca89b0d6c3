"""`strata up` runs the proxy for the stack's default tenant; `strata status` lists its computes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import libsql
import pytest

from tests.deploy.test_local_stack import strata


def test_up_serves_databases_by_name_and_status_lists_the_computes(tmp_path: Path) -> None:
    data = tmp_path / "stack"
    up = strata("up", "--data-dir", str(data), "--free-ports", "--suspend-after", "60", "--max-computes", "4", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((data / "stack.json").read_text())
        proxy = next(p for p in state["processes"] if p["name"] == "proxy")
        assert f"http://{proxy['address']}/db/NAME/" in up.stdout
        assert state["default_tenant"] in proxy["argv"] and "--max-computes" in proxy["argv"]
        created = strata("db", "create", "notes", "--data-dir", str(data), cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        conn = libsql.connect(f"http://{proxy['address']}/db/notes/")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (42)")
        conn.commit()
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
        status = strata("status", "--data-dir", str(data), "--json", cwd=tmp_path)
        body = json.loads(status.stdout)
        assert status.returncode == 0 and [c["database"] for c in body["computes"]] == ["notes"]
        assert "1 compute(s) running" in strata("status", "--data-dir", str(data), cwd=tmp_path).stdout
    finally:
        down = strata("down", "--data-dir", str(data), cwd=tmp_path)
    assert down.returncode == 0 and "proxy" in down.stdout


def _bound(port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
        return s
    except OSError:
        s.close()
        return None


def test_up_stops_on_a_busy_proxy_port(tmp_path: Path) -> None:
    free = [_bound(p) for p in (7676, 6400)]
    for s in free:
        if s is not None:
            s.close()
    if None in free:
        pytest.skip("ports 7676/6400 are in use on this machine")
    holder = _bound(8080)
    if holder is None:
        pytest.skip("port 8080 is in use on this machine")
    try:
        up = strata("up", "--data-dir", str(tmp_path / "stack"), cwd=tmp_path)
    finally:
        holder.close()
    assert up.returncode != 0 and "port 8080 of the proxy is busy" in up.stderr, up.stdout + up.stderr
    assert not (tmp_path / "stack" / "stack.json").exists()
