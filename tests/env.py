"""A test environment in the manner of Neon's NeonEnvBuilder, in miniature.

`StrataEnv` starts real component processes on loopback (port 0: each binds a
free port and the env reads it from the `event=listening` log line), each in its
own directory under the test's tmp dir, and tears them down at the end. The
`strata_env` fixture fails the test when a process logged an unexpected
`level=error` line (pass `allowed_errors` patterns for the expected ones), and
when a graceful stop went wrong: a component that did not exit within its
timeout of SIGTERM, or exited with a code other than 0 (at teardown, or in a
`stop()` the test called and did not check).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from strata.local_process import NotListening, free_port, start_logged, wait_listening
from strata.v1 import page_pb2_grpc, timeline_pb2_grpc, wal_pb2_grpc

START_TIMEOUT_S = 30.0


@dataclass
class Component:
    name: str
    argv: list[str]
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    _log_offset: int = 0
    channels: list[grpc.Channel] = field(default_factory=list)
    env: dict[str, str] | None = None  # added to this process's environment
    # Graceful stops that went wrong (a hang, a non-zero exit): teardown fails the test on them.
    stop_failures: list[str] = field(default_factory=list)
    stop_timeout_s: float = 15.0  # how long a graceful stop waits after SIGTERM

    def start(self, extra_args: list[str] | None = None) -> None:
        """Start (or restart) the process; returns once it listens."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        listen = self.address or "127.0.0.1:0"
        argv = [*self.argv, "--listen", listen, *(extra_args or [])]
        env = {**os.environ, **self.env} if self.env else None
        started = start_logged(argv, self.log_path, banner=f"--- start: {' '.join(argv)}", env=env)
        self.proc, self._log_offset = started.proc, started.log_offset
        try:
            self.address = wait_listening(started, START_TIMEOUT_S)
        except NotListening as exc:
            what = f"exited with {exc.returncode} while starting" if exc.returncode is not None else f"did not listen within {START_TIMEOUT_S}s"
            raise RuntimeError(f"{self.name} {what}:\n{self.log_text()[-3000:]}") from None

    def new_log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_channels()

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM and wait: the graceful path. Returns the exit code; a hang
        raises, and either (or a non-zero code) is kept in `stop_failures`."""
        self._close_channels()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        timeout = self.stop_timeout_s if timeout is None else timeout
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            failure = f"{self.name} did not exit within {timeout}s of SIGTERM"
            self.stop_failures.append(failure)
            raise AssertionError(failure) from None
        if code != 0:
            self.stop_failures.append(f"{self.name} exited with {code} on SIGTERM:\n{self.new_log_text()[-3000:]}")
        return code

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)])
        self.channels.append(ch)
        return ch

    def _close_channels(self) -> None:
        for ch in self.channels:
            ch.close()
        self.channels.clear()


class StrataEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.components: list[Component] = []

    def process(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Component:
        """Any Strata process that logs `event=listening` (`--listen` is appended), started."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        comp = Component(name, argv, data_dir, self.root / f"{name}.log", env=env)
        comp.start()
        self.components.append(comp)
        return comp

    def walservice(self, *extra: str, name: str = "walservice", env: dict[str, str] | None = None) -> Component:
        """A walservice node, started (`env`: added to its environment)."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        comp = Component(
            name,
            [sys.executable, "-m", "walservice", "--data-dir", str(data_dir), *extra],
            data_dir,
            self.root / f"{name}.log",
            env=env,
        )
        comp.start()
        self.components.append(comp)
        return comp

    def walservice_cluster(
        self, nodes: int = 3, *extra: str, name: str = "wal", node_args: Callable[[int], list[str]] | None = None
    ) -> list[Component]:
        """A walservice cluster of `nodes` nodes (`--node-id N --peers A,B,C` on
        ports chosen up front), all started; node N is element N-1 and gets
        `node_args(N)` after `extra`."""
        # Every port (each node's --listen and --peer-port) picked up front and distinct:
        # a node left to take any free peer port (0) could take one reserved for a
        # node that has not bound its --listen yet ("Address already in use").
        ports: list[int] = []
        while len(ports) < 2 * nodes:
            if (port := free_port()) not in ports:
                ports.append(port)
        addresses = [f"127.0.0.1:{port}" for port in ports[:nodes]]
        comps = []
        for i, address in enumerate(addresses, start=1):
            data_dir = self.root / f"{name}{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            comp = Component(
                f"{name}{i}",
                [sys.executable, "-m", "walservice", "--data-dir", str(data_dir), "--node-id", str(i), "--peers", ",".join(addresses),
                 "--peer-port", str(ports[nodes + i - 1]), *extra, *(node_args(i) if node_args else [])],  # a later --peer-port wins
                data_dir,
                self.root / f"{name}{i}.log",
                address=address,
            )
            comp.start()
            self.components.append(comp)
            comps.append(comp)
        return comps

    def pageserver(self, walservice: Component | list[Component], *extra: str, name: str = "pageserver") -> Component:
        """A pageserver streaming from `walservice` (one node, or a cluster's nodes), started."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        nodes = walservice if isinstance(walservice, list) else [walservice]
        comp = Component(
            name,
            [sys.executable, "-m", "pageserver", "--data-dir", str(data_dir), "--walservice", ",".join(c.address for c in nodes), *extra],
            data_dir,
            self.root / f"{name}.log",
        )
        comp.start()
        self.components.append(comp)
        return comp

    def page_stub(self, comp: Component) -> page_pb2_grpc.PageServiceStub:
        return page_pb2_grpc.PageServiceStub(comp.channel())

    def timeline_stub(self, comp: Component) -> timeline_pb2_grpc.TimelineServiceStub:
        return timeline_pb2_grpc.TimelineServiceStub(comp.channel())

    def wal_stub(self, comp: Component) -> wal_pb2_grpc.WalServiceStub:
        return wal_pb2_grpc.WalServiceStub(comp.channel())

    def error_lines(self, allowed: list[str]) -> list[str]:
        bad = []
        for comp in self.components:
            if not comp.log_path.exists():
                continue
            for line in comp.log_text().splitlines():
                if "level=error" in line and not any(re.search(p, line) for p in allowed):
                    bad.append(f"{comp.name}: {line}")
        return bad

    def teardown(self) -> None:
        """Stop every component (all of them, whatever fails), then fail on any
        graceful stop that hung or exited non-zero during the test or now."""
        for comp in reversed(self.components):
            try:
                comp.stop()
            except AssertionError:
                pass  # in stop_failures
        failures = [failure for comp in self.components for failure in comp.stop_failures]
        assert not failures, "components did not shut down cleanly:\n" + "\n".join(failures)


class SmallDisk:
    """A really full filesystem for disk-full tests: a tmpfs of `size_bytes`
    mounted at `path` (root only), which `fill` fills to the last byte with a
    filler file and `free` empties again. Writes there fail with ENOSPC as on
    any full disk."""

    FILLER = ".filler"

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0755", "tmpfs", str(self.path)],
            check=True, capture_output=True,
        )
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
            self.mounted = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        """Write the filler until a write fails for want of space, whatever the size."""
        chunk = 1 << 20
        fd = os.open(self.path / self.FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while chunk:
                try:
                    os.write(fd, b"\xff" * chunk)
                except OSError:
                    chunk //= 2
        finally:
            os.close(fd)
        assert self.free_bytes() == 0, f"{self.path} still has {self.free_bytes()} bytes free"

    def free(self) -> None:
        (self.path / self.FILLER).unlink(missing_ok=True)


def can_mount_tmpfs() -> str | None:
    """None when this process may mount a tmpfs (root, with mount available), else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs for a really full disk needs root"
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"strata-mount-probe-{os.getpid()}"
    disk = SmallDisk(probe, 64 * 1024)
    try:
        disk.mount()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"cannot mount a tmpfs here: {exc} {detail.decode(errors='replace').strip()}"
    finally:
        disk.unmount()
        probe.rmdir() if probe.exists() else None
    return None


def env_flag(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `cond` until it holds; fail the test naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
