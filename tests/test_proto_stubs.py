"""The checked-in stubs in strata/v1 must be exactly what protoc makes of proto/."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_the_proto_files() -> None:
    stale = _generate_module().stale_stubs()
    assert stale == [], f"regenerate with `python proto/generate.py`: stale {stale}"


def test_contract_names_exist() -> None:
    from strata.v1 import page_pb2, timeline_pb2, wal_pb2

    assert set(wal_pb2.DESCRIPTOR.services_by_name["WalService"].methods_by_name) == {
        "CreateTimeline", "Append", "Stream", "Status", "ReportPersisted",
        "AppendStream",  # Strata's extension: pipelined Appends (docs/design/0001-wal-segments.md)
        "DeleteTimeline",  # issue 4: timeline deletion deletes its WAL too (docs/design/0003-remote-storage.md)
    }
    assert set(page_pb2.DESCRIPTOR.services_by_name["PageService"].methods_by_name) == {"GetPage", "GetPages", "GetRelSize"}
    assert {
        "CreateTenant", "ListTenants", "DeleteTenant", "CreateTimeline", "GetTimeline", "ListTimelines",
        "DeleteTimeline", "GetLsnByTimestamp", "ListCommits", "Compact", "Gc", "AttachTenant", "DetachTenant",
        "GetTimelineByName",  # issue 18: databases by name
    } == set(timeline_pb2.DESCRIPTOR.services_by_name["TimelineService"].methods_by_name)


def test_stubs_are_not_a_top_level_proto_module() -> None:
    """`proto` belongs to proto-plus: our .proto folder is data, never a package."""
    from strata.v1 import wal_pb2

    assert not (ROOT / "proto" / "__init__.py").exists()
    assert wal_pb2.__name__ == "strata.v1.wal_pb2"
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "strata*" in include and not any(pattern.startswith("proto") for pattern in include), include
