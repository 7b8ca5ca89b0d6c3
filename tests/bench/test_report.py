"""bench/report.py: sections are replaced in place, others kept byte for byte."""

from __future__ import annotations

from pathlib import Path

from bench.report import end_marker, start_marker, update_section


def test_update_section_creates_replaces_and_keeps_others(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    update_section("alpha", "| a |\n", command="python -m bench.alpha", path=path)
    update_section("beta", "| b |\n", command="python -m bench.beta", path=path)
    first = path.read_text()
    assert first.startswith("# Benchmarks")
    assert "`python -m bench.alpha`" in first and "CPUs (" in first

    update_section("alpha", "| a2 |\n", command="python -m bench.alpha --quick", path=path)
    text = path.read_text()
    assert "| a2 |" in text and "| a |" not in text
    assert text.count(start_marker("alpha")) == 1 and text.count(end_marker("alpha")) == 1
    beta = first[first.index(start_marker("beta")) :]
    assert text.endswith(beta), "the other section is kept as it was"
    assert text.index(start_marker("alpha")) < text.index(start_marker("beta")), "replaced where it stands"
