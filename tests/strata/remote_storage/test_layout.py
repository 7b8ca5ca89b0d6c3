"""strata/remote_storage/layout.py: key rules and the keys the layout builds."""

from __future__ import annotations

import pytest

from strata.remote_storage.layout import check_prefix, timeline_key
from tests.strata.remote_storage.harness import INDEX_KEY, TENANT, TIMELINE


def test_keys_and_prefixes() -> None:
    assert INDEX_KEY == f"tenants/{TENANT}/timelines/{TIMELINE}/index_part.json"
    with pytest.raises(ValueError, match="contains '..'"):
        timeline_key(TENANT, TIMELINE, "../escape")
    for prefix in ["", "tenants/", "tenants/a", f"tenants/{TENANT}/timelines/"]:
        assert check_prefix(prefix) == prefix
