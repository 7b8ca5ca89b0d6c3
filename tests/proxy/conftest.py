"""Fixtures for the proxy's tests: a walservice, a pageserver, a tenant with named
databases, and `strata proxy` in front of them, all real processes on loopback."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from compute_shim import Client
from tests.env import Component, StrataEnv


@dataclass
class ProxyStack:
    env: StrataEnv
    client: Client
    tenant: str
    walservice: Component
    pageserver: Component

    def create_db(self, name: str) -> str:
        return self.client.create_timeline(tenant_id=self.tenant, name=name).timeline_id

    def proxy(self, *extra: str, name: str = "proxy") -> Component:
        data_dir = self.env.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        comp = Component(
            name,
            [sys.executable, "-m", "proxy", "--pageserver", self.pageserver.address, "--walservice", self.walservice.address,
             "--tenant", self.tenant, "--pool-size", "1", *extra],
            data_dir,
            self.env.root / f"{name}.log",
        )
        comp.start()
        self.env.components.append(comp)
        return comp


@pytest.fixture
def stack(strata_env: StrataEnv) -> Iterator[ProxyStack]:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    client = Client(pageserver=ps.address, walservice=wal.address)
    tenant = client.create_tenant(page_size=4096).tenant_id
    try:
        yield ProxyStack(strata_env, client, tenant, wal, ps)
    finally:
        client.close()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of one HTTP request; errors are answers, not exceptions."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def pipeline(base: str, requests: list[dict[str, Any]], baton: str | None = None, **kw: Any) -> tuple[int, Any]:
    return http("POST", f"{base}v3/pipeline", {"baton": baton, "requests": requests}, **kw)


def stmt(sql: str, *args: Any) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql, "args": list(args)}}


Http = Callable[..., tuple[int, Any]]
