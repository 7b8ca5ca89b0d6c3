"""strata/remote_storage/local_fs.py: plain files with checksum sidecars, and a
crash at any step of an overwrite leaves a readable object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from strata.errors import CorruptionError
from strata.remote_storage import local_fs
from strata.remote_storage.interface import RemoteObject
from strata.remote_storage.local_fs import LocalFsStorage
from tests.strata.remote_storage.harness import INDEX_KEY, TENANT, TIMELINE, checksum, files_under


def test_local_objects_are_plain_files_with_a_checksum_sidecar(tmp_path: Path) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    uploaded = storage.upload_bytes(b"hello", "tenants/t/f")
    assert (tmp_path / "remote" / "tenants" / "t" / "f").read_bytes() == b"hello"
    assert (tmp_path / "remote" / "tenants" / "t" / ".f.xxhash64").read_text() == f"{uploaded.checksum:016x}\n"
    # What a crashed upload or download leaves is hidden, never an object.
    (tmp_path / "remote" / "tenants" / "t" / ".f.k3j2h1.upload").write_bytes(b"partial")
    assert storage.list() == [RemoteObject("tenants/t/f", 5, None)]
    # An object put there by hand has no sidecar: it downloads, checked against `expected` only.
    (tmp_path / "remote" / "tenants" / "t" / "by-hand").write_bytes(b"manual")
    assert storage.download_bytes("tenants/t/by-hand") == b"manual"
    with pytest.raises(CorruptionError):
        storage.download_bytes("tenants/t/by-hand", RemoteObject("tenants/t/by-hand", 6, checksum(b"other!")))


def test_local_crash_at_any_step_of_an_overwrite_leaves_a_readable_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    old = storage.upload_bytes(b"old index", INDEX_KEY)
    object_path = storage.path_of(INDEX_KEY)
    sidecar = object_path.with_name(f".{object_path.name}.xxhash64")
    real_replace = os.replace

    def crash_before_the_rename(src: Any, dst: Any) -> None:
        if Path(dst) == object_path:
            raise OSError("simulated crash before the rename")
        real_replace(src, dst)

    # Step 1 done (the sidecar accepts both), crash before step 2: the old object stays and verifies.
    monkeypatch.setattr(os, "replace", crash_before_the_rename)
    with pytest.raises(OSError, match="simulated crash"):
        storage.upload_bytes(b"new index", INDEX_KEY, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(sidecar.read_text().split()) == 2
    assert storage.download_bytes(INDEX_KEY, old) == b"old index"

    # Steps 1 and 2 done, crash before step 3: the new object is in place and verifies.
    real_write_durably = local_fs.write_durably
    writes: list[bytes] = []

    def crash_at_the_second_sidecar_write(path: Path, data: bytes) -> None:
        writes.append(data)
        if len(writes) == 2:
            raise OSError("simulated crash before the sidecar shrinks")
        real_write_durably(path, data)

    monkeypatch.setattr(local_fs, "write_durably", crash_at_the_second_sidecar_write)
    with pytest.raises(OSError, match="simulated crash"):
        storage.upload_bytes(b"newer index", INDEX_KEY, overwrite=True)
    monkeypatch.setattr(local_fs, "write_durably", real_write_durably)
    assert storage.download_bytes(INDEX_KEY) == b"newer index"

    # The next upload leaves one checksum and no stray files.
    final = storage.upload_bytes(b"final index", INDEX_KEY, overwrite=True)
    assert sidecar.read_text() == f"{final.checksum:016x}\n"
    assert files_under(storage.root) == [f"tenants/{TENANT}/timelines/{TIMELINE}/.index_part.json.xxhash64", INDEX_KEY]


def test_local_reader_rereads_an_object_replaced_while_it_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    storage.upload_bytes(b"old bytes", INDEX_KEY)
    real_read_sidecar = storage._read_sidecar
    raced: list[bool] = []

    def overwrite_between_open_and_sidecar(path: Path) -> frozenset[int] | None:
        if not raced:  # the reader has the old file open: a writer replaces it completely now
            raced.append(True)
            storage.upload_bytes(b"new bytes", INDEX_KEY, overwrite=True)
        return real_read_sidecar(path)

    monkeypatch.setattr(storage, "_read_sidecar", overwrite_between_open_and_sidecar)
    assert storage.download_bytes(INDEX_KEY) == b"new bytes"
    assert raced == [True]
