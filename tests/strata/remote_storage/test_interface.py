"""strata/remote_storage/interface.py: what every backend guarantees, checked
over each of them (file://, S3 on moto in process, S3 on a moto_server
subprocess over HTTP)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.errors import NotFound
from strata.remote_storage.interface import Listing, RemoteObject, RemoteObjectExists, RemoteStorage
from strata.remote_storage.layout import timeline_key
from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.s3 import MiB, S3Storage
from tests.strata.remote_storage.harness import (
    BAD_KEYS,
    BAD_PREFIXES,
    INDEX_KEY,
    LAYER_KEY,
    TENANT,
    TIMELINE,
    FakeTime,
    checksum,
    files_under,
)


def test_small_round_trip(storage: RemoteStorage, tmp_path: Path) -> None:
    data = b'{"format_version": 1}\n' * 20
    uploaded = storage.upload_bytes(data, INDEX_KEY)
    assert uploaded == RemoteObject(INDEX_KEY, len(data), checksum(data))
    assert storage.exists(INDEX_KEY)
    assert storage.download_bytes(INDEX_KEY) == data
    assert storage.download_bytes(INDEX_KEY, uploaded) == data

    dest = tmp_path / "local" / "timeline" / "index_part.json"  # directories made as needed
    assert storage.download_file(INDEX_KEY, dest, expected=uploaded) == uploaded
    assert dest.read_bytes() == data
    assert files_under(tmp_path / "local") == ["timeline/index_part.json"]  # no temp file left

    empty = storage.upload_bytes(b"", "tenants/empty")
    assert empty == RemoteObject("tenants/empty", 0, checksum(b""))
    assert storage.download_bytes("tenants/empty", empty) == b""


def test_multipart_size_round_trip(storage: RemoteStorage, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(2 * 5 * MiB + 12345)  # three 5 MiB parts at the tests' part size
    src = tmp_path / "layer"
    src.write_bytes(data)
    uploaded = storage.upload_file(src, LAYER_KEY, checksum=checksum(data))
    assert uploaded == RemoteObject(LAYER_KEY, len(data), checksum(data))

    dest = tmp_path / "downloaded" / "layer"
    assert storage.download_file(LAYER_KEY, dest, expected=uploaded) == uploaded
    assert dest.read_bytes() == data
    from_bytes = storage.upload_bytes(data, "tenants/from-bytes")
    assert storage.download_bytes("tenants/from-bytes", from_bytes) == data

    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage.object_key(LAYER_KEY))
        assert head["ETag"].endswith('-3"'), "expected a three-part multipart upload"
        assert head["Metadata"] == {"xxhash64": f"{checksum(data):016x}"}
        assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


def test_overwrite_replaces_the_object(storage: RemoteStorage) -> None:
    storage.upload_bytes(b"index v1", INDEX_KEY, overwrite=True)
    v2 = storage.upload_bytes(b"index version 2", INDEX_KEY, overwrite=True)
    assert storage.download_bytes(INDEX_KEY, v2) == b"index version 2"
    assert storage.list() == [RemoteObject(INDEX_KEY, len(b"index version 2"), None)]


@pytest.mark.parametrize("size", [10, 6 * MiB])  # one PUT; a multipart upload (s3_options: 5 MiB)
def test_uploads_are_create_only(storage: RemoteStorage, tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    first = storage.upload_bytes(data, LAYER_KEY)
    # The same bytes again (a retried or repeated upload): a no-op success.
    assert storage.upload_bytes(data, LAYER_KEY) == first
    src = tmp_path / "layer"
    src.write_bytes(data)
    assert storage.upload_file(src, LAYER_KEY) == first
    # Other bytes: refused, and the object is unchanged.
    other = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(RemoteObjectExists, match="create-only"):
        storage.upload_bytes(other, LAYER_KEY)
    src.write_bytes(other)
    with pytest.raises(RemoteObjectExists):
        storage.upload_file(src, LAYER_KEY)
    assert storage.download_bytes(LAYER_KEY, first) == data
    assert storage.list() == [RemoteObject(LAYER_KEY, size, None)]
    if isinstance(storage, LocalFsStorage):
        assert sorted(p.name for p in storage.path_of(LAYER_KEY).parent.iterdir()) == [
            f".{storage.path_of(LAYER_KEY).name}.xxhash64", storage.path_of(LAYER_KEY).name,
        ]  # no temp file left behind


def test_list_by_prefix(storage: RemoteStorage) -> None:
    keys = [
        "tenants/a/timelines/x/index_part.json",
        "tenants/a/timelines/x/layer1",
        "tenants/a/timelines/y/layer2",
        "tenants/ab/timelines/z/layer3",
        "tenants/b/f",
        "wal/a/seg1",
    ]
    for size, key in enumerate(keys):
        storage.upload_bytes(b"x" * size, key)

    assert storage.list() == [RemoteObject(key, size, None) for size, key in enumerate(keys)]
    assert [o.key for o in storage.list("tenants/a/timelines/x/")] == keys[:2]
    assert [o.key for o in storage.list("tenants/a/")] == keys[:3]
    assert [o.key for o in storage.list("tenants/a")] == keys[:4]  # a string prefix, as in S3
    assert [o.key for o in storage.list("wal/a/se")] == ["wal/a/seg1"]
    assert [o.key for o in storage.list("tenants/b/f")] == ["tenants/b/f"]
    assert storage.list("tenants/c/") == []
    assert storage.list("nowhere") == []


def test_delete_in_batches_and_missing_keys_are_fine(storage: RemoteStorage) -> None:
    keys = [f"tenants/t/timelines/tl/layer{i}" for i in range(5)]
    for key in keys:
        storage.upload_bytes(key.encode(), key)
    storage.delete(keys[:3] + ["tenants/t/timelines/tl/never-uploaded", "nowhere/at/all"])
    assert [o.key for o in storage.list()] == keys[3:]
    assert not storage.exists(keys[0])
    assert storage.exists(keys[4])
    with pytest.raises(NotFound):
        storage.download_bytes(keys[0])

    storage.delete([])
    storage.delete(keys)
    assert storage.list() == []
    if isinstance(storage, LocalFsStorage):
        assert files_under(storage.root) == []  # sidecars went with their objects


def test_bad_keys_and_prefixes_are_rejected(storage: RemoteStorage, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    for key in BAD_KEYS:
        calls: list[Callable[[], object]] = [
            lambda: storage.upload_bytes(b"x", key),
            lambda: storage.upload_file(src, key),
            lambda: storage.download_bytes(key),
            lambda: storage.download_file(key, tmp_path / "dest"),
            lambda: storage.exists(key),
            lambda: storage.delete(["tenants/fine", key]),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="is invalid"):
                call()
    for prefix in BAD_PREFIXES:
        with pytest.raises(ValueError, match="prefix=.* is invalid"):
            storage.list(prefix)
    assert storage.list() == []


def test_missing_key_is_not_found(storage: RemoteStorage, tmp_path: Path, fake_time: FakeTime) -> None:
    missing = timeline_key(TENANT, TIMELINE, "missing-layer")
    with pytest.raises(NotFound, match="missing-layer"):
        storage.download_bytes(missing)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(NotFound):
        storage.download_file(missing, downloads / "missing-layer")
    assert files_under(downloads) == []
    assert not storage.exists(missing)
    storage.upload_bytes(b"x", "tenants/dir/object")
    with pytest.raises(NotFound):
        storage.download_bytes("tenants/dir")  # a prefix of a key names no object
    assert fake_time.sleeps == []  # a 404 is not retried


def test_list_delimited_is_one_level_of_the_key_tree(storage: RemoteStorage) -> None:
    """Like S3's Delimiter='/': the objects right below the prefix and the
    sub-prefixes holding objects, each once; a partial last segment matches as
    a string; an empty folder (file:// only) is not a prefix."""
    keys = [
        "tenants/t1/tenant.json",
        "tenants/t1/timelines/a/index_part.json-00000001",
        "tenants/t1/timelines/a/wal/0000000000000000.wal",
        "tenants/t1/timelines/a/wal/0000000001000000.wal",
        "tenants/t1/timelines/b/deleted",
        "tenants/t10/tenant.json",
    ]
    for key in keys:
        storage.upload_bytes(key.encode(), key)
    if isinstance(storage, LocalFsStorage):
        (storage.path_of("tenants/t1/timelines/empty/x").parent).mkdir(parents=True)

    top = storage.list_delimited("tenants/t1/")
    assert top.prefixes == ("tenants/t1/timelines/",)
    assert top.objects == (RemoteObject("tenants/t1/tenant.json", len(keys[0]), None),)
    assert storage.list_delimited("tenants/t1/timelines/").prefixes == ("tenants/t1/timelines/a/", "tenants/t1/timelines/b/")
    timeline = storage.list_delimited("tenants/t1/timelines/a/")
    assert timeline.prefixes == ("tenants/t1/timelines/a/wal/",)
    assert [o.key for o in timeline.objects] == ["tenants/t1/timelines/a/index_part.json-00000001"]
    assert storage.list_delimited("tenants/t1").prefixes == ("tenants/t1/", "tenants/t10/")
    assert storage.list_delimited("").prefixes == ("tenants/",)
    assert storage.list_delimited("tenants/none/") == storage.list_delimited("nothing-here") == Listing((), ())
    with pytest.raises(ValueError, match="is invalid"):
        storage.list_delimited("../")
