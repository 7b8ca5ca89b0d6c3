"""The proxy: named databases over libSQL's remote protocol (Hrana over HTTP).

`strata proxy` serves `/v2/pipeline`, `/v3/pipeline`, `/v3/cursor` and friends as
libsql-server does (docs: the libsql repository's HRANA_3_SPEC.md and
HTTP_V2_SPEC.md), so the official libSQL clients work unmodified. Each database
is served by at most one compute: a separate OS process running SQLite on Strata
pages (`compute_shim.connect_sqlite`), woken by the first request and suspended
when idle.

Modules, one per role:
- `hrana`: the protocol's values, statements, batches and errors, executed on an
  apsw connection (runs inside the compute process);
- `frames`: the framed pipe protocol between the proxy and a compute;
- `compute_process`: the compute process itself (`python -m proxy.compute_process`);
- `computes`: the proxy's side: the pool, wakes, idle suspension, LRU;
- `batons`: signed, sequenced stream batons;
- `streams`: Hrana streams and the pipeline of one HTTP request;
- `server`: the aiohttp application (routes, database selection);
- `metrics`: the Prometheus metrics;
- `__main__`: the `strata proxy` command line.
"""
