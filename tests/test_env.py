"""tests/env.py itself: teardown fails the test when a component's graceful stop
goes wrong, instead of killing it quietly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.env import Component, StrataEnv

LISTEN = "import signal, sys, time; print('level=info event=listening address=127.0.0.1:1', file=sys.stderr, flush=True); "


def _component(env: StrataEnv, name: str, code: str) -> Component:
    comp = Component(name, [sys.executable, "-c", LISTEN + code, "--"], env.root, env.root / f"{name}.log", stop_timeout_s=1.0)
    comp.start()
    env.components.append(comp)
    return comp


def test_teardown_fails_on_a_component_that_ignores_sigterm(tmp_path: Path) -> None:
    env = StrataEnv(tmp_path)
    hung = _component(env, "hung", "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    with pytest.raises(AssertionError, match="hung did not exit within 1.0s of SIGTERM"):
        env.teardown()
    assert hung.proc is not None and hung.proc.poll() is not None  # killed after all


def test_teardown_fails_on_a_non_zero_exit_also_from_an_unchecked_stop(tmp_path: Path) -> None:
    env = StrataEnv(tmp_path)
    crashing = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)); time.sleep(60)"
    early, late = _component(env, "early", crashing), _component(env, "late", crashing)
    assert early.stop() == 3  # the test ignores the code; teardown does not
    with pytest.raises(AssertionError) as failed:
        env.teardown()
    assert "early exited with 3 on SIGTERM" in str(failed.value) and "late exited with 3 on SIGTERM" in str(failed.value)


def test_teardown_passes_on_exit_0_and_on_a_kill_the_test_asked_for(tmp_path: Path) -> None:
    env = StrataEnv(tmp_path)
    _component(env, "crashed", "time.sleep(60)").kill()  # SIGKILL: -9, what the test wanted
    _component(env, "graceful", "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(60)")
    env.teardown()
