"""The pageserver ingests from a 3-node walservice cluster (`--walservice A,B,C`)
and keeps ingesting when the node it streams from, the leader, is killed."""

from __future__ import annotations

from compute_shim import Client
from tests.env import StrataEnv
from tests.walservice.harness import TimelineKey, append_across_failover, image_record

PAGE = 8192


def page(tag: int) -> bytes:
    return bytes([tag % 251]) * PAGE


def test_ingest_continues_across_a_leader_kill(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3)
    ps = strata_env.pageserver(nodes)
    client = Client(pageserver=ps.address, walservice=",".join(n.address for n in nodes), timeout=20)
    tenant = client.create_tenant(page_size=PAGE).tenant_id
    timeline = client.create_timeline(tenant_id=tenant).timeline_id
    last = 0
    for i in range(1, 11):
        last = client.append(tenant_id=tenant, timeline_id=timeline, records=[image_record(1, i % 4, page(i))]).end_lsn
    assert client.get_page(tenant_id=tenant, timeline_id=timeline, rel=1, blkno=10 % 4, lsn=last).page == page(10)
    status = client.status(tenant_id=tenant, timeline_id=timeline)
    leader = nodes[status.leader_node_id - 1]
    leader.kill()
    # The client's first call may go out on its connection to the dead leader:
    # an ambiguous UNAVAILABLE, resolved by resending under the same condition.
    key = TimelineKey(tenant, timeline)
    for i in range(11, 21):
        last = append_across_failover(client, key, [image_record(1, i % 4, page(i))], last)
    for blkno in range(4):
        newest = max(i for i in range(1, 21) if i % 4 == blkno)
        got = client.get_page(tenant_id=tenant, timeline_id=timeline, rel=1, blkno=blkno, lsn=last)
        assert got.page == page(newest), f"blkno={blkno} at lsn={last}"
    assert client.status(tenant_id=tenant, timeline_id=timeline).term > status.term
    leader.start()
    info = client.get_timeline(tenant_id=tenant, timeline_id=timeline)
    assert info.last_record_lsn >= last
