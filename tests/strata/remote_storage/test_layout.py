"""strata/remote_storage/layout.py: key rules and the keys the layout builds."""

from __future__ import annotations

import pytest

from strata.ids import Lsn, TimelineId
from strata.remote_storage import layout
from strata.remote_storage.layout import check_prefix, timeline_key
from tests.strata.remote_storage.harness import INDEX_KEY, TENANT, TIMELINE


def test_keys_and_prefixes() -> None:
    assert INDEX_KEY == f"tenants/{TENANT}/timelines/{TIMELINE}/index_part.json"
    with pytest.raises(ValueError, match="contains '..'"):
        timeline_key(TENANT, TIMELINE, "../escape")
    for prefix in ["", "tenants/", "tenants/a", f"tenants/{TENANT}/timelines/"]:
        assert check_prefix(prefix) == prefix


def test_index_keys_carry_the_generation() -> None:
    assert layout.index_key(TENANT, TIMELINE, 0x2A) == f"tenants/{TENANT}/timelines/{TIMELINE}/index_part.json-0000002a"
    assert layout.index_generation("index_part.json-0000002a") == 0x2A
    assert layout.index_generation("index_part.json") is None
    assert layout.index_generation("index_part.json-2a") is None


def test_every_builder_has_a_parser_that_reads_it_back() -> None:
    gen = layout.generation_key(TENANT, 7)
    assert gen == f"tenants/{TENANT}/generations/00000007"
    assert layout.parse_generation_name(gen.rpartition("/")[2]) == 7
    assert layout.parse_generation_name("7") is None

    tl_prefix = layout.timeline_prefix(TENANT, TIMELINE)
    assert layout.timeline_of_prefix(TENANT, tl_prefix) == TIMELINE
    assert layout.timeline_of_prefix(TENANT, layout.wal_prefix(TENANT, TIMELINE)) is None
    assert layout.timeline_of_prefix(TENANT, layout.tenant_prefix(TENANT)) is None

    sealed = layout.wal_segment_key(TENANT, TIMELINE, Lsn(0x1000000))
    partial = layout.wal_segment_key(TENANT, TIMELINE, Lsn(0x1000000), partial=True)
    assert sealed == f"{tl_prefix}wal/0000000001000000.wal" and partial == sealed + ".partial"
    assert layout.parse_wal_name("0000000001000000.wal") == layout.WalObjectName(Lsn(0x1000000), False)
    assert layout.parse_wal_name("0000000001000000.wal.partial") == layout.WalObjectName(Lsn(0x1000000), True)
    assert layout.parse_wal_name("0000000001000000.wal.tmp") is None

    vec = layout.vector_index_key(TENANT, TIMELINE, "docs", Lsn(0xABC))
    assert vec == f"{tl_prefix}vector_indexes/docs/0000000000000ABC.ivf"
    under = layout.vector_indexes_prefix(TENANT, TIMELINE)
    assert layout.parse_vector_index_key(under, vec) == layout.VectorIndexKey("docs", Lsn(0xABC))
    assert layout.parse_vector_index_key(under, under + "docs/0000000000000abc.ivf") is None  # upper-case hex only
    assert layout.parse_vector_index_key(under, under + "0000000000000ABC.ivf") is None  # no collection
    assert layout.parse_vector_index_key(layout.vector_indexes_prefix(TENANT, TimelineId("c" * 32)), vec) is None
    assert layout.deletion_mark_key(TENANT, TIMELINE) == f"{tl_prefix}deleted"
    assert layout.tenant_config_key(TENANT) == f"tenants/{TENANT}/tenant.json"
