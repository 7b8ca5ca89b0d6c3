"""`strata proxy` over raw HTTP: every endpoint, every request type, and bad input."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.env import Component
from tests.proxy.conftest import ProxyStack, http, pipeline, stmt


@pytest.fixture
def proxy(stack: ProxyStack) -> Component:
    stack.create_db("app")
    return stack.proxy()


def ok(body: dict, i: int = 0) -> dict:
    result = body["results"][i]
    assert result["type"] == "ok", result
    return result["response"]


def rows(body: dict, i: int = 0) -> list:
    return ok(body, i)["result"]["rows"]


def test_info_endpoints(proxy: Component) -> None:
    base = f"http://{proxy.address}"
    for path in ("/health", "/v2", "/v3", "/db/app/v2", "/db/app/v3"):
        assert http("GET", base + path)[0] == 200, path
    status, text = http("GET", base + "/version")
    assert status == 200 and "strata-proxy" in text


def test_values_results_and_v2(proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    blob = bytes(range(256))
    status, body = http("POST", base + "v2/pipeline", {"baton": None, "requests": [
        stmt("CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, n)"),
        {"type": "execute", "stmt": {"sql": "INSERT INTO t (i, f, s, b, n) VALUES (?, ?, ?, ?, ?)", "args": [
            {"type": "integer", "value": str(-(2**63))}, {"type": "float", "value": 0.5}, {"type": "text", "value": "ü\n"},
            {"type": "blob", "base64": base64.b64encode(blob).decode()}, {"type": "null"}]}},
        {"type": "execute", "stmt": {"sql": "INSERT INTO t (i) VALUES (:v)", "named_args": [
            {"name": ":v", "value": {"type": "integer", "value": str(2**63 - 1)}}]}},
        stmt("SELECT i, f, s, b, n FROM t ORDER BY id"),
        {"type": "close"},
    ]})
    assert status == 200 and body["baton"] is None
    insert = ok(body, 1)["result"]
    assert insert["affected_row_count"] == 1 and insert["last_insert_rowid"] == "1"
    result = ok(body, 3)["result"]
    assert [c["decltype"] for c in result["cols"]] == ["INTEGER", "REAL", "TEXT", "BLOB", None]
    assert result["rows"] == [
        [{"type": "integer", "value": str(-(2**63))}, {"type": "float", "value": 0.5}, {"type": "text", "value": "ü\n"},
         {"type": "blob", "base64": base64.b64encode(blob).decode()}, {"type": "null"}],
        [{"type": "integer", "value": str(2**63 - 1)}, {"type": "null"}, {"type": "null"}, {"type": "null"}, {"type": "null"}],
    ]


def test_batch_conditions_sequence_describe_stored_sql_autocommit(proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    status, body = pipeline(base, [
        {"type": "sequence", "sql": "CREATE TABLE t (x INTEGER UNIQUE); INSERT INTO t VALUES (1);"},
        {"type": "batch", "batch": {"steps": [
            {"stmt": {"sql": "BEGIN"}},
            {"stmt": {"sql": "INSERT INTO t VALUES (1)"}, "condition": {"type": "ok", "step": 0}},  # fails: unique
            {"stmt": {"sql": "INSERT INTO t VALUES (2)"}, "condition": {"type": "ok", "step": 1}},  # skipped
            {"stmt": {"sql": "ROLLBACK"}, "condition": {"type": "error", "step": 1}},
            {"stmt": {"sql": "SELECT 1"}, "condition": {"type": "and", "conds": [
                {"type": "is_autocommit"}, {"type": "not", "cond": {"type": "ok", "step": 2}}]}},
        ]}},
        {"type": "store_sql", "sql_id": 7, "sql": "SELECT x FROM t WHERE x = ?"},
        {"type": "execute", "stmt": {"sql_id": 7, "args": [{"type": "integer", "value": "1"}]}},
        {"type": "describe", "sql_id": 7},
        {"type": "close_sql", "sql_id": 7},
        {"type": "execute", "stmt": {"sql_id": 7}},
        {"type": "get_autocommit"},
    ])
    assert status == 200
    ok(body, 0)
    batch = ok(body, 1)["result"]
    assert batch["step_errors"][1]["code"].startswith("SQLITE_CONSTRAINT")
    assert batch["step_results"][2] is None and batch["step_errors"][2] is None
    assert batch["step_results"][3] is not None and batch["step_results"][4]["rows"] == [[{"type": "integer", "value": "1"}]]
    assert rows(body, 3) == [[{"type": "integer", "value": "1"}]]
    described = ok(body, 4)["result"]
    assert described["is_readonly"] is True and described["params"] == [{"name": None}]
    assert described["cols"] == [{"name": "x", "decltype": "INTEGER"}]
    assert body["results"][6]["type"] == "error" and body["results"][6]["error"]["code"] == "SQL_NOT_FOUND"
    assert ok(body, 7)["is_autocommit"] is True


def test_cursor_streams_the_batch(proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    status, text = http("POST", base + "v3/cursor", {"baton": None, "batch": {"steps": [
        {"stmt": {"sql": "CREATE TABLE t (x)"}},
        {"stmt": {"sql": "INSERT INTO t VALUES (1), (2)"}},
        {"stmt": {"sql": "SELECT x FROM t"}},
        {"stmt": {"sql": "SELECT * FROM nope"}},
    ]}})
    assert status == 200
    import json

    lines = [json.loads(line) for line in text.splitlines()]
    assert "baton" in lines[0]
    kinds = [line["type"] for line in lines[1:]]
    assert kinds == ["step_begin", "step_end", "step_begin", "step_end", "step_begin", "row", "row", "step_end", "step_error"]
    assert lines[2]["affected_row_count"] == 0 and lines[4]["affected_row_count"] == 2


def test_interactive_transaction_via_baton(proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    assert pipeline(base, [stmt("CREATE TABLE t (x)")])[0] == 200
    _, first = pipeline(base, [stmt("BEGIN"), stmt("INSERT INTO t VALUES (1)")])
    baton = first["baton"]
    _, autocommit = pipeline(base, [{"type": "get_autocommit"}], baton=baton)
    assert ok(autocommit)["is_autocommit"] is False
    # The old baton was used: refused, and the stream goes on with the new one.
    assert pipeline(base, [stmt("SELECT 1")], baton=baton)[1]["code"] == "BATON_REUSED"
    forged = autocommit["baton"][:-2] + ("AA" if not autocommit["baton"].endswith("AA") else "BB")
    status, refused = pipeline(base, [stmt("COMMIT")], baton=forged)
    assert status == 400 and refused["code"] == "BATON_INVALID"
    _, done = pipeline(base, [stmt("COMMIT"), {"type": "close"}], baton=autocommit["baton"])
    assert done["baton"] is None and ok(done)
    assert rows(pipeline(base, [stmt("SELECT x FROM t")])[1]) == [[{"type": "integer", "value": "1"}]]


def test_another_stream_waits_for_an_open_transaction(proxy: Component) -> None:
    """A stream's open transaction holds the database's connection: another stream's
    request waits (it is not run inside that transaction), goes on once the transaction
    commits, and is answered SQLITE_BUSY if it is still held after the 5 s wait."""
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)")])
    _, first = pipeline(base, [stmt("BEGIN"), stmt("INSERT INTO t VALUES (1)")])
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(pipeline, base, [stmt("SELECT count(*) FROM t"), {"type": "close"}])
        time.sleep(1.0)
        assert not waiting.done()  # held behind the open transaction
        _, done = pipeline(base, [stmt("COMMIT"), {"type": "close"}], baton=first["baton"])
        assert ok(done)
        status, body = waiting.result(timeout=30)
    assert status == 200 and rows(body) == [[{"type": "integer", "value": "1"}]]  # it saw the commit, not the open txn

    _, held = pipeline(base, [stmt("BEGIN"), stmt("INSERT INTO t VALUES (2)")])
    started = time.monotonic()
    _, busy = pipeline(base, [stmt("SELECT count(*) FROM t")])
    assert busy["results"][0]["error"]["code"] == "SQLITE_BUSY" and time.monotonic() - started >= 4.5
    pipeline(base, [stmt("ROLLBACK"), {"type": "close"}], baton=held["baton"])
    assert rows(pipeline(base, [stmt("SELECT count(*) FROM t")])[1]) == [[{"type": "integer", "value": "1"}]]


def test_an_idle_stream_expires_and_its_transaction_rolls_back(proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)")])
    _, first = pipeline(base, [stmt("BEGIN"), stmt("INSERT INTO t VALUES (1)")])
    time.sleep(12)  # the stream idle timeout is 10 s, like libsql-server's
    status, body = pipeline(base, [stmt("COMMIT")], baton=first["baton"])
    assert status == 400 and body["code"] == "STREAM_EXPIRED" and "expired" in body["message"]
    assert rows(pipeline(base, [stmt("SELECT count(*) FROM t")])[1]) == [[{"type": "integer", "value": "0"}]]


def test_database_by_header_host_and_unknown(stack: ProxyStack, proxy: Component) -> None:
    stack.create_db("other")
    base = f"http://{proxy.address}/"
    assert pipeline(base, [stmt("CREATE TABLE only_other (x)")], headers={"x-namespace": "other"})[0] == 200
    status, body = pipeline(base, [stmt("SELECT * FROM only_other")], headers={"Host": "other.localhost"})
    assert status == 200 and rows(body) == []
    status, body = pipeline(f"http://{proxy.address}/db/app/", [stmt("SELECT * FROM only_other")])
    assert body["results"][0]["error"]["message"].find("no such table") >= 0
    status, body = pipeline(f"http://{proxy.address}/db/missing/", [stmt("SELECT 1")])
    assert status == 404 and body["code"] == "DATABASE_NOT_FOUND" and "missing" in body["message"]
    status, body = pipeline(base, [stmt("SELECT 1")])
    assert status == 400 and body["code"] == "NO_DATABASE"
    status, body = pipeline(f"http://{proxy.address}/db/Bad_Name/", [stmt("SELECT 1")])
    assert status == 400 and body["code"] == "BAD_DATABASE_NAME"


def test_bad_input_is_refused_and_changes_nothing(proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)")])
    status, body = http("POST", base + "v3/pipeline", raw=b"{not json")
    assert status == 400 and body["code"] == "HRANA_PROTO_ERROR"
    status, body = pipeline(base, [{"type": "frobnicate"}, stmt("INSERT INTO t VALUES (1); DROP TABLE t")])
    assert status == 200
    assert body["results"][0]["error"]["code"] == "HRANA_PROTO_ERROR"
    assert body["results"][1]["error"]["code"] == "SQL_MANY_STATEMENTS"
    status, body = pipeline(base, [{"type": "execute", "stmt": {"sql": "INSERT INTO t VALUES (?)", "args": [
        {"type": "integer", "value": "99999999999999999999"}]}}])
    assert body["results"][0]["error"]["code"] == "HRANA_PROTO_ERROR"
    status, body = http("POST", base + "v3/pipeline", raw=b'{"baton": null, "requests": [' + b" " * (11 << 20) + b"]}")
    assert status == 413 and body["code"] == "BODY_TOO_LARGE"
    assert rows(pipeline(base, [stmt("SELECT count(*) FROM t")])[1]) == [[{"type": "integer", "value": "0"}]]


def test_time_travel_path_reads_an_earlier_commit(stack: ProxyStack, proxy: Component) -> None:
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)"), stmt("INSERT INTO t VALUES (1)")])
    timeline = stack.client.get_timeline_by_name(tenant_id=stack.tenant, name="app").timeline_id
    lsn = stack.client.status(tenant_id=stack.tenant, timeline_id=timeline).flush_lsn
    pipeline(base, [stmt("INSERT INTO t VALUES (2)")])
    past = f"http://{proxy.address}/db/app@{lsn}/"
    assert rows(pipeline(past, [stmt("SELECT x FROM t")])[1]) == [[{"type": "integer", "value": "1"}]]
    _, body = pipeline(past, [stmt("INSERT INTO t VALUES (3)")])
    assert body["results"][0]["type"] == "error" and "readonly" in body["results"][0]["error"]["message"].lower()
    assert len(rows(pipeline(base, [stmt("SELECT x FROM t")])[1])) == 2
