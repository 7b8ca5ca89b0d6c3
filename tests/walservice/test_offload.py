"""WAL offload and trimming (walservice/offload.py) on real walservice processes
with `--remote-storage file://...`: what goes up (exactly the committed bytes),
backup_lsn catching up when idle, trimming only below min(backup_lsn,
remote_consistent_lsn), restart after trimming, Stream below the first local
segment (served from the offloaded copy), and remote storage that is down.

Waits poll Status or the files with generous timeouts; nothing asserts timing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.layout import PARTIAL_SUFFIX
from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.s3 import S3Storage
from strata.v1 import wal_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv, free_port
from tests.strata.remote_storage.harness import MotoServer
from tests.walservice.harness import (
    STREAM_TIMEOUT_S,
    TimelineKey,
    create_timeline,
    read_stream,
    sequenced,
    streamed,
    tagged_batch,
)
from walservice.offload import remote_wal_prefix
from walservice.segment import parse_segment_file_name, scan_segment, segment_file_name

SEGMENT_BYTES = 4096
INTERVAL = "0.2"
WAIT_S = 20.0


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def offloading_node(env: StrataEnv, remote_url: str, *extra: str) -> Component:
    return env.walservice(
        "--segment-bytes", str(SEGMENT_BYTES), "--remote-storage", remote_url, "--offload-interval", INTERVAL, *extra
    )


def append_batches(stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, batches: int, first: int = 0) -> list[tuple[int, bytes]]:
    out = []
    for b in range(first, first + batches):
        records = tagged_batch(0, b, 1 + b % 4)
        done = stub.Append(key.append(records), timeout=STREAM_TIMEOUT_S)
        out += sequenced(records, done.record_lsns)
    return out


def status(stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey) -> wal_pb2.WalStatus:
    return stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S)


def report_persisted(stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, lsn: int) -> None:
    stub.ReportPersisted(
        wal_pb2.PersistedRequest(tenant_id=key.tenant_id, timeline_id=key.timeline_id, remote_consistent_lsn=lsn),
        timeout=STREAM_TIMEOUT_S,
    )


def wait_backed_up(stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey) -> int:
    """Wait until backup_lsn == commit_lsn; return it."""
    wait_until(lambda: (s := status(stub, key)).backup_lsn == s.commit_lsn, "backup_lsn to reach commit_lsn")
    return status(stub, key).commit_lsn


def wait_full_round(stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, first: int) -> tuple[list[tuple[int, bytes]], int]:
    """Instead of sleeping "for a few rounds": three commits, each waited until it
    is backed up. The round that uploaded the first ran after the call and trims
    after its uploads; a timeline has one round at a time and a round records at
    most two backups (sealed, then partial), so the third needs a later round:
    by then a whole round, trim included, ran after the call. Returns the new
    records (batches first, first+1, first+2) and the commit_lsn."""
    written: list[tuple[int, bytes]] = []
    for b in range(first, first + 3):
        written += append_batches(stub, key, 1, first=b)
        commit_lsn = wait_backed_up(stub, key)
    return written, commit_lsn


def local_segment_starts(node: Component, key: TimelineKey) -> list[int]:
    directory = node.data_dir / "timelines" / key.tenant_id / key.timeline_id
    return sorted(s for s in (parse_segment_file_name(p.name) for p in directory.iterdir()) if s is not None)


def local_segment_path(node: Component, key: TimelineKey, start: int) -> Path:
    return node.data_dir / "timelines" / key.tenant_id / key.timeline_id / segment_file_name(start)


def remote_names(storage: RemoteStorage, key: TimelineKey) -> list[str]:
    prefix = remote_wal_prefix(key.tenant_id, key.timeline_id)
    return [obj.key.removeprefix(prefix) for obj in storage.list(prefix)]


def remote_records(storage: RemoteStorage, key: TimelineKey) -> tuple[list[tuple[int, bytes]], int]:
    """Every record in the offloaded WAL, sealed segments then the partial, as
    (lsn, record bytes), and the end LSN the objects cover. Checks that each
    object is whole batches and that they are contiguous."""
    prefix = remote_wal_prefix(key.tenant_id, key.timeline_id)
    names = remote_names(storage, key)
    sealed = [n for n in names if n.endswith(".wal")]
    partials = [n for n in names if n.endswith(PARTIAL_SUFFIX)]
    assert len(partials) <= 1, names
    records: list[tuple[int, bytes]] = []
    end_lsn = None
    for name in sealed + partials:
        scan = scan_segment(storage.download_bytes(prefix + name))
        assert scan.problem is None, f"{name}: {scan.problem}"
        assert scan.header.tenant_id == key.tenant_id and scan.header.timeline_id == key.timeline_id
        if end_lsn is not None:
            assert scan.header.start_lsn == end_lsn, f"{name} does not start where the previous object ended"
        records += [(f.lsn, f.payload) for f in scan.frames]
        end_lsn = scan.end_lsn
    assert end_lsn is not None, "nothing offloaded"
    return records, end_lsn


def log_events(node: Component, event: str, key: TimelineKey) -> list[str]:
    return [line for line in node.log_text().splitlines() if f"event={event} " in line and f"timeline={key.timeline_id}" in line]


def test_offloaded_objects_hold_exactly_the_committed_wal(strata_env: StrataEnv, tmp_path: Path) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    node = offloading_node(strata_env, f"file://{storage.root}")
    stub = strata_env.wal_stub(node)
    key = create_timeline(stub)
    written = append_batches(stub, key, 120)  # several 4 KiB segments
    commit_lsn = wait_backed_up(stub, key)
    assert commit_lsn == written[-1][0]

    starts = local_segment_starts(node, key)
    assert len(starts) >= 3
    expected = [segment_file_name(s) for s in starts[:-1]] + [segment_file_name(starts[-1]) + PARTIAL_SUFFIX]
    assert remote_names(storage, key) == expected
    prefix = remote_wal_prefix(key.tenant_id, key.timeline_id)
    for start in starts[:-1]:  # sealed: the whole local file, byte for byte
        assert storage.download_bytes(prefix + segment_file_name(start)) == local_segment_path(node, key, start).read_bytes()

    records, end_lsn = remote_records(storage, key)
    assert end_lsn == commit_lsn
    assert records == written == streamed(read_stream(stub, key, commit_lsn))

    # New commits: the partial is replaced by a longer committed prefix.
    written += append_batches(stub, key, 3, first=120)
    commit_lsn = wait_backed_up(stub, key)
    records, end_lsn = remote_records(storage, key)
    assert (records, end_lsn) == (written, commit_lsn)
    assert log_events(node, "wal_segment_offloaded", key) and log_events(node, "wal_partial_offloaded", key)
    assert all(f"tenant={key.tenant_id}" in line and " lsn=" in line for line in log_events(node, "wal_partial_offloaded", key))
    assert local_segment_starts(node, key)[0] == starts[0], "nothing is trimmed without remote_consistent_lsn"


def test_backup_lsn_catches_up_when_idle_with_the_default_interval(strata_env: StrataEnv, tmp_path: Path) -> None:
    node = strata_env.walservice("--remote-storage", f"file://{tmp_path / 'remote'}")
    stub = strata_env.wal_stub(node)
    key = create_timeline(stub, start_lsn=1000)
    append_batches(stub, key, 2)
    commit_lsn = wait_backed_up(stub, key)
    # Persisted in the control file: a restart reports it before any new upload.
    node.stop()
    node.start()
    assert status(strata_env.wal_stub(node), key).backup_lsn == commit_lsn


def test_trimming_waits_for_backup_and_remote_consistent_lsn(strata_env: StrataEnv, tmp_path: Path) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    node = offloading_node(strata_env, f"file://{storage.root}")
    stub = strata_env.wal_stub(node)
    key = create_timeline(stub)
    written = append_batches(stub, key, 150)
    commit_lsn = wait_backed_up(stub, key)
    starts = local_segment_starts(node, key)
    assert len(starts) >= 4

    # Backed up but not persisted by the pageserver: nothing goes.
    more, commit_lsn = wait_full_round(stub, key, first=150)
    written += more
    assert local_segment_starts(node, key)[: len(starts)] == starts
    starts = local_segment_starts(node, key)

    # remote_consistent_lsn inside segment 2: segments 0 and 1 (ending at or below it) go.
    mid = (starts[2] + starts[3]) // 2
    report_persisted(stub, key, mid)
    wait_until(lambda: local_segment_starts(node, key) == starts[2:], "segments 0 and 1 to be trimmed")
    more, commit_lsn = wait_full_round(stub, key, first=153)
    written += more
    assert local_segment_starts(node, key)[: len(starts) - 2] == starts[2:]
    starts = starts[:2] + local_segment_starts(node, key)
    trimmed = log_events(node, "wal_segment_trimmed", key)
    assert len(trimmed) == 2 and all(f"tenant={key.tenant_id}" in line for line in trimmed)

    # Everything persisted: every sealed segment goes, never the open one.
    report_persisted(stub, key, commit_lsn)
    wait_until(lambda: local_segment_starts(node, key) == starts[-1:], "every sealed segment to be trimmed")
    oldest = starts[-1]

    # Stream below the first local segment: served from the offloaded copy, then locally.
    for start_lsn in (0, written[7][0], oldest - 1):
        assert streamed(read_stream(stub, key, commit_lsn, start_lsn=start_lsn)) == [r for r in written if r[0] > start_lsn]
    assert log_events(node, "wal_stream_from_remote", key)
    tail = [r for r in written if r[0] > oldest]
    assert streamed(read_stream(stub, key, commit_lsn, start_lsn=oldest)) == tail

    # A restart recovers from the remaining segment and serves and appends on.
    node.stop()
    node.start()
    stub = strata_env.wal_stub(node)
    s = status(stub, key)
    assert (s.commit_lsn, s.backup_lsn, s.remote_consistent_lsn) == (commit_lsn, commit_lsn, commit_lsn)
    assert streamed(read_stream(stub, key, commit_lsn, start_lsn=oldest)) == tail
    written += append_batches(stub, key, 60, first=160)
    new_commit = wait_backed_up(stub, key)
    # remote_consistent_lsn is still commit_lsn, so trimming can reach it but not pass it.
    assert streamed(read_stream(stub, key, new_commit, start_lsn=commit_lsn)) == [r for r in written if r[0] > commit_lsn]
    # The remote copy still holds the whole history.
    assert remote_records(storage, key) == (written, new_commit)


@pytest.mark.parametrize(
    "allowed_errors", [[r"event=timeline_broken", r"event=rpc_failed .*code=DATA_LOSS"]], ids=["expected-errors"]
)
def test_a_missing_first_segment_that_was_not_trimmed_is_corruption(strata_env: StrataEnv, allowed_errors: list[str]) -> None:
    node = strata_env.walservice("--segment-bytes", str(SEGMENT_BYTES))
    stub = strata_env.wal_stub(node)
    key = create_timeline(stub)
    append_batches(stub, key, 60)
    node.stop()
    starts = local_segment_starts(node, key)
    local_segment_path(node, key, starts[0]).unlink()
    node.start()
    with pytest.raises(grpc.RpcError) as caught:
        status(strata_env.wal_stub(node), key)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert "segments are missing" in caught.value.details()


def test_remote_storage_down_stalls_backup_and_trims_nothing(strata_env: StrataEnv, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    node = offloading_node(strata_env, f"file://{remote}")
    # The storage breaks: a file where its directory was (unwritable even for root).
    saved = tmp_path / "remote.saved"
    remote.rename(saved)
    remote.write_text("not a directory")
    stub = strata_env.wal_stub(node)
    key = create_timeline(stub)
    written = append_batches(stub, key, 120)
    commit_lsn = status(stub, key).commit_lsn
    report_persisted(stub, key, commit_lsn)
    starts = local_segment_starts(node, key)

    wait_until(lambda: len(log_events(node, "wal_offload_failed", key)) >= 2, "offload failures to be logged")
    failures = log_events(node, "wal_offload_failed", key)
    assert all("level=warn " in line and f"tenant={key.tenant_id}" in line for line in failures)
    assert status(stub, key).backup_lsn == 0
    assert local_segment_starts(node, key) == starts
    written += append_batches(stub, key, 5, first=120)  # appends go on
    assert local_segment_starts(node, key)[: len(starts)] == starts

    # The storage comes back: backup catches up, then trimming (remote_consistent_lsn is there).
    remote.unlink()
    saved.rename(remote)
    new_commit = wait_backed_up(stub, key)
    assert new_commit == written[-1][0]
    assert log_events(node, "wal_offload_resumed", key)
    wait_until(lambda: local_segment_starts(node, key)[0] > starts[0], "trimming after the storage came back")
    # Only segments ending at or below remote_consistent_lsn went: the first kept starts there or below.
    assert local_segment_starts(node, key)[0] <= commit_lsn
    assert remote_records(LocalFsStorage(remote), key) == (written, new_commit)


def test_offload_to_s3_over_http(strata_env: StrataEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = MotoServer(free_port(), tmp_path / "moto_server.log")
    server.start()
    try:
        bucket = f"strata-wal-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }.items():
            monkeypatch.setenv(name, value)  # the walservice inherits them
        node = offloading_node(strata_env, f"s3://{bucket}/strata")
        stub = strata_env.wal_stub(node)
        key = create_timeline(stub)
        written = append_batches(stub, key, 60)
        commit_lsn = wait_backed_up(stub, key)
        storage = S3Storage(bucket, "strata")
        names = remote_names(storage, key)
        assert len(names) >= 2 and names[-1].endswith(PARTIAL_SUFFIX), names
        assert remote_records(storage, key) == (written, commit_lsn)
        node.stop()  # before moto_server goes
    finally:
        server.stop()


def test_delete_timeline_removes_local_and_offloaded_wal(strata_env: StrataEnv, tmp_path: Path) -> None:
    from compute_shim import Client

    storage = LocalFsStorage(tmp_path / "remote")
    node = offloading_node(strata_env, f"file://{storage.root}")
    stub = strata_env.wal_stub(node)
    key, other = create_timeline(stub), create_timeline(stub)
    append_batches(stub, key, 60)
    append_batches(stub, other, 5)
    wait_backed_up(stub, key)
    wait_backed_up(stub, other)
    assert remote_names(storage, key)
    with Client(walservice=node.address) as client:
        done = client.wal_delete_timeline(tenant_id=key.tenant_id, timeline_id=key.timeline_id)
        assert (done.existed, done.nodes_deleted) == (True, 1)
        assert remote_names(storage, key) == []
        assert not (node.data_dir / "timelines" / key.tenant_id / key.timeline_id).exists()
        with pytest.raises(grpc.RpcError) as err:
            status(stub, key)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Idempotent; the other timeline is untouched.
        assert not client.wal_delete_timeline(tenant_id=key.tenant_id, timeline_id=key.timeline_id).existed
        assert remote_names(storage, other)
        assert status(stub, other).commit_lsn > 0
    assert log_events(node, "timeline_deleted", key) and log_events(node, "wal_offload_deleted", key)
    # A restart does not bring it back, and the offloader does not upload it again.
    node.stop()
    node.start()
    stub = strata_env.wal_stub(node)
    with pytest.raises(grpc.RpcError) as err:
        status(stub, key)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The other timeline as the witness: whole rounds ran after the restart.
    wait_full_round(stub, other, first=5)
    assert remote_names(storage, key) == []
