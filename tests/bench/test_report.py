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


def _parser():  # type: ignore[no-untyped-def]
    import argparse

    from bench.report import add_write_argument

    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--writers", type=lambda t: tuple(int(x) for x in t.split(",")), default="1,8,64")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    add_write_argument(parser)
    return parser


def test_partial_run_reasons_name_every_option_that_changes_the_measurement() -> None:
    from bench.report import partial_run_reasons

    parser = _parser()
    assert partial_run_reasons(parser, parser.parse_args([])) == []
    # Where files go is not a partial run; a typed default given explicitly is the default.
    assert partial_run_reasons(parser, parser.parse_args(["--work-dir", "/tmp/x", "--keep", "--writers", "1,8,64"])) == []
    args = parser.parse_args(["--quick", "--no-postgres", "--duration", "0.5", "--writers", "1"])
    assert partial_run_reasons(parser, args) == ["--duration 0.5", "--writers 1", "--quick", "--no-postgres"]


def test_only_a_full_default_run_writes_its_section(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from bench.report import publish_section

    path = tmp_path / "BENCHMARKS.md"
    assert publish_section("alpha", "| full |\n", reasons=[], write=None, command="python -m bench.alpha", path=path) == path
    committed = path.read_text()
    assert publish_section("alpha", "| quick |\n", reasons=["--quick"], write=None, command="python -m bench.alpha", path=path) is None
    assert publish_section("alpha", "| quick |\n", reasons=["--quick"], write=True, command="python -m bench.alpha", path=path) is None
    assert "left alone: not a full default run (--quick); only `python -m bench.alpha`" in capsys.readouterr().err
    assert publish_section("alpha", "| full again |\n", reasons=[], write=False, command="python -m bench.alpha", path=path) is None
    assert path.read_text() == committed, "a partial or --no-write run leaves the committed section as it was"
