"""strata/remote_storage/verified.py: uploads refuse a file that changed, and
downloads are checked against the stored checksum and what the caller expects,
over every backend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.local_fs import LocalFsStorage
from tests.strata.remote_storage.harness import INDEX_KEY, LAYER_KEY, checksum, files_under, flip_stored_byte


def test_upload_refuses_a_file_that_changed_since_it_was_written(storage: RemoteStorage, tmp_path: Path) -> None:
    src = tmp_path / "layer"
    src.write_bytes(b"layer as written")
    written_checksum = checksum(b"layer as written")
    src.write_bytes(b"layer as damaged")
    with pytest.raises(CorruptionError, match="changed on local disk"):
        storage.upload_file(src, LAYER_KEY, checksum=written_checksum)
    assert not storage.exists(LAYER_KEY)
    assert storage.list() == []
    if isinstance(storage, LocalFsStorage):
        assert files_under(storage.root) == []  # the temp file went too


def test_corrupted_object_is_detected_and_leaves_no_file(storage: RemoteStorage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    uploaded = storage.upload_bytes(data, LAYER_KEY)
    flip_stored_byte(storage, LAYER_KEY, offset=1000)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for expected in (None, uploaded):  # the stored checksum catches it, with or without one from an index
        with pytest.raises(CorruptionError, match="xxhash64"):
            storage.download_file(LAYER_KEY, downloads / "layer", expected=expected)
        assert files_under(downloads) == []
    with pytest.raises(CorruptionError):
        storage.download_bytes(LAYER_KEY)


def test_download_checks_what_the_caller_expects(storage: RemoteStorage, tmp_path: Path) -> None:
    uploaded = storage.upload_bytes(b"abc", INDEX_KEY)
    dest = tmp_path / "downloads" / "index_part.json"
    with pytest.raises(CorruptionError, match="expected size=4"):
        storage.download_file(INDEX_KEY, dest, expected=replace(uploaded, size=4))
    assert not dest.parent.exists() or files_under(dest.parent) == []
    assert uploaded.checksum is not None
    with pytest.raises(CorruptionError, match="expected xxhash64"):
        storage.download_bytes(INDEX_KEY, replace(uploaded, checksum=uploaded.checksum ^ 1))
    with pytest.raises(ValueError, match="not key="):
        storage.download_bytes(INDEX_KEY, replace(uploaded, key="tenants/other"))
    [listed] = storage.list(INDEX_KEY)  # size only: a listing knows no checksum
    assert storage.download_bytes(INDEX_KEY, listed) == b"abc"
