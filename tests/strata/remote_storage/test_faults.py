"""strata/remote_storage/faults.py: the fault-injecting wrapper tests use."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.remote_storage.faults import FaultyStorage, TornUpload
from strata.remote_storage.interface import RemoteObject, RemoteStorageError, RemoteStorageUnavailable
from strata.remote_storage.local_fs import LocalFsStorage
from tests.strata.remote_storage.harness import INDEX_KEY, LAYER_KEY, checksum


@pytest.fixture
def faulty(tmp_path: Path) -> FaultyStorage:
    return FaultyStorage(LocalFsStorage(tmp_path / "remote"))


def test_passes_everything_through_until_armed(faulty: FaultyStorage, tmp_path: Path) -> None:
    stored = faulty.upload_bytes(b"index", INDEX_KEY)
    assert faulty.download_bytes(INDEX_KEY, stored) == b"index"
    assert faulty.inner.download_bytes(INDEX_KEY) == b"index"
    assert [o.key for o in faulty.list("tenants/")] == [INDEX_KEY]
    assert faulty.list_delimited("tenants/").prefixes == ("tenants/" + INDEX_KEY.split("/")[1] + "/",)
    assert faulty.exists(INDEX_KEY)
    faulty.delete([INDEX_KEY])
    assert not faulty.inner.exists(INDEX_KEY)
    assert [op for op, _ in faulty.calls] == ["upload_bytes", "download_bytes", "list", "list_delimited", "exists", "delete"]


def test_armed_failures_hit_the_next_calls_of_their_operation_then_stop(faulty: FaultyStorage) -> None:
    faulty.fail("upload_bytes", times=2)
    for _ in range(2):
        with pytest.raises(RemoteStorageUnavailable, match=f"injected fault: upload_bytes {INDEX_KEY}"):
            faulty.upload_bytes(b"x", INDEX_KEY)
        assert not faulty.inner.exists(INDEX_KEY)  # it never reached the store
    faulty.exists(INDEX_KEY)  # other operations are not armed
    faulty.upload_bytes(b"x", INDEX_KEY)
    faulty.fail("*", error=lambda op, key: RemoteStorageError(f"refused {op}"))
    with pytest.raises(RemoteStorageError, match="refused download_bytes"):
        faulty.download_bytes(INDEX_KEY)
    assert faulty.download_bytes(INDEX_KEY) == b"x"
    with pytest.raises(ValueError, match="not an operation"):
        faulty.fail("rename")


def test_an_outage_fails_every_call_until_up(faulty: FaultyStorage) -> None:
    faulty.upload_bytes(b"x", INDEX_KEY)
    faulty.down()
    for call in (lambda: faulty.list(""), lambda: faulty.download_bytes(INDEX_KEY), lambda: faulty.delete([INDEX_KEY])):
        with pytest.raises(RemoteStorageUnavailable, match="remote storage is down"):
            call()
    faulty.up()
    assert faulty.download_bytes(INDEX_KEY) == b"x"


def test_delays_go_through_the_injected_sleep(tmp_path: Path) -> None:
    slept: list[float] = []
    faulty = FaultyStorage(LocalFsStorage(tmp_path / "remote"), sleep=slept.append)
    faulty.delay("exists", 0.25)
    faulty.fail("exists")
    with pytest.raises(RemoteStorageUnavailable):
        faulty.exists(INDEX_KEY)
    assert slept == [0.25]  # the delay comes before the failure, as a slow refusal does


def test_a_torn_upload_keeps_a_prefix_that_an_expected_checksum_refuses(faulty: FaultyStorage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 8
    src = tmp_path / "layer"
    src.write_bytes(data)
    faulty.tear_uploads(times=1, keep=0.5)
    with pytest.raises(TornUpload, match=f"kept {len(data) // 2} of {len(data)} bytes"):
        faulty.upload_file(src, LAYER_KEY, checksum=checksum(data))
    torn = faulty.inner.list(LAYER_KEY)[0]
    assert torn.size == len(data) // 2
    whole = RemoteObject(LAYER_KEY, len(data), checksum(data))  # what an index names: the whole file
    with pytest.raises(CorruptionError):
        faulty.download_bytes(LAYER_KEY, whole)
    # The next upload is whole again; overwriting the torn object is the caller's retry.
    assert faulty.upload_file(src, LAYER_KEY, checksum=checksum(data), overwrite=True) == whole
    assert faulty.download_bytes(LAYER_KEY, whole) == data


def test_a_lost_answer_took_effect_and_the_retry_is_a_no_op(faulty: FaultyStorage) -> None:
    faulty.lose_answers("upload_bytes")
    with pytest.raises(RemoteStorageUnavailable, match="took effect but its answer was lost"):
        faulty.upload_bytes(b"layer", LAYER_KEY)
    assert faulty.inner.download_bytes(LAYER_KEY) == b"layer"  # it is there
    assert faulty.upload_bytes(b"layer", LAYER_KEY) == RemoteObject(LAYER_KEY, 5, checksum(b"layer"))  # create-only retry
    faulty.lose_answers("*", times=2)
    for _ in range(2):
        with pytest.raises(RemoteStorageUnavailable):
            faulty.delete([LAYER_KEY])
    assert not faulty.exists(LAYER_KEY)
