"""A deterministic SQL workload (tables, indexes, bulk inserts, updates, deletes,
ALTER TABLE, VACUUM) and the queries that check it, shared by
tests/compute_shim/test_sqlite.py and bench/sqlite.py.

Every value is a function of row numbers (no random()), so a local SQLite file and
a Strata timeline given the same steps must answer every query identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import apsw

Answers = dict[str, list[tuple[object, ...]]]


@dataclass(frozen=True)
class Step:
    name: str
    sql: str  # one transaction (a script; the runner wraps it in BEGIN/COMMIT)


def steps(users: int) -> list[Step]:
    """The workload for `users` users (and 4 orders each)."""
    orders = users * 4
    return [
        Step(
            "create",
            "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, score REAL);"
            "CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, amount REAL, note TEXT);"
            "CREATE UNIQUE INDEX users_email ON users(email);"
            "CREATE INDEX orders_user ON orders(user_id);",
        ),
        Step(
            "bulk_insert",
            f"INSERT INTO users(id, name, email, score) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{users}) "
            "SELECT x, printf('user %05d', x), printf('u%05d@example.com', x), (x * 7919) % 1000 FROM c;"
            f"INSERT INTO orders(id, user_id, amount, note) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{orders}) "
            f"SELECT x, 1 + (x * 31) % {users}, (x * 104729) % 500 / 3.0, printf('order %d: %s', x, substr(hex(x * 2654435761), 1, 40)) FROM c;",
        ),
        Step("update", "UPDATE orders SET amount = amount * 1.1, note = note || ' (repriced)' WHERE user_id % 5 = 0;"),
        Step("delete", "DELETE FROM orders WHERE amount < 50;"),
        Step(
            "alter",
            "ALTER TABLE users ADD COLUMN tier TEXT NOT NULL DEFAULT 'free';"
            "UPDATE users SET tier = 'gold' WHERE score > 900;"
            "ALTER TABLE users RENAME COLUMN name TO full_name;",
        ),
        Step("drop_and_vacuum", "DROP INDEX orders_user; DELETE FROM users WHERE id % 2 = 0; DELETE FROM orders WHERE user_id % 2 = 0;"),
    ]


VACUUM_AFTER = "drop_and_vacuum"  # VACUUM cannot run inside a transaction: the runner runs it after this step

QUERIES: dict[str, str] = {
    "tables": "SELECT name, sql FROM sqlite_schema ORDER BY name",
    "users": "SELECT count(*), sum(score), min(id), max(id) FROM users",
    "orders": "SELECT count(*), round(sum(amount), 6), count(DISTINCT user_id) FROM orders",
    "by_user": "SELECT user_id, count(*), round(sum(amount), 6) FROM orders GROUP BY user_id ORDER BY 3 DESC, 1 LIMIT 20",
    "join": "SELECT u.email, count(o.id) FROM users u JOIN orders o ON o.user_id = u.id WHERE u.score > 950 GROUP BY u.id ORDER BY u.id LIMIT 50",
    "lookup": "SELECT * FROM users WHERE email IN ('u00001@example.com', 'u00007@example.com', 'u00399@example.com')",
    "notes": "SELECT id, note FROM orders WHERE id % 397 = 0 ORDER BY id",
}
TABLE_QUERIES = {"users", "orders", "by_user", "join", "lookup", "notes"}  # need the tables to exist


def answers(db: apsw.Connection) -> Answers:
    """Every query's rows (queries on tables that do not exist yet are skipped)."""
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    out: Answers = {}
    for key, sql in QUERIES.items():
        if key in TABLE_QUERIES and not {"users", "orders"} <= names:
            continue
        out[key] = [tuple(r) for r in db.execute(sql)]
    return out


def run_step(db: apsw.Connection, step: Step) -> None:
    db.execute("BEGIN;" + step.sql + "COMMIT;")
    if step.name == VACUUM_AFTER:
        db.execute("VACUUM")


def run_workload(db: apsw.Connection, users: int, after_step: Callable[[Step], None] | None = None) -> None:
    for step in steps(users):
        run_step(db, step)
        if after_step is not None:
            after_step(step)
