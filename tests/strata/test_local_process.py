"""strata/local_process.py: free ports, and waiting for a process's `event=listening` line."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from strata.local_process import NotListening, free_port, start_logged, wait_listening


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_address_comes_from_this_start_s_listening_line(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("level=info event=listening address=127.0.0.1:1\n")  # an earlier run's
    code = "import sys, time; print('level=info event=listening address=127.0.0.1:2 x=y', file=sys.stderr, flush=True); time.sleep(30)"
    started = start_logged(_python(code), log, banner="--- start")
    try:
        assert wait_listening(started, 30) == "127.0.0.1:2"
        assert log.read_text().splitlines()[1] == "--- start"
    finally:
        started.proc.kill()
        started.proc.wait()


def test_a_process_that_exits_while_starting(tmp_path: Path) -> None:
    started = start_logged(_python("print('no luck'); raise SystemExit(3)"), tmp_path / "c.log")
    with pytest.raises(NotListening) as info:
        wait_listening(started, 30)
    assert info.value.returncode == 3 and "no luck" in info.value.log_text


def test_a_process_that_never_listens(tmp_path: Path) -> None:
    started = start_logged(_python("import time; time.sleep(30)"), tmp_path / "c.log")
    try:
        with pytest.raises(NotListening) as info:
            wait_listening(started, 0.2)
        assert info.value.returncode is None and started.proc.poll() is None  # left running
    finally:
        started.proc.kill()
        started.proc.wait()
