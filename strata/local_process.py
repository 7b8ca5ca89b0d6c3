"""Component processes on this machine: free loopback ports, and starting a
process that logs to a file and waiting for its `event=listening` line.

What the local stack (`deploy/local_stack.py`), the test environment
(`tests/env.py`) and the benchmarks (`bench/`) share. Below every component: it
imports nothing from walservice, pageserver, compute_shim, gpu or deploy.

A component started on port 0 binds a free port itself and says which in its
`event=listening address=HOST:PORT` log line (strata/grpc_server.py), so the
reliable way to learn its address is to read that line from its log.
`free_port` is for the cases where a port must be known before the process
starts (a walservice cluster's nodes name each other in `--peers`); another
process may take it meanwhile, so it is only as good as a loopback test needs.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LISTENING_EVENT = "event=listening"
_POLL_S = 0.02


def free_port() -> int:
    """A loopback TCP port nothing is bound to right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LoggedProcess:
    """A started process whose stdout and stderr go to `log_path`; its own
    output starts at byte `log_offset` (the file may hold earlier runs')."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int

    def log_since_start(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")


class NotListening(Exception):
    """The process exited (`returncode` set) or did not log `event=listening`
    in time (`returncode` None) while starting. `log_text`: its log since it started."""

    def __init__(self, returncode: int | None, log_text: str, timeout_s: float) -> None:
        what = f"exited with code {returncode}" if returncode is not None else f"did not listen within {timeout_s}s"
        super().__init__(f"{what} while starting")
        self.returncode = returncode
        self.log_text = log_text


def start_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    banner: str | None = None,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> LoggedProcess:
    """Start `argv` with stdin from /dev/null and stdout and stderr appended to
    `log_path`, after the line `banner` when given. `env`: the whole environment
    (None: this process's); `new_session`: detach it from this terminal's signals."""
    with open(log_path, "ab") as log:
        if banner is not None:
            log.write(f"{banner}\n".encode())
            log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=new_session,
            env=None if env is None else dict(env),
        )
    return LoggedProcess(proc, log_path, offset)


def wait_listening(started: LoggedProcess, timeout_s: float) -> str:
    """The address in the process's first `event=listening` log line; NotListening
    if it exits first or logs none within `timeout_s` (it is left running then)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = started.log_since_start()
        for line in text.splitlines():
            if LISTENING_EVENT in line:
                return line.split("address=", 1)[1].split()[0]
        if started.proc.poll() is not None:
            raise NotListening(started.proc.returncode, text, timeout_s)
        time.sleep(_POLL_S)
    raise NotListening(None, text, timeout_s)
