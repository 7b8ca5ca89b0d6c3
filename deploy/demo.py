"""`strata demo`: the agent workflow on the running local stack, step by step.

1. load a small shop database (SQLite on Strata pages) into a new tenant's main timeline;
2. fork one branch per agent (20 by default), all at once;
3. each agent runs a destructive migration on its own branch, in parallel;
4. check that main is untouched;
5. one agent's mistake (a DELETE without WHERE) is undone by branching its timeline
   from the LSN before the mistake;
6. main moves on (a price change) and a time-travel query reads the past, by LSN and
   by time.

Every step checks what it claims, exactly: a database's state is its schema and
every row of every table (`snapshot`), and "untouched", "undone" and "the past"
mean equal to the state captured at that point. The demo exits 1 if a check fails,
and prints how long each step took. The demo's tenant is left in place for
`strata sql`.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import apsw

from compute_shim.client import Client
from compute_shim.sqlite import connect_sqlite
from deploy.cli_output import data_dir_flag, strata_command
from deploy.sql_shell import CLI_RETRIES, REPORTED, add_endpoint_args, describe_error, stack_endpoints
from strata import tls

LOAD_SQL = """
BEGIN;
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, city TEXT);
CREATE TABLE products(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                    product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, note TEXT);
CREATE INDEX orders_customer ON orders(customer_id);
INSERT INTO customers WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{customers})
  SELECT x, printf('customer %d', x), printf('c%d@example.com', x),
         CASE x % 4 WHEN 0 THEN 'Lisbon' WHEN 1 THEN 'Oslo' WHEN 2 THEN 'Quito' ELSE 'Kyoto' END FROM c;
INSERT INTO products WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<100)
  SELECT x, printf('product %d', x), 100 + (x * 37) % 5000 FROM c;
INSERT INTO orders WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{orders})
  SELECT x, 1 + (x * 7) % {customers}, 1 + (x * 13) % 100, 1 + x % 5, printf('order %d', x) FROM c;
COMMIT;
"""

# Destructive migrations, one per agent in turn: each leaves a database that differs from main.
MIGRATIONS: list[tuple[str, str]] = [
    ("drop the notes column", "ALTER TABLE orders DROP COLUMN note"),
    ("merge cities into a new table", "CREATE TABLE cities AS SELECT DISTINCT city FROM customers; ALTER TABLE customers DROP COLUMN city"),
    ("reprice everything in euros", "UPDATE products SET price_cents = price_cents * 92 / 100"),
    ("drop small orders", "DELETE FROM orders WHERE quantity = 1"),
    ("rename customers to accounts", "ALTER TABLE customers RENAME TO accounts"),
]
MISTAKE = "DELETE FROM orders"  # the bad agent forgets its WHERE clause
SUMMARY = (
    "SELECT (SELECT count(*) FROM orders), (SELECT sum(price_cents) FROM products),"
    " (SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name)),"
    " (SELECT count(*) FROM pragma_table_info('orders'))"
)


@dataclass(frozen=True)
class Snapshot:
    """A database's whole state: its schema and every table's rows in rowid order."""

    tables: dict[str, list[tuple[object, ...]]]

    @property
    def rows(self) -> int:
        return sum(len(rows) for name, rows in self.tables.items() if name != "sqlite_schema")

    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.tables.items())).encode()).hexdigest()[:12]

    def __str__(self) -> str:
        return f"{len(self.tables) - 1} tables, {self.rows} rows (sha256 {self.digest()})"


def snapshot(db: apsw.Connection) -> Snapshot:
    """`db`'s schema and all its rows, read in one transaction."""
    with db:  # one read transaction: one consistent state
        schema = [tuple(r) for r in db.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")]
        tables = {"sqlite_schema": schema}
        for kind, name, _, _ in schema:
            if kind == "table":
                quoted = '"' + str(name).replace('"', '""') + '"'
                tables[str(name)] = [tuple(r) for r in db.execute(f"SELECT * FROM {quoted} ORDER BY rowid")]
    return Snapshot(tables)


def describe(summary: tuple[object, ...]) -> str:
    """SUMMARY's row in words."""
    orders, prices, tables, columns = summary
    return f"{orders} orders, prices summing to {prices}, tables {tables}, orders has {columns} columns"


@dataclass
class Agent:
    index: int
    timeline: str
    migration: str
    before_mistake_lsn: int = 0
    before_mistake: Snapshot | None = None  # the bad agent's state just before its mistake
    summary: tuple[object, ...] = ()
    ms: float = 0.0  # how long its migration took


class Demo:
    def __init__(self, client: Client, agents: int, customers: int, orders: int, sql_args: str = "") -> None:
        self.client = client
        self.sql_args = sql_args  # what `strata sql` needs to find the same stack
        self.n_agents = agents
        self.customers = customers
        self.orders = orders
        self.failures: list[str] = []

    @contextmanager
    def step(self, what: str) -> Iterator[Callable[[str], None]]:
        started = time.monotonic()
        notes: list[str] = []
        yield notes.append
        ms = (time.monotonic() - started) * 1000
        print(f"[{ms:9.1f} ms] {what}")
        for note in notes:
            print(f"               {note}")

    def check(self, ok: bool, claim: str) -> None:
        if not ok:
            self.failures.append(claim)
            print(f"               CHECK FAILED: {claim}")

    def end_lsn(self, tenant: str, timeline: str) -> int:
        return self.client.status(tenant_id=tenant, timeline_id=timeline).flush_lsn

    def run(self) -> int:
        c = self.client
        total = time.monotonic()
        with self.step("created a tenant and its main timeline") as note:
            tenant = c.create_tenant(page_size=4096).tenant_id
            main = c.create_timeline(tenant_id=tenant).timeline_id
            note(f"tenant {tenant}, main {main}")

        with self.step(f"loaded the shop database into main ({self.customers} customers, {self.orders} orders)") as note:
            db = connect_sqlite(c, tenant, main)
            db.execute(LOAD_SQL.format(customers=self.customers, orders=self.orders))
            loaded_lsn = self.end_lsn(tenant, main)
            loaded_us = int(time.time() * 1_000_000)
            before = tuple(db.execute(SUMMARY).fetchone())
            loaded = snapshot(db)
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            note(f"{pages} pages of 4 KiB in one atomic append, at lsn {loaded_lsn}: {describe(before)}")
            note(f"main's state: {loaded}")

        with self.step(f"forked {self.n_agents} branches of main at lsn {loaded_lsn}, all at once") as note:
            with ThreadPoolExecutor(self.n_agents) as pool:
                timelines = list(pool.map(
                    lambda _: c.create_timeline(tenant_id=tenant, ancestor_timeline_id=main, ancestor_lsn=loaded_lsn).timeline_id,
                    range(self.n_agents),
                ))
            agents = [Agent(i, tl, MIGRATIONS[i % len(MIGRATIONS)][0]) for i, tl in enumerate(timelines)]
            note("no page was copied: a branch is its ancestor's timeline at an LSN plus its own WAL")

        bad = agents[min(7, len(agents) - 1)]
        with self.step(f"{self.n_agents} agents ran a destructive migration each, in parallel, on their own branch") as note:
            with ThreadPoolExecutor(self.n_agents) as pool:
                list(pool.map(lambda a: self.migrate(tenant, a, mistake=a is bad), agents))
            for kind, _ in MIGRATIONS:
                done = [a for a in agents if a.migration == kind]
                if done:
                    note(f"{len(done):2d} x {kind}: e.g. agent {done[0].index} now has {describe(done[0].summary)}")
            times = sorted(a.ms for a in agents)
            note(f"per agent: {times[0]:.1f} ms fastest, {statistics.median(times):.1f} ms median, {times[-1]:.1f} ms slowest")
            note(f"agent {bad.index} also ran `{MISTAKE}` (no WHERE clause): its orders are gone ({bad.summary[0]} left)")
            self.check(bad.summary[0] == 0, f"agent {bad.index}'s mistake deleted every order")

        with self.step("main is untouched") as note:
            fresh = connect_sqlite(c, tenant, main, lsn=0)
            after = tuple(fresh.execute(SUMMARY).fetchone())
            main_now = snapshot(fresh)
            integrity = fresh.execute("PRAGMA integrity_check").fetchone()[0]
            fresh.close()
            note(f"main still has {describe(after)}: {main_now} (integrity_check: {integrity})")
            self.check(main_now == loaded and integrity == "ok", "main is exactly as loaded, row for row")

        with self.step(f"undid agent {bad.index}'s mistake: branched its timeline at lsn {bad.before_mistake_lsn}, just before it") as note:
            undo = c.create_timeline(
                tenant_id=tenant, ancestor_timeline_id=bad.timeline, ancestor_lsn=bad.before_mistake_lsn
            ).timeline_id
            restored = connect_sqlite(c, tenant, undo)
            summary = tuple(restored.execute(SUMMARY).fetchone())
            undone = snapshot(restored)
            restored.close()
            note(f"timeline {undo} has {describe(summary)}: agent {bad.index}'s migration ({bad.migration}) kept, the orders back")
            note(f"its state: {undone}; agent {bad.index} just before the mistake: {bad.before_mistake}")
            self.check(undone == bad.before_mistake, f"the undo branch is exactly agent {bad.index}'s database before the mistake")
            self.check(summary[0] == before[0], "the undo branch has every order back")

        with self.step("main moved on (prices up 10%), then a time-travel query read the past") as note:
            db.execute("UPDATE products SET price_cents = price_cents * 110 / 100")
            now_sum = db.execute("SELECT sum(price_cents) FROM products").fetchone()[0]
            past = connect_sqlite(c, tenant, main, lsn=loaded_lsn)
            past_sum = past.execute("SELECT sum(price_cents) FROM products").fetchone()[0]
            past_state = snapshot(past)
            past.close()
            note(f"now: sum of prices {now_sum}; at lsn {loaded_lsn}: {past_sum}, {past_state}")
            self.check(past_state == loaded, f"main at lsn {loaded_lsn} is exactly the state just after the load")
            self.check(now_sum != past_sum, "the price change is in main now")
            by_time = c.get_lsn_by_timestamp(tenant_id=tenant, timeline_id=main, timestamp_us=loaded_us)
            note(f"by time: the last commit at or before the load finished is lsn {by_time.lsn} ({by_time.kind})")
            self.check(by_time.lsn == loaded_lsn, f"the time just after the load maps to the load's lsn {loaded_lsn}")
            db.close()

        print(f"\ndone in {time.monotonic() - total:.2f} s. Look around:")
        sql = f"{strata_command()} sql"  # run as this `strata` was, so that the lines work when pasted
        print(f"  {sql} {tenant} {main}{self.sql_args}")
        print(f"  {sql} {tenant} {main} --at {loaded_lsn}{self.sql_args}")
        print(f"  {sql} {tenant} {bad.timeline}{self.sql_args}          # agent {bad.index}, after its mistake")
        if self.failures:
            print(f"\n{len(self.failures)} check(s) failed: " + "; ".join(self.failures))
            return 1
        return 0

    def migrate(self, tenant: str, agent: Agent, mistake: bool) -> None:
        started = time.monotonic()
        db = connect_sqlite(self.client, tenant, agent.timeline)
        try:
            sql = dict(MIGRATIONS)[agent.migration]
            db.execute("BEGIN;" + sql + ";COMMIT;")
            if mistake:
                agent.before_mistake_lsn = self.end_lsn(tenant, agent.timeline)
                agent.before_mistake = snapshot(db)
                db.execute(MISTAKE)
            agent.summary = tuple(db.execute(SUMMARY).fetchone())
        finally:
            db.close()
            agent.ms = (time.monotonic() - started) * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strata demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20, help="branches, one per agent (default 20)")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=10000)
    add_endpoint_args(parser)
    args = parser.parse_args(argv)
    tls.use_client_ca(args.tls_ca)
    if args.agents < 1:
        parser.error("--agents must be at least 1")
    stack: tuple[str, str] | None = None
    try:
        stack = stack_endpoints(args.data_dir, args.pageserver, args.walservice)
        with Client(pageserver=stack[0], walservice=stack[1], retries=CLI_RETRIES) as client:
            sql_args = "".join(
                f" {flag} {value}"
                for flag, value in (("--pageserver", args.pageserver), ("--walservice", args.walservice))
                if value
            )
            sql_args = sql_args or data_dir_flag(args.data_dir)
            return Demo(client, args.agents, args.customers, args.orders, sql_args).run()
    except REPORTED as exc:
        print(f"strata demo: {describe_error(exc, stack)}", file=sys.stderr)
        return 1
