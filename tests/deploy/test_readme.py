"""Every code block of README.md runs as written, against a stack `strata up` started
for the test (on free ports, in a directory of its own, as `./.strata` there).

The Python blocks run in order as one script (each builds on the names the ones
before it made), with the stack's addresses in place of the documented
127.0.0.1:6400 and 127.0.0.1:7676. The shell blocks run with bash in that
directory, where `.venv/bin/strata` is this installation's script. The one block
not run here is the Quickstart's (it installs Strata and runs the whole suite:
.ci/run runs exactly it)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.test_local_stack import strata

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
QUICKSTART = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/strata up"


def readme_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((ROOT / "README.md").read_text())]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory like the repository root after the Quickstart: `.venv/bin/strata` and a running `./.strata`."""
    home = tmp_path_factory.mktemp("readme")
    bin_dir = home / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = Path(sys.executable).parent / "strata"
    (bin_dir / "strata").symlink_to(script)
    # A wrapper, not a symlink: a symlinked interpreter outside its venv loses the venv's packages.
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    up = strata("up", "--free-ports", cwd=home)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield home
    finally:
        down = strata("down", cwd=home)
        assert down.returncode == 0, down.stdout + down.stderr


def test_the_readme_has_no_block_this_test_skips_but_the_quickstart() -> None:
    blocks = readme_blocks()
    assert {lang for lang, _ in blocks} <= {"python", "sh"}, [lang for lang, _ in blocks]
    skipped = [code for lang, code in blocks if lang == "sh" and QUICKSTART in code]
    assert len(skipped) == 1 and sum(lang == "sh" for lang, _ in blocks) >= 2


def test_the_python_blocks_run(user_dir: Path) -> None:
    processes = json.loads((user_dir / ".strata" / "stack.json").read_text())["processes"]
    addresses = {p["name"]: p["address"] for p in processes}
    script = "\n\n".join(code for lang, code in readme_blocks() if lang == "python")
    script = script.replace("127.0.0.1:6400", addresses["pageserver"]).replace("127.0.0.1:7676", addresses["walservice"])
    run = subprocess.run([sys.executable, "-c", script], cwd=user_dir, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_shell_blocks_run(user_dir: Path) -> None:
    for lang, code in readme_blocks():
        if lang != "sh" or QUICKSTART in code:
            continue
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=user_dir, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, code + run.stdout + run.stderr
        if "--at $AT" in code:
            assert "first\n" in run.stdout.splitlines(keepends=True), run.stdout
