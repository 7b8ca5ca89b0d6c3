"""strata/remote_storage/url.py: which backend a --remote-storage URL opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.s3 import S3Storage
from strata.remote_storage.url import open_remote_storage
from tests.strata.remote_storage.harness import INDEX_KEY


def test_open_remote_storage(tmp_path: Path, aws_env: pytest.MonkeyPatch) -> None:
    local = open_remote_storage(f"file://{tmp_path}/remote")
    assert isinstance(local, LocalFsStorage)
    assert local.root == tmp_path / "remote" and local.root.is_dir()

    s3 = open_remote_storage("s3://my-bucket/strata/prod/")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix) == ("my-bucket", "strata/prod")
    assert s3.object_key(INDEX_KEY) == f"strata/prod/{INDEX_KEY}"
    bare = open_remote_storage("s3://my-bucket")
    assert isinstance(bare, S3Storage) and bare.prefix == "" and bare.object_key(INDEX_KEY) == INDEX_KEY


@pytest.mark.parametrize(
    "url", ["", "/var/lib/strata", "http://example.com/x", "s3://", "s3:///prefix", "file://", "S3://bucket", "gs://bucket"]
)
def test_open_remote_storage_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected file://DIR .* or s3://BUCKET\[/PREFIX\]"):
        open_remote_storage(url)


def test_open_remote_storage_rejects_bad_buckets_and_prefixes() -> None:
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        open_remote_storage("s3://Bad_Bucket/x")
    with pytest.raises(ValueError, match="prefix=.* is invalid"):
        open_remote_storage("s3://bucket/strata/../other")
