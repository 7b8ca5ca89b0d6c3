from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from compute_shim import Client
from tests.env import Component, StrataEnv


@dataclass
class Stack:
    env: StrataEnv
    walservice: Component
    pageserver: Component
    client: Client
    tenant: str

    def end_lsn(self, timeline: str) -> int:
        return self.client.status(tenant_id=self.tenant, timeline_id=timeline).flush_lsn

    def new_timeline(self, **fields: object) -> str:
        return self.client.create_timeline(tenant_id=self.tenant, **fields).timeline_id


@pytest.fixture
def stack(strata_env: StrataEnv) -> Iterator[Stack]:
    """A walservice and a pageserver, a client, and a tenant of 4 KiB pages."""
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal)
    client = Client(pageserver=ps.address, walservice=wal.address)
    tenant = client.create_tenant(page_size=4096).tenant_id
    try:
        yield Stack(strata_env, wal, ps, client, tenant)
    finally:
        client.close()
