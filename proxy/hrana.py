"""Hrana's shared structures (HRANA_3_SPEC.md, "Shared structures"), executed on an apsw connection.

What runs inside a compute process: `run_request` takes one stream request whose
SQL the proxy already resolved (`sql_id`s replaced by their text) and answers the
spec's `StreamResult`: `{"type": "ok", "response": ...}` or `{"type": "error",
"error": {"message", "code"}}`. Requests: `execute`, `batch` (with step
conditions), `sequence`, `describe`, `get_autocommit`.

Values, as the spec types them: `{"type": "null"}`, `{"type": "integer", "value":
"42"}` (a string: 64-bit integers do not survive JSON numbers),
`{"type": "float", "value": 1.5}`, `{"type": "text", "value": "..."}`,
`{"type": "blob", "base64": "..."}`.

Error codes: SQLite's, by extended name where SQLite gives one
(`SQLITE_CONSTRAINT_PRIMARYKEY`), as libsql-server sends them; the proxy's own:
`HRANA_PROTO_ERROR` (a malformed request), `ARGS_INVALID` (bindings that do not
fit the statement), `SQL_MANY_STATEMENTS` (several statements in one `execute`
or batch step). A statement that fails changes nothing beyond what SQLite's own
statement rollback leaves (an open transaction stays open, as in SQLite).

`describe` reports parameter names as apsw reports them, without SQLite's prefix
character; the prefix is put back as `:` for a name and `?` for a number, which
is what a client needs to bind them (the spec says the server guesses the prefix
for named arguments too).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import apsw
import apsw.ext

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
Json = dict[str, Any]


class RequestError(Exception):
    """A request the server cannot run as given: answered as the spec's Error."""

    def __init__(self, message: str, code: str = "HRANA_PROTO_ERROR") -> None:
        super().__init__(message)
        self.code = code

    def to_json(self) -> Json:
        return {"message": str(self), "code": self.code}


def error_json(exc: BaseException) -> Json:
    """The spec's Error object for an exception raised while running a request."""
    if isinstance(exc, RequestError):
        return exc.to_json()
    if isinstance(exc, apsw.Error):
        code = apsw.mapping_extended_result_codes.get(getattr(exc, "extendedresult", -1)) or apsw.mapping_result_codes.get(
            getattr(exc, "result", -1), "SQLITE_ERROR"
        )
        return {"message": f"{code}: {exc}", "code": code}
    return {"message": f"{type(exc).__name__}: {exc}", "code": "SERVER_ERROR"}


def encode_value(value: Any) -> Json:
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"no Hrana value for {type(value).__name__}")


def decode_value(value: Any) -> Any:
    if not isinstance(value, dict):
        raise RequestError(f"a value must be an object with a type, got {value!r:.80}")
    kind = value.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        raw = value.get("value")
        try:
            number = int(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
        except ValueError:
            number = None
        if number is None or not INT64_MIN <= number <= INT64_MAX:
            raise RequestError(f"integer value must be a 64-bit signed integer as a string, got {raw!r:.80}")
        return number
    if kind == "float":
        raw = value.get("value")
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise RequestError(f"float value must be a number, got {raw!r:.80}")
        try:
            return float(raw)
        except ValueError:
            raise RequestError(f"float value must be a number, got {raw!r:.80}") from None
    if kind == "text":
        raw = value.get("value")
        if not isinstance(raw, str):
            raise RequestError("text value must be a string")
        return raw
    if kind == "blob":
        raw = value.get("base64")
        if not isinstance(raw, str):
            raise RequestError("blob value must carry base64")
        try:
            return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except ValueError:
            raise RequestError("blob value's base64 does not decode") from None
    raise RequestError(f"unknown value type {kind!r:.40}; expected null, integer, float, text or blob")


def _bindings(stmt: Json, info: apsw.ext.QueryDetails) -> tuple[Any, ...] | dict[str, Any]:
    args = stmt.get("args") or []
    named = stmt.get("named_args") or []
    if not isinstance(args, list) or not isinstance(named, list):
        raise RequestError("args and named_args must be arrays")
    positional = [decode_value(a) for a in args]
    if not named:
        if len(positional) != info.bindings_count:
            raise RequestError(
                f"the statement takes {info.bindings_count} argument(s), {len(positional)} given", "ARGS_INVALID"
            )
        return tuple(positional)
    by_name: dict[str, Any] = {}
    for i, name in enumerate(info.bindings_names):
        if i < len(positional):
            by_name[name if name is not None else str(i + 1)] = positional[i]
    for arg in named:
        if not isinstance(arg, dict) or not isinstance(arg.get("name"), str):
            raise RequestError("each named_args entry needs a name and a value")
        by_name[arg["name"].lstrip(":@$")] = decode_value(arg.get("value"))
    wanted = {n for n in info.bindings_names if n is not None}
    if None in info.bindings_names or wanted != set(by_name):
        missing, extra = sorted(wanted - set(by_name)), sorted(set(by_name) - wanted)
        raise RequestError(f"named arguments do not fit the statement: missing {missing}, unexpected {extra}", "ARGS_INVALID")
    return by_name


def _one_statement(conn: apsw.Connection, sql: Any) -> apsw.ext.QueryDetails:
    if not isinstance(sql, str):
        raise RequestError("a statement needs its sql text (or a stored sql_id)")
    info = apsw.ext.query_info(conn, sql)
    if info.query_remaining and info.query_remaining.strip(" \t\r\n;"):
        raise RequestError(
            "an execute (or batch step) takes exactly one statement; send several as batch steps or a sequence",
            "SQL_MANY_STATEMENTS",
        )
    if info.first_query is None or not info.first_query.strip(" \t\r\n;"):
        raise RequestError("the sql text holds no statement", "SQL_NO_STATEMENT")
    return info


def execute_stmt(conn: apsw.Connection, stmt: Any) -> Json:
    """One statement's StmtResult."""
    if not isinstance(stmt, dict):
        raise RequestError("stmt must be an object")
    started = time.perf_counter()
    info = _one_statement(conn, stmt.get("sql"))
    bindings = _bindings(stmt, info)
    changes_before = conn.total_changes()
    rows = [[encode_value(v) for v in row] for row in conn.cursor().execute(info.first_query, bindings)]
    changed = conn.total_changes() - changes_before
    affected = 0 if info.is_readonly else conn.changes() if changed else 0
    if stmt.get("want_rows", True) is False:
        rows_out: list[list[Json]] = []
    else:
        rows_out = rows
    return {
        "cols": [{"name": name, "decltype": decltype} for name, decltype in info.description or ()],
        "rows": rows_out,
        "affected_row_count": affected,
        "last_insert_rowid": str(conn.last_insert_rowid()),
        "rows_read": len(rows),
        "rows_written": affected,
        "query_duration_ms": (time.perf_counter() - started) * 1000.0,
    }


def _condition(cond: Any, outcomes: list[bool | None], conn: apsw.Connection) -> bool:
    """A BatchCond; outcomes[i] is True (ok), False (error) or None (skipped / not yet run)."""
    if not isinstance(cond, dict):
        raise RequestError("a batch condition must be an object")
    kind = cond.get("type")
    if kind in ("ok", "error"):
        step = cond.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < len(outcomes):
            raise RequestError(f"condition step {step!r:.20} does not name an earlier step")
        return outcomes[step] is (kind == "ok")
    if kind == "not":
        return not _condition(cond.get("cond"), outcomes, conn)
    if kind in ("and", "or"):
        conds = cond.get("conds")
        if not isinstance(conds, list):
            raise RequestError(f"an {kind!r} condition needs conds")
        results = [_condition(c, outcomes, conn) for c in conds]
        return all(results) if kind == "and" else any(results)
    if kind == "is_autocommit":
        return bool(conn.get_autocommit())
    raise RequestError(f"unknown condition type {kind!r:.40}")


def execute_batch(conn: apsw.Connection, batch: Any) -> Json:
    """A BatchResult: each step runs if its condition holds."""
    if not isinstance(batch, dict) or not isinstance(batch.get("steps"), list):
        raise RequestError("batch must be an object with steps")
    outcomes: list[bool | None] = []
    results: list[Json | None] = []
    errors: list[Json | None] = []
    for step in batch["steps"]:
        if not isinstance(step, dict):
            raise RequestError("each batch step must be an object")
        cond = step.get("condition")
        if cond is not None and not _condition(cond, outcomes, conn):
            outcomes.append(None)
            results.append(None)
            errors.append(None)
            continue
        try:
            results.append(execute_stmt(conn, step.get("stmt")))
            errors.append(None)
            outcomes.append(True)
        except (apsw.Error, RequestError) as exc:
            results.append(None)
            errors.append(error_json(exc))
            outcomes.append(False)
    return {"step_results": results, "step_errors": errors}


def execute_sequence(conn: apsw.Connection, sql: Any) -> None:
    if not isinstance(sql, str):
        raise RequestError("sequence needs its sql text (or a stored sql_id)")
    for _ in conn.cursor().execute(sql):
        pass


def describe(conn: apsw.Connection, sql: Any) -> Json:
    if not isinstance(sql, str):
        raise RequestError("describe needs its sql text (or a stored sql_id)")
    info = apsw.ext.query_info(conn, sql)
    params = [
        {"name": None if name is None else ("?" if name.isdigit() else ":") + name} for name in info.bindings_names
    ]
    return {
        "params": params,
        "cols": [{"name": name, "decltype": decltype} for name, decltype in info.description or ()],
        "is_explain": bool(info.is_explain),
        "is_readonly": bool(info.is_readonly),
    }


def run_request(conn: apsw.Connection, request: Json) -> Json:
    """One StreamResult for a stream request the proxy forwarded."""
    kind = request.get("type")
    try:
        if kind == "execute":
            response: Json = {"type": "execute", "result": execute_stmt(conn, request.get("stmt"))}
        elif kind == "batch":
            response = {"type": "batch", "result": execute_batch(conn, request.get("batch"))}
        elif kind == "sequence":
            execute_sequence(conn, request.get("sql"))
            response = {"type": "sequence"}
        elif kind == "describe":
            response = {"type": "describe", "result": describe(conn, request.get("sql"))}
        elif kind == "get_autocommit":
            response = {"type": "get_autocommit", "is_autocommit": bool(conn.get_autocommit())}
        else:
            raise RequestError(f"unknown request type {kind!r:.40}")
    except (apsw.Error, RequestError, ValueError, TypeError, OverflowError) as exc:
        return {"type": "error", "error": error_json(exc)}
    return {"type": "ok", "response": response}
