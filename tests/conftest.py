from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.env import SmallDisk, StrataEnv, can_mount_tmpfs


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


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, int], SmallDisk]]:
    """Mounts tmpfs filesystems of a given size (`small_disk(path, size_bytes)`)
    for disk-full tests, unmounted at teardown (after the processes using them
    stopped: the fixture is set up before `strata_env`, so torn down after it).
    Skips where mounting is not permitted (not root)."""
    why_not = can_mount_tmpfs()
    if why_not is not None:
        pytest.skip(why_not)
    disks: list[SmallDisk] = []

    def mount(path: Path, size_bytes: int) -> SmallDisk:
        disk = SmallDisk(path, size_bytes)
        disk.mount()
        disks.append(disk)
        return disk

    try:
        yield mount
    finally:
        for disk in reversed(disks):
            disk.unmount()
