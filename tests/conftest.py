from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.env import StrataEnv


@pytest.fixture
def allowed_errors() -> list[str]:
    """Regexes of `level=error` log lines a test expects; override per test."""
    return []


@pytest.fixture
def strata_env(tmp_path: Path, allowed_errors: list[str]) -> Iterator[StrataEnv]:
    env = StrataEnv(tmp_path)
    try:
        yield env
    finally:
        env.teardown()
    bad = env.error_lines(allowed_errors)
    assert not bad, "unexpected error lines in component logs:\n" + "\n".join(bad)
