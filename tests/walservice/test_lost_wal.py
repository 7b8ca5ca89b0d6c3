"""WAL segment files deleted under a walservice whose control file says it had
data (walservice/timelines.py, "Lost WAL"): a single node stops the timeline with
DATA_LOSS; a node of a cluster sets the files aside, is recreated by its peers,
catches up before it votes or serves, and converges."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from strata.v1 import wal_pb2_grpc
from tests.env import Component, StrataEnv
from tests.walservice.harness import create_timeline, read_stream, tagged_batch
from tests.walservice.test_replication import cluster_client, create, wait_converged


@pytest.fixture
def allowed_errors() -> list[str]:
    return ["event=timeline_broken", "event=timeline_lost", "event=rpc_failed.*DATA_LOSS"]


def segments(node: Component) -> list[Path]:
    return sorted(node.data_dir.glob("timelines/*/*/*.wal"))


@pytest.mark.parametrize("which", ["all", "tail"])
def test_single_node_with_deleted_segments_answers_data_loss(strata_env: StrataEnv, which: str) -> None:
    node = strata_env.walservice("--segment-bytes", "4096")
    stub = wal_pb2_grpc.WalServiceStub(node.channel())
    key = create_timeline(stub)
    for b in range(1, 30):
        stub.Append(key.append(tagged_batch(1, b, 4)), timeout=10)
    assert node.stop() == 0
    files = segments(node)
    assert len(files) > 2
    for path in files if which == "all" else files[-1:]:
        path.unlink()
    node.start()
    with pytest.raises(grpc.RpcError) as caught:
        wal_pb2_grpc.WalServiceStub(node.channel()).Status(key.ref(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert "WAL was lost" in (caught.value.details() or "")


def test_cluster_node_with_deleted_segments_restores_from_its_peers(strata_env: StrataEnv) -> None:
    nodes = strata_env.walservice_cluster(3, "--segment-bytes", "4096")
    client = cluster_client(nodes)
    key = create(client)
    acked = [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(1, b, 4)) for b in range(1, 40)]
    leader = next(n for i, n in enumerate(nodes) if wal_pb2_grpc.WalServiceStub(n.channel()).Status(key.ref(), timeout=5).leader_node_id == i + 1)
    victim = next(n for n in nodes if n is not leader)
    victim.kill()
    for path in segments(victim)[-2:]:
        path.unlink()
    victim.start()
    acked += [client.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=tagged_batch(2, b, 4)) for b in range(1, 20)]
    wait_converged(nodes, key, acked[-1].end_lsn)  # (and it caught up: it serves again)
    want = [lsn for r in acked for lsn in r.record_lsns]
    for node in nodes:
        got = read_stream(wal_pb2_grpc.WalServiceStub(node.channel()), key, acked[-1].end_lsn)
        assert [r.lsn for r in got] == want, f"{node.name} differs"
    log = victim.log_text()
    assert "event=timeline_lost" in log and "event=caught_up" in log
    assert list((victim.data_dir / "lost").glob("*/*")), "the lost files were not kept for inspection"
    client.close()
