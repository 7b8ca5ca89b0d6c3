"""PostgreSQL as a benchmark peer: a throwaway cluster on this machine's disk.

`ThrowawayPostgres(root)` initdb's a cluster in `root` (as the unprivileged
`postgres` OS user when run as root, since initdb refuses root), starts it on a
random loopback port with fsync and synchronous_commit on, and stops and
removes it on exit, even after an error. Anything that keeps it from starting
is a `PostgresUnavailable` saying why, so each benchmark can report its Strata
numbers and say why the peer is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from strata.local_process import free_port

PG_BIN = Path("/usr/local/bin")
PG_OS_USER = "postgres"
PGBENCH = "pgbench"


class PostgresUnavailable(RuntimeError):
    """The throwaway PostgreSQL cluster could not be set up (the message says why)."""


def run_as(argv: Sequence[str], *, user: str | None = None, timeout: float = 600, input_text: str | None = None) -> str:
    """Run a command (as `user` through runuser when we are root); its stdout."""
    full = ["runuser", "-u", user, "--", *argv] if user and os.geteuid() == 0 else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input_text)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, full, proc.stdout, proc.stderr)
    return proc.stdout


class ThrowawayPostgres:
    def __init__(self, root: Path, settings: dict[str, str] | None = None, clients: Sequence[str] = ("psql",)) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.user: str | None = PG_OS_USER if os.geteuid() == 0 else None
        self.clients = tuple(clients)
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(root),
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "max_wal_size": "8GB",
            "checkpoint_timeout": "30min",
            **(settings or {}),
        }

    def __enter__(self) -> ThrowawayPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for tool in (PG_BIN / "initdb", PG_BIN / "pg_ctl"):
            if not tool.exists():
                raise PostgresUnavailable(f"{tool} is missing (PostgreSQL 15 server binaries are expected in {PG_BIN})")
        for client in self.clients:
            if shutil.which(client) is None:
                raise PostgresUnavailable(f"{client} is not on PATH")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            self._hand_root_to_user()
        try:
            run_as([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"], user=self.user)
            self.start_server(wait=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            server_log = self.root / "postgres.log"
            if server_log.exists():
                detail += server_log.read_text(errors="replace")[-1500:]
            raise PostgresUnavailable(f"{exc}: {detail.strip()}") from exc

    def start_server(self, *, wait: bool) -> None:
        """pg_ctl start on the initialized cluster. `wait=False` returns once the
        postmaster is launched (pg_ctl -W): the caller polls for the first connection
        itself, at a finer grain than pg_ctl's 100 ms."""
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items()) + f" -p {self.port}"
        run_as(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.root / "postgres.log"),
             *(["-w", "-t", "60"] if wait else ["-W"]), "start"],
            user=self.user,
        )

    def stop_server(self, mode: str = "fast") -> None:
        """pg_ctl stop (waiting for the postmaster to exit); the cluster stays for a later start_server."""
        run_as([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"], user=self.user, timeout=60)

    def _hand_root_to_user(self) -> None:
        assert self.user is not None
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            try:
                subprocess.run(["useradd", "--system", "--no-create-home", self.user], check=True, capture_output=True)
            except (subprocess.CalledProcessError, OSError) as exc:
                raise PostgresUnavailable(f"running as root, and the OS user {self.user!r} is missing and could not be created: {exc}") from exc
            entry = pwd.getpwnam(self.user)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        temp = Path(tempfile.gettempdir()).resolve()
        for parent in self.root.resolve().parents:
            mode = os.stat(parent).st_mode
            if mode & 0o001:
                continue
            if temp in parent.parents:
                # A benchmark's own temp dir (mkdtemp makes it 0700): let the user through.
                os.chmod(parent, mode | 0o001)
            else:
                raise PostgresUnavailable(
                    f"the {self.user!r} OS user cannot reach {self.root}: {parent} is not searchable by others "
                    "(pass a --work-dir it can reach, e.g. under /tmp)"
                )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            try:
                run_as([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], user=self.user, timeout=60)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
                pass  # it was not running
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def connection_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def psql_argv(self, database: str = "postgres") -> list[str]:
        return ["psql", "-X", *self.connection_args(), "-d", database, "-v", "ON_ERROR_STOP=1"]

    def sql(self, statement: str, database: str = "postgres", timeout: float = 3600) -> str:
        """Run SQL through psql; the unaligned, tuples-only output."""
        return run_as([*self.psql_argv(database), "-At", "-c", statement], timeout=timeout).strip()

    def script(self, text: str, database: str = "postgres", timeout: float = 7200) -> str:
        """Run a psql script on stdin (one session); its whole output."""
        return run_as(self.psql_argv(database), input_text=text, timeout=timeout)

    @property
    def version(self) -> str:
        return self.sql("SHOW server_version").split()[0]
