"""Elections without a client write (docs/design/0005-replication.md, "Elections
without writes"): a timeline whose log extends past its known commit_lsn, or that
a reader waits on, gets a leader and its commit_lsn advanced once a majority is
up, so acknowledged WAL is streamed with no new append.

Real 3-node clusters on loopback; every check reads what a pageserver would
(Stream, Status) and sends no Append after the restart."""

from __future__ import annotations

import grpc
import pytest

from strata.v1 import wal_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv, wait_until
from tests.walservice.harness import TimelineKey, read_stream, tagged_batch
from tests.walservice.test_replication import assert_one_leader_per_term, cluster_client, create, node_status

# A majority restarted: one lease of listening, a campaign delay of up to one
# lease, a vote round; generous for a loaded machine.
ELECTED_WITHIN_S = 20.0


def committed_everywhere(nodes: list[Component], key: TimelineKey, lsn: int) -> bool:
    try:
        return all(node_status(n, key).commit_lsn >= lsn for n in nodes)
    except grpc.RpcError:
        return False


def assert_served_with_no_write(nodes: list[Component], key: TimelineKey, acked: list[wal_pb2.AppendResponse]) -> None:
    """commit_lsn reaches the last acknowledged append on every node, every node
    streams exactly the acknowledged records, and no term had two leaders."""
    wait_until(
        "commit_lsn on every node to reach the last acknowledged append",
        lambda: committed_everywhere(nodes, key, acked[-1].end_lsn),
        ELECTED_WITHIN_S,
    )
    want = [lsn for r in acked for lsn in r.record_lsns]
    for node in nodes:
        got = read_stream(wal_pb2_grpc.WalServiceStub(node.channel()), key, acked[-1].end_lsn)
        assert [r.lsn for r in got] == want, f"{node.name} streamed other records"
    assert_one_leader_per_term(nodes)


def test_a_restarted_cluster_streams_acknowledged_wal_with_no_new_write(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    acked = [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 3)) for b in range(1, 61)]
    client.close()
    for node in nodes:
        node.kill()
    for node in nodes:
        node.start()
    # No append from here on.
    assert_served_with_no_write(nodes, key, acked)
    assert "event=election_started" in "".join(n.new_log_text() for n in nodes)


def test_a_majority_coming_back_streams_what_was_acknowledged(strata_env: StrataEnv) -> None:
    """The leader loses both followers while an append is in flight (written on
    it alone, never acknowledged: it steps down); the followers come back and
    nobody writes again. A leader must still be elected and the acknowledged
    appends served on every node."""
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    acked = [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 2)) for b in range(1, 21)]
    leader_id = node_status(nodes[0], key).leader_node_id
    assert leader_id, "no leader after 20 acknowledged appends"
    leader = nodes[leader_id - 1]
    followers = [n for n in nodes if n is not leader]
    for node in followers:
        node.kill()
    with pytest.raises(grpc.RpcError) as info:
        cluster_client([leader], timeout=10.0).append(
            tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(2, 1, 2)
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    status = node_status(leader, key)
    assert status.flush_lsn > status.commit_lsn, "the unacknowledged batch should be on the old leader's disk alone"
    for node in followers:
        node.start()
    assert_served_with_no_write(nodes, key, acked)


def test_a_lone_node_does_not_raise_terms_in_vain(strata_env: StrataEnv) -> None:
    """A node that cannot reach a majority never runs (the probe comes first),
    so its term, and its control file, stay put while it waits."""
    nodes = strata_env.walservice_cluster(3)
    client = cluster_client(nodes)
    key = create(client)
    client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, 1, 2))
    client.close()
    for node in nodes:
        node.kill()
    lone = nodes[0]
    lone.start()
    # A reader waiting on it wants a leader; with no majority reachable none is elected.
    stub = wal_pb2_grpc.WalServiceStub(lone.channel())
    call = stub.Stream(key.stream(0), timeout=3.0)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    term = node_status(lone, key).term
    assert "event=election_started" not in lone.new_log_text()
    # The others come back: now it (or a peer) is elected with no write.
    for node in nodes[1:]:
        node.start()
    wait_until("a leader", lambda: node_status(lone, key).leader_node_id != 0, ELECTED_WITHIN_S)
    assert node_status(lone, key).term > term
