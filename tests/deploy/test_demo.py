"""`strata demo` (deploy/demo.py) as a user runs it, on a StrataEnv stack."""

from __future__ import annotations

from pathlib import Path

from tests.compute_shim.conftest import Stack, stack  # noqa: F401 (the fixture)
from tests.deploy.test_sql_shell import assert_one_line_error, endpoint_args, strata


def test_demo_runs_the_agent_workflow(stack: Stack) -> None:
    out = strata("demo", *endpoint_args(stack))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for line in (
        "forked 20 branches of main",
        "20 agents ran a destructive migration each",
        "main is untouched",
        "undid agent 7's mistake",
        "a time-travel query read the past",
        "strata sql ",
    ):
        assert line in text, text
    assert "CHECK FAILED" not in text
    assert f"--pageserver {stack.pageserver.address}" in text, "the printed `strata sql` lines reach the same stack"
    assert text.count(" ms] ") == 7, "each step says how long it took"


def test_demo_errors_are_one_line(tmp_path: Path) -> None:
    out = strata("demo", "--pageserver", "127.0.0.1:1", "--walservice", "127.0.0.1:1")
    assert_one_line_error(out, "strata demo: ", "cannot reach the stack", "is it running")
    out = strata("demo", "--data-dir", str(tmp_path / "nothing"))
    assert_one_line_error(out, "strata demo: ", "no running local stack", "strata up")
