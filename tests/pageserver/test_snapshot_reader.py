"""pageserver/snapshot_reader.py: the layers and truncations an index names,
and what open_timeline refuses. Reads of whole snapshots (ancestors, GC,
compaction in between) are exercised by the index builds in tests/gpu/."""

from __future__ import annotations

from pathlib import Path

import pytest

from pageserver.index_part import IndexPart, LayerEntry, Truncation
from pageserver.layers.block_cache import BlockCache
from pageserver.layers.names import LayerName
from strata.remote_storage.interface import RemoteObject
from strata.remote_storage.local_fs import LocalFsStorage
from pageserver.remote_timeline import index_key
from pageserver.snapshot_reader import KEY_SPACE_END, index_layers, index_truncations, open_timeline
from strata.errors import FailedPrecondition
from tests.pageserver.world import new_id

LOW = LayerName("delta", 0, KEY_SPACE_END, 1, 100)
HIGH = LayerName.image(1 << 40, KEY_SPACE_END, 200)


def _index(**fields: object) -> IndexPart:
    layers = (LayerEntry(LOW.file_name, 10, 11), LayerEntry(HIGH.file_name, 20, 21))
    return IndexPart(new_id(), new_id(), "", 0, 300, layers=layers, **fields)  # type: ignore[arg-type]


def test_index_layers_names_files_under_the_directory(tmp_path: Path) -> None:
    (tmp_path / LOW.file_name).write_bytes(b"x")
    remote = RemoteObject("k", 20, 7)
    layers = index_layers(_index(), tmp_path, remote_objects={HIGH.file_name: remote})
    assert [(l.name, l.path, l.file_size, l.file_checksum) for l in layers] == [
        (LOW, tmp_path / LOW.file_name, 10, 11), (HIGH, tmp_path / HIGH.file_name, 20, 21),
    ]
    assert [(l.local, l.remote) for l in layers] == [(True, None), (False, remote)]
    assert [l.name for l in index_layers(_index(), tmp_path, keep=lambda n: n.lsn_start > 100)] == [HIGH]


def test_index_truncations_group_by_relation_in_lsn_order() -> None:
    index = _index(truncations=(Truncation(5, 10, 3), Truncation(5, 20, 0), Truncation(7, 15, 1)))
    assert index_truncations(index) == {5: [(10, 3), (20, 0)], 7: [(15, 1)]}


def test_open_timeline_refuses_lsns_the_uploaded_index_cannot_serve(tmp_path: Path) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    index = _index(gc_cutoff_lsn=150)
    storage.upload_bytes(index.encode(), index_key(index.tenant_id, index.timeline_id, 0))
    cache = BlockCache(1 << 20)
    with pytest.raises(FailedPrecondition, match="call Compact"):
        open_timeline(storage, index.tenant_id, index.timeline_id, 301, tmp_path / "work", cache)
    with pytest.raises(FailedPrecondition, match="below the GC cutoff 150"):
        open_timeline(storage, index.tenant_id, index.timeline_id, 149, tmp_path / "work", cache)
