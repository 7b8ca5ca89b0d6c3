"""`--remote-storage URL`: which backend a URL names, opened (`open_remote_storage`).

Its own module, above both backends: the backends build on interface.py, and
this is the one place that knows them all.
"""

from __future__ import annotations

from pathlib import Path

from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.s3 import S3Storage


def open_remote_storage(url: str) -> RemoteStorage:
    """The storage a `--remote-storage` URL names: file://DIR or s3://BUCKET[/PREFIX]."""
    usage = (
        "expected file://DIR (a local directory, e.g. file:///var/lib/strata/remote) or "
        "s3://BUCKET[/PREFIX] (AWS or MinIO, configured by AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_REGION)"
    )
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "file":
        if not rest:
            raise ValueError(f"remote storage URL {url!r} names no directory: {usage}")
        return LocalFsStorage(Path(rest))
    if sep and scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"remote storage URL {url!r} names no bucket: {usage}")
        return S3Storage(bucket, prefix)
    raise ValueError(f"unsupported remote storage URL {url!r}: {usage}")
