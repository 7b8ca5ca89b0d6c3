from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.env import StrataEnv


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrataEnv]:
    """A StrataEnv shared by one test module (for tests that leave the processes
    as they found them); fails the module's last test on unexpected error lines."""
    env = StrataEnv(tmp_path_factory.mktemp("module_env"))
    try:
        yield env
    finally:
        env.teardown()
    bad = env.error_lines([])
    assert not bad, "unexpected error lines in component logs:\n" + "\n".join(bad)


APPEND_CODECS = ["c", "python"]


@pytest.fixture(params=APPEND_CODECS)
def append_codec(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a walservice that runs one append codec
    (walservice/append_codec.py): the C one, then the Python path."""
    return {"STRATA_APPEND_CODEC": request.param}
