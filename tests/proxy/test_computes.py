"""The proxy's computes: single-flight wakes, idle suspension, LRU, SIGKILL, proxy restart."""

from __future__ import annotations

import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor

from tests.env import Component, wait_until
from tests.proxy.conftest import ProxyStack, http, pipeline, stmt


def metric(proxy: Component, name: str) -> float:
    _, text = http("GET", f"http://{proxy.address}/metrics")
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def computes(proxy: Component) -> list[dict]:
    return http("GET", f"http://{proxy.address}/computes")[1]["computes"]


def count(proxy: Component, db: str) -> int:
    _, body = pipeline(f"http://{proxy.address}/db/{db}/", [stmt("SELECT count(*) FROM t")])
    return int(body["results"][0]["response"]["result"]["rows"][0][0]["value"])


def test_concurrent_first_requests_share_one_wake(stack: ProxyStack) -> None:
    stack.create_db("app")
    proxy = stack.proxy()
    base = f"http://{proxy.address}/db/app/"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: pipeline(base, [stmt("SELECT 1")]), range(8)))
    assert all(status == 200 and body["results"][0]["type"] == "ok" for status, body in answers)
    assert metric(proxy, "strata_proxy_wakes_total") == 1
    assert len(computes(proxy)) == 1


def test_idle_compute_is_suspended_and_woken_again(stack: ProxyStack) -> None:
    stack.create_db("app")
    proxy = stack.proxy("--suspend-after", "1")
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)"), stmt("INSERT INTO t VALUES (1)")])
    pid = computes(proxy)[0]["pid"]
    wait_until("the idle compute is suspended", lambda: computes(proxy) == [])
    assert metric(proxy, 'strata_proxy_suspends_total{reason="idle"}') == 1
    wait_until("its process is gone", lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z")
    assert count(proxy, "app") == 1
    assert metric(proxy, "strata_proxy_wakes_total") == 2


def test_beyond_max_computes_the_least_recently_used_is_suspended(stack: ProxyStack) -> None:
    for name in ("a", "b", "c"):
        stack.create_db(name)
    proxy = stack.proxy("--max-computes", "2")
    for name in ("a", "b", "a", "c"):
        assert pipeline(f"http://{proxy.address}/db/{name}/", [stmt("SELECT 1")])[0] == 200
    assert sorted(c["database"] for c in computes(proxy)) == ["a", "c"]
    assert metric(proxy, 'strata_proxy_suspends_total{reason="lru"}') == 1


def test_compute_sigkilled_mid_transaction(stack: ProxyStack) -> None:
    stack.create_db("app")
    proxy = stack.proxy()
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)"), stmt("INSERT INTO t VALUES (1)")])
    _, open_txn = pipeline(base, [stmt("BEGIN"), stmt("INSERT INTO t VALUES (2)")])
    (compute,) = computes(proxy)
    assert compute["in_transaction"] is True
    os.kill(compute["pid"], signal.SIGKILL)
    status, body = pipeline(base, [stmt("COMMIT")], baton=open_txn["baton"])
    assert status == 200 and body["baton"] is None
    assert body["results"][0]["error"]["code"] == "COMPUTE_RESTARTED"
    assert count(proxy, "app") == 1  # a new compute; nothing of the killed transaction
    assert computes(proxy)[0]["pid"] != compute["pid"]


def test_proxy_restart_loses_no_committed_data(stack: ProxyStack) -> None:
    stack.create_db("app")
    proxy = stack.proxy()
    base = f"http://{proxy.address}/db/app/"
    pipeline(base, [stmt("CREATE TABLE t (x)"), *[stmt(f"INSERT INTO t VALUES ({i})") for i in range(20)]])
    assert proxy.stop() == 0
    proxy.start()
    assert count(proxy, "app") == 20
