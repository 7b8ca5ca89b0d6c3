"""The official PyPI `libsql` client, in remote mode, against `strata proxy`."""

from __future__ import annotations

import libsql
import pytest

from tests.proxy.conftest import ProxyStack


@pytest.fixture
def url(stack: ProxyStack) -> str:
    stack.create_db("app")
    proxy = stack.proxy()
    return f"http://{proxy.address}/db/app/"


def test_execute_and_types_round_trip(url: str) -> None:
    # (int64 extremes are checked over raw HTTP: this client sends ints past 2**53 as floats)
    conn = libsql.connect(url)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, n)")
    values = (1234567890123, -1.25, "héllo\n'quoted'", bytes(range(256)), None)
    conn.execute("INSERT INTO t (i, f, s, b, n) VALUES (?, ?, ?, ?, ?)", values)
    conn.commit()
    rows = libsql.connect(url).execute("SELECT i, f, s, b, n FROM t").fetchall()
    assert rows == [values]


def test_interactive_transaction_commits_and_rolls_back(url: str) -> None:
    conn = libsql.connect(url)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("INSERT INTO t VALUES (2)")
    assert conn.in_transaction
    conn.rollback()
    conn.execute("INSERT INTO t VALUES (3)")
    conn.commit()
    assert libsql.connect(url).execute("SELECT x FROM t").fetchall() == [(3,)]


def test_script_runs_as_a_sequence(url: str) -> None:
    conn = libsql.connect(url)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
    assert conn.execute("SELECT sum(x) FROM t").fetchall() == [(3,)]


def test_errors_reach_the_client_and_change_nothing(url: str) -> None:
    conn = libsql.connect(url)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    with pytest.raises(Exception, match="UNIQUE|PRIMARYKEY|constraint"):
        conn.execute("INSERT INTO t VALUES (1)")
    conn.rollback()  # the client opened a transaction for the INSERT: it holds the database until it ends
    with pytest.raises(Exception, match="no such table"):
        libsql.connect(url).execute("SELECT * FROM missing")
    assert libsql.connect(url).execute("SELECT count(*) FROM t").fetchall() == [(1,)]
