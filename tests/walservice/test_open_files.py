"""Open segment files are bounded (walservice/open_segments.py): a walservice
under a small RLIMIT_NOFILE takes appends on many more timelines than it has
descriptors, and a creation that fails for want of one leaves no `.tmp`
directory behind (walservice/timelines.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from strata.v1 import wal_pb2_grpc
from tests.env import Component, StrataEnv
from tests.walservice.harness import create_timeline, tagged_batch

FD_LIMIT = 96
TIMELINES = 3 * FD_LIMIT

# Runs the walservice with RLIMIT_NOFILE lowered to argv[1] (soft and hard).
_LIMITED = (
    "import resource, runpy, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "sys.argv = ['walservice', *sys.argv[2:]]; runpy.run_module('walservice', run_name='__main__', alter_sys=True)"
)


def limited_walservice(env: StrataEnv, *extra: str) -> Component:
    data_dir = env.root / "walservice"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", _LIMITED, str(FD_LIMIT), "--data-dir", str(data_dir), *extra]
    comp = Component("walservice", argv, data_dir, env.root / "walservice.log")
    comp.start()
    env.components.append(comp)
    return comp


def tmp_dirs(node: Component) -> list[Path]:
    return sorted(node.data_dir.glob("timelines/*/.*.tmp"))


def test_appends_on_more_timelines_than_open_file_limit(strata_env: StrataEnv) -> None:
    node = limited_walservice(strata_env)
    stub = wal_pb2_grpc.WalServiceStub(node.channel())
    keys = []
    for i in range(TIMELINES):
        key = create_timeline(stub)
        stub.Append(key.append(tagged_batch(1, i, 2)), timeout=10)
        keys.append(key)
    # Every timeline still takes appends (the evicted ones reopen their segment).
    for i, key in enumerate(keys):
        assert stub.Append(key.append(tagged_batch(2, i, 1)), timeout=10).end_lsn > 0
    assert tmp_dirs(node) == []
    assert node.stop() == 0


@pytest.fixture
def allowed_errors() -> list[str]:
    return ["event=rpc_failed.*Too many open files"]


def test_failed_creation_leaves_no_tmp_directory(strata_env: StrataEnv) -> None:
    # An LRU larger than the descriptor limit: creations run out of descriptors.
    node = limited_walservice(strata_env, "--max-open-segments", str(10 * FD_LIMIT))
    stub = wal_pb2_grpc.WalServiceStub(node.channel())
    failure = None
    for i in range(TIMELINES):
        try:
            key = create_timeline(stub)
            stub.Append(key.append(tagged_batch(1, i, 2)), timeout=10)
        except grpc.RpcError as exc:
            failure = exc
            break
    assert failure is not None, f"{TIMELINES} timelines fit in {FD_LIMIT} descriptors with every one held"
    assert "Too many open files" in (failure.details() or "")
    assert tmp_dirs(node) == []
