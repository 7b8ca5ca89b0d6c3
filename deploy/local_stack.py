"""`strata up` / `strata down` / `strata status`: the local stack on loopback.

`up` starts each component as a background process under the data dir
(default ./.strata), logging to `<data dir>/logs/<name>.log`, waits until each
answers its health check, records what it started in `<data dir>/stack.json`
and prints where each one listens. The ports are the ones in DESIGN.md (the
walservice on 7676, the pageserver on 6400, the proxy on 8080: deploy/stack_proxy.py): a busy one stops `up` with what to do,
before anything starts; with `--free-ports` every component takes a free port
instead. `down` sends SIGTERM (SIGKILL after a grace period); `status` says what
runs and where (`--json` for a program).

With `--s3` an S3-compatible server (MinIO or moto_server, see deploy/local_s3.py)
starts first, as the component "s3", and is the stack's remote storage.

The first `up` of a data dir also makes the stack's default tenant (what the
`strata db` commands use unless given `--tenant`), recorded in
`<data dir>/default_tenant.json` (deploy/default_tenant.py), which outlives `down`.

With `--tls` (and from then on for that data dir, whose `tls/` directory it
keeps) every component serves TLS with a local CA and certificate made by
strata/tls.py under `<data dir>/tls/` (keys 0600), dials the others over TLS,
and the proxy serves HTTPS; stack.json names the CA (`tls_ca`), so the CLI
commands that find the stack there (status, tenants, db, sql, demo...) trust it.

stack.json (written with write_durably):
    {"version": 1, "processes": [{"name", "pid", "address", "log", "argv", "note"}],
     "default_tenant": "<tenant id>",   (once the pageserver is up)
     "tls_ca": "<path of the CA's PEM>"}  (a --tls stack only)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy import default_tenant, local_s3, stack_proxy
from deploy.cli_output import DEFAULT_DATA_DIR, data_dir_flag, message_dict, print_json, python_command, strata_command
from strata.durable_file import write_durably
from strata.errors import CorruptionError
from strata.grpc_channels import open_channel
from strata.local_process import NotListening, free_port, start_logged, wait_listening
from strata.tls import CA_FILE, TLS_CA_ENV, make_local_ca

STATE_FILE = "stack.json"
TLS_DIR = "tls"
STATE_VERSION = 1
# The walservice layout of a data dir, fixed by its first `up` (see `ClusterLayout`).
CLUSTER_FILE = "cluster.json"
CLUSTER_VERSION = 1
REPLICA_CHOICES = (1, 3, 5)
WALSERVICE_PORT = 7676
PAGESERVER_PORT = 6400
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    address: str
    log: str
    argv: list[str]
    note: str = ""  # said by `up` and `status` (e.g. that the S3 server is in memory)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    module: str
    default_port: int
    args: list[str]
    # A cluster node's port is named in every node's --peers: it must be exactly
    # this one (a busy port is an error, never replaced by a free one).
    fixed_port: bool = False


@dataclass(frozen=True)
class ClusterLayout:
    """`<data dir>/cluster.json`: how many walservice nodes the data dir's stack has
    and their ports, recorded by the first `up` and reused by every later one, so
    the nodes' data (walservice1..N) and the addresses in their --peers, in the
    pageserver's --walservice and in `strata status` always agree across restarts."""

    replicas: int
    ports: list[int]

    def encode(self) -> bytes:
        return json.dumps({"version": CLUSTER_VERSION, **asdict(self)}, indent=2).encode()

    @classmethod
    def read(cls, data_dir: Path) -> ClusterLayout | None:
        path = data_dir / CLUSTER_FILE
        if not path.exists():
            return None
        body = json.loads(path.read_text())
        if body.get("version") != CLUSTER_VERSION:
            raise SystemExit(f"{path}: unsupported version {body.get('version')} (this build reads {CLUSTER_VERSION})")
        return cls(int(body["replicas"]), [int(p) for p in body["ports"]])


def replicas_arg(text: str) -> int:
    """`--replicas`: 1 (one walservice), or 3 or 5 (a cluster that survives 1 or 2 nodes down)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n not in REPLICA_CHOICES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be 1, 3 or 5 (a replicated walservice needs an odd number of nodes: "
            "3 survives one node down, 5 survives two; an even count tolerates no more than one fewer)"
        )
    return n


def cluster_layout(data_dir: Path, requested: int | None, free_ports: bool = False) -> ClusterLayout:
    """The data dir's recorded layout, or a new one (recorded) on its first `up`."""
    layout = ClusterLayout.read(data_dir)
    if layout is not None:
        if requested is not None and requested != layout.replicas:
            raise SystemExit(
                f"{data_dir} holds a stack with --replicas {layout.replicas} (see {data_dir / CLUSTER_FILE}); "
                f"it cannot restart with --replicas {requested}: use that count, or a fresh --data-dir"
            )
        return layout
    replicas = requested or 1
    layout = ClusterLayout(replicas, cluster_ports(replicas, free_ports) if replicas > 1 else [])
    write_durably(data_dir / CLUSTER_FILE, layout.encode())
    return layout


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a port held only by TIME_WAIT connections (a stack just stopped) is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def _health(address: str, timeout: float = 2.0) -> str:
    try:
        with open_channel(address, []) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    except grpc.RpcError as exc:
        return f"unreachable ({exc.code().name})"


def _read_state(data_dir: Path) -> list[ProcessRecord]:
    path = data_dir / STATE_FILE
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    if state.get("version") != STATE_VERSION:
        raise SystemExit(f"{path}: unsupported version {state.get('version')} (this build reads {STATE_VERSION})")
    if state.get("tls_ca"):
        # A --tls stack: this process's connections to it trust its CA (strata/tls.py).
        os.environ.setdefault(TLS_CA_ENV, state["tls_ca"])
    return [ProcessRecord(**p) for p in state["processes"]]


def walservice_address(processes: list[ProcessRecord]) -> str | None:
    """The walservice as a client names it: `A` for one node, `A,B,C` for a cluster's
    nodes `walservice1..N` (every node recorded, so a client can follow the leader)."""
    nodes = [p.address for p in processes if p.name == "walservice" or p.name.removeprefix("walservice").isdigit()]
    return ",".join(nodes) or None


def endpoints(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, str]:
    """The running local stack's addresses by component name ("walservice": every node,
    comma-separated on a cluster; "pageserver"; "s3"), from stack.json."""
    running = [p for p in _read_state(data_dir) if _alive(p.pid)]
    found = {p.name: p.address for p in running if not p.name.startswith("walservice")}
    if (walservice := walservice_address(running)) is not None:
        found["walservice"] = walservice
    return found


def _write_state(data_dir: Path, processes: list[ProcessRecord], default_tenant: str = "") -> None:
    body: dict[str, Any] = {"version": STATE_VERSION, "processes": [asdict(p) for p in processes]}
    if default_tenant:
        body["default_tenant"] = default_tenant
    if (ca := stack_ca(data_dir)) is not None:
        body["tls_ca"] = str(ca.resolve())
    write_durably(data_dir / STATE_FILE, json.dumps(body, indent=2).encode())


def _busy_port_error(port: int, name: str) -> SystemExit:
    return SystemExit(
        f"strata up: port {port} of the {name} is busy (another stack? `strata status --data-dir DIR` says what runs "
        "under DIR): free it, or pass --free-ports to put every component on a free port (`up` prints them all)"
    )


def _wal_on_disk(wal_dir: Path) -> tuple[int, int]:
    """(timelines, bytes of WAL) under a walservice data dir: what it checks before it listens."""
    root = wal_dir / "timelines"
    timelines = [d for d in root.glob("*/*") if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    size = sum(f.stat().st_size for tl in timelines for f in tl.rglob("*") if f.is_file())
    return len(timelines), size


def _say_recovery(spec: ComponentSpec) -> None:
    """Before a walservice starts on existing WAL: what it is about to check (it reads every segment first)."""
    if not spec.name.startswith("walservice"):
        return
    timelines, size = _wal_on_disk(Path(spec.args[spec.args.index("--data-dir") + 1]))
    if timelines:
        print(
            f"{spec.name}: checking {timelines} timeline(s), {size / 1e6:.1f} MB of WAL, before it listens "
            "(every segment's checksums) ...",
            flush=True,
        )


def _start(spec: ComponentSpec, data_dir: Path, env: dict[str, str] | None = None, free_ports: bool = False) -> ProcessRecord:
    port = spec.default_port
    if spec.fixed_port:
        if not _port_free(port):
            raise SystemExit(
                f"port {port} of {spec.name} is busy; the cluster's nodes name each other by the ports in "
                f"{data_dir / CLUSTER_FILE}: free it (or use a fresh --data-dir)"
            )
    elif free_ports:
        port = 0
    elif not _port_free(port):
        raise _busy_port_error(port, spec.name)
    _say_recovery(spec)
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{spec.name}.log"
    argv = [sys.executable, "-m", spec.module, "--listen", f"127.0.0.1:{port}", *spec.args]
    started = start_logged(argv, log_path, banner=f"--- strata up: {' '.join(argv)}", env=env, new_session=True)
    try:
        address = wait_listening(started, START_TIMEOUT_S)
    except NotListening as exc:
        if exc.returncode is not None:
            tail = "\n".join(exc.log_text.splitlines()[-20:])
            raise SystemExit(f"{spec.name} exited with code {exc.returncode} while starting; its log ends:\n{tail}") from None
        started.proc.kill()
        raise SystemExit(f"{spec.name} did not start listening within {START_TIMEOUT_S:.0f}s; see {log_path}") from None
    return ProcessRecord(spec.name, started.proc.pid, address, str(log_path), argv)


def cluster_ports(replicas: int, free_ports: bool = False) -> list[int]:
    """Ports for a walservice cluster, fixed before any node starts (each node's
    --peers names them all): 7676, 7677, ... (a busy one stops `up`), or with
    `free_ports` free ones."""
    if free_ports:
        return [free_port() for _ in range(replicas)]
    ports = [WALSERVICE_PORT + i for i in range(replicas)]
    for i, port in enumerate(ports):
        if not _port_free(port):
            raise _busy_port_error(port, f"walservice{i + 1}")
    return ports


def components(
    data_dir: Path, started: list[ProcessRecord], remote: str = "", replicas: int = 1, ports: list[int] | None = None
) -> list[ComponentSpec]:
    """The next component to start, given those already started (they depend on each other's addresses).
    With `replicas` > 1 the walservice is a cluster `walservice1..N` on `ports` (docs/design/0005-replication.md)."""
    addresses = {p.name: p.address for p in started}
    # The embedded remote storage, shared: WAL offload under tenants/<t>/timelines/<tl>/wal/,
    # layers and index_part.json beside it (docs/design/0003-remote-storage.md).
    remote = remote or f"file://{(data_dir / 'remote').resolve()}"
    if replicas > 1:
        assert ports is not None and len(ports) == replicas
        peers = ",".join(f"127.0.0.1:{port}" for port in ports)
        for i in range(1, replicas + 1):
            if f"walservice{i}" not in addresses:
                return [
                    ComponentSpec(
                        f"walservice{i}", "walservice", ports[i - 1],
                        ["--data-dir", str(data_dir / f"walservice{i}"), "--remote-storage", remote,
                         "--node-id", str(i), "--peers", peers],
                        fixed_port=True,
                    )
                ]
        addresses["walservice"] = peers
    if "walservice" not in addresses:
        return [
            ComponentSpec(
                "walservice", "walservice", WALSERVICE_PORT, ["--data-dir", str(data_dir / "walservice"), "--remote-storage", remote]
            )
        ]
    if "pageserver" not in addresses:
        return [
            ComponentSpec(
                "pageserver",
                "pageserver",
                PAGESERVER_PORT,
                [
                    "--data-dir", str(data_dir / "pageserver"), "--walservice", addresses["walservice"],
                    "--remote-storage", remote,
                ],
            )
        ]
    return []


def stack_ca(data_dir: Path) -> Path | None:
    """The CA of a data dir started with --tls (its tls/ directory is kept), else None."""
    ca = data_dir / TLS_DIR / CA_FILE
    return ca if ca.exists() else None


def _tls_args(data_dir: Path, wanted: bool) -> list[str]:
    """The TLS flags of every component: a --tls stack's (made on its first --tls
    `up`, kept after), also exported for this process's own connections; else none."""
    if not wanted and stack_ca(data_dir) is None:
        return []
    ca = make_local_ca(data_dir / TLS_DIR)
    os.environ[TLS_CA_ENV] = str(ca.ca.resolve())
    return ["--tls-cert", str(ca.cert.resolve()), "--tls-key", str(ca.key.resolve()), "--tls-ca", str(ca.ca.resolve())]


def up(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    running = [p for p in _read_state(data_dir) if _alive(p.pid)]
    if running:
        print(f"Strata is already running under {data_dir}:")
        _print_processes(running)
        if args.s3 != any(p.name == "s3" for p in running):
            print(f"note: it runs {'without' if args.s3 else 'with'} --s3; `{strata_command()} down{data_dir_flag(data_dir)}` first to restart it the other way")
        nodes = sum(1 for p in running if p.name.startswith("walservice"))
        if args.replicas is not None and args.replicas != nodes:
            print(f"note: it runs {nodes} walservice node(s), not --replicas {args.replicas}")
        _print_try(running, data_dir)
        return 0
    if not args.free_ports:
        # Both default ports or neither: a client that names one names the other (README, DESIGN.md).
        recorded = ClusterLayout.read(data_dir)
        replicas = recorded.replicas if recorded else (args.replicas or 1)
        defaults = [(WALSERVICE_PORT, "walservice")] if replicas == 1 else []  # a cluster's ports: cluster_ports
        for port, name in [*defaults, (PAGESERVER_PORT, "pageserver"), (stack_proxy.PROXY_PORT, "proxy")]:
            if not _port_free(port):
                raise _busy_port_error(port, name)
    data_dir.mkdir(parents=True, exist_ok=True)
    tls_args = _tls_args(data_dir, args.tls)
    started: list[ProcessRecord] = []
    remote, env = "", None
    try:
        if args.s3:
            remote, env = local_s3.REMOTE_URL, _start_s3(data_dir.resolve(), started, args.free_ports)
        else:
            local_s3.check_reuse(data_dir, f"file://{(data_dir / 'remote').resolve()}", "embedded")
        layout = cluster_layout(data_dir, args.replicas, args.free_ports)
        ports = layout.ports if layout.replicas > 1 else None
        tenant = ""
        while specs := components(data_dir.resolve(), started, remote, layout.replicas, ports):
            spec = replace(specs[0], args=[*specs[0].args, *tls_args])
            started.append(_start(spec, data_dir.resolve(), env, args.free_ports))
            if started[-1].name == "pageserver":
                tenant = _default_tenant(data_dir, started)
            _write_state(data_dir, started, tenant)
        started.append(_start_proxy(data_dir.resolve(), started, tenant, args, env, tls_args))
        _write_state(data_dir, started, tenant)
    except SystemExit:
        for p in started:
            _stop(p)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    print(f"Strata is up (data under {data_dir}):")
    _print_processes(started)
    if args.s3:
        s3 = started[0]
        print(f"\nRemote storage: {remote} on {s3.note}.")
        print("boto3 settings for it: " + " ".join(f"{k}={v}" for k, v in local_s3.boto3_env(f"http://{s3.address}").items()))
    print("\n" + stack_proxy.describe(started[-1].address))
    if tls_args:
        print(f"TLS: every component serves TLS with certificates signed by {stack_ca(data_dir)}; clients trust that CA "
              f"(`--tls-ca FILE`, `Client(tls_ca=...)`, or ${TLS_CA_ENV}); the commands below find it in stack.json.")
    _print_try(started, data_dir)
    return 0


def _start_proxy(
    data_dir: Path, started: list[ProcessRecord], tenant: str, args: argparse.Namespace, env: dict[str, str] | None, tls_args: list[str]
) -> ProcessRecord:
    """The proxy, serving the default tenant, once the pageserver is up."""
    pageserver = next(p for p in started if p.name == "pageserver")
    spec = ComponentSpec("proxy", "proxy", stack_proxy.PROXY_PORT,
                         [*stack_proxy.proxy_args(pageserver.address, walservice_address(started) or "", tenant, args), *tls_args])
    return _start(spec, data_dir, env, args.free_ports)


def _default_tenant(data_dir: Path, started: list[ProcessRecord]) -> str:
    """The default tenant (made on the first start), once the pageserver answers."""
    pageserver = next(p for p in started if p.name == "pageserver")
    try:
        return default_tenant.ensure(data_dir, pageserver.address, walservice_address(started) or "")
    except (grpc.RpcError, CorruptionError) as exc:
        detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
        raise SystemExit(f"strata up: could not set up the default tenant on the pageserver at {pageserver.address}: {detail}") from None


def _print_try(processes: list[ProcessRecord], data_dir: Path) -> None:
    """What to do next with a running stack (after `up`, and after an `up` that found it running):
    command lines that act on this stack when pasted, run the way this `strata` was."""
    wal = walservice_address(processes)
    strata, flag = strata_command(), data_dir_flag(data_dir)
    ca = stack_ca(data_dir)
    tls_env = f"{TLS_CA_ENV}={ca.resolve()} " if ca is not None else ""  # the bench does not read stack.json
    lines = [
        (f"{strata} db create notes{flag}", "a database (a named timeline of the default tenant)"),
        (f"{strata} db list{flag}", "the databases, with their LSNs"),
        (f"{strata} status{flag}", "what runs, tenants, timelines and their LSNs"),
        (f"{tls_env}{python_command()} -m bench.wal_append --quick --target {wal}", "durable appends/s against it (deletes its timelines after)"),
        (f"{strata} down{flag}", "stop it"),
    ]
    width = max(len(line) for line, _ in lines)
    print("\nTry:\n" + "\n".join(f"  {line:<{width}}   # {what}" for line, what in lines))
    print(f"\nSee the agent workflow on it (20 branches, migrations, an undo, time travel): {strata} demo{flag}")


def _start_s3(data_dir: Path, started: list[ProcessRecord], free_ports: bool = False) -> dict[str, str]:
    """Start the S3 server and make the bucket; returns the environment for the other components
    (a busy port 9000 is replaced by a free one: only those components and the printed settings name it)."""
    local_s3.check_reuse(data_dir, local_s3.REMOTE_URL, local_s3.server_kind())
    port = local_s3.DEFAULT_PORT if not free_ports and _port_free(local_s3.DEFAULT_PORT) else free_port()
    if port != local_s3.DEFAULT_PORT and not free_ports:
        print(f"note: port {local_s3.DEFAULT_PORT} is busy; the S3 server takes port {port} instead")
    server = local_s3.choose_server(data_dir, port)
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = (logs_dir / "s3.log").resolve()
    endpoint = f"http://127.0.0.1:{port}"
    proc = start_logged(
        server.argv, log_path, banner=f"--- strata up: {' '.join(server.argv)}", env={**os.environ, **server.env}, new_session=True
    ).proc
    started.append(ProcessRecord("s3", proc.pid, f"127.0.0.1:{port}", str(log_path), server.argv, server.note))
    _write_state(data_dir, started)
    local_s3.wait_and_create_bucket(proc, endpoint, log_path)
    return local_s3.child_env(endpoint)


def _stop(p: ProcessRecord) -> str:
    if not _alive(p.pid):
        return "was not running"
    os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if not _alive(p.pid):
            return "stopped"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    return f"killed (no exit within {STOP_GRACE_S:.0f}s of SIGTERM)"


def down(args: argparse.Namespace) -> int:
    processes = _read_state(args.data_dir)
    if not processes:
        print(f"Nothing is running under {args.data_dir}.")
        return 0
    for p in reversed(processes):
        print(f"{p.name:<12} pid {p.pid:<8} {_stop(p)}")
    (args.data_dir / STATE_FILE).unlink(missing_ok=True)
    return 0


def _print_processes(processes: list[ProcessRecord]) -> None:
    for p in processes:
        print(f"  {p.name:<12} {p.address:<22} pid {p.pid:<8} log {p.log}")


def status(args: argparse.Namespace) -> int:
    """What runs and where, and (when all of it is healthy) its tenants and timelines.
    `--json`: {"data_dir", "running", "processes": [{name, address, pid, log, note, health}],
    "tenants": [TenantInfo's fields + "timelines": [TimelineInfo's fields]]}."""
    processes = _read_state(args.data_dir)
    if not processes:
        if args.json:
            print_json({"data_dir": str(args.data_dir), "running": False, "processes": [], "tenants": []})
        else:
            print(f"Nothing is running under {args.data_dir} (start it with `{strata_command()} up{data_dir_flag(args.data_dir)}`).")
        return 1
    health = {}
    for p in processes:
        check = local_s3.health if p.name == "s3" else stack_proxy.health if p.name == "proxy" else _health
        health[p.name] = check(p.address) if _alive(p.pid) else "not running"
    healthy = all(state == "SERVING" for state in health.values())
    pageserver = next((p for p in processes if p.name == "pageserver"), None)
    tenants = _timelines(pageserver.address) if pageserver is not None and healthy else []
    if args.json:
        print_json({
            "data_dir": str(args.data_dir),
            "running": healthy,
            "processes": [{**asdict(p), "health": health[p.name]} for p in processes],
            "computes": _proxy_computes(processes, health),
            "tenants": [{**message_dict(tenant), "timelines": [message_dict(tl) for tl in timelines]} for tenant, timelines in tenants],
        })
        return 0 if healthy else 1
    print(f"{'component':<12} {'address':<22} {'pid':<8} health")
    for p in processes:
        print(f"{p.name:<12} {p.address:<22} {p.pid:<8} {health[p.name]}")
    for p in processes:
        if p.note:
            print(f"{p.name}: {p.note}")
    _print_computes(processes, health)
    if pageserver is not None and healthy:
        print(f"\n{len(tenants)} tenant(s)")
        for tenant, timelines in tenants:
            print(f"tenant {tenant.tenant_id}  page_size={tenant.page_size}  timelines={tenant.timeline_count}")
            for tl in timelines:
                parent = f"  branch of {tl.ancestor_timeline_id}@{tl.ancestor_lsn}" if tl.ancestor_timeline_id else ""
                print(f"  timeline {tl.timeline_id}  last_record_lsn={tl.last_record_lsn}  disk_consistent_lsn={tl.disk_consistent_lsn}{parent}")
    return 0 if healthy else 1


def _proxy_computes(processes: list[ProcessRecord], health: dict[str, str]) -> list[dict[str, Any]]:
    """The proxy's running computes (none when no proxy runs or it does not answer)."""
    proxy = next((p for p in processes if p.name == "proxy"), None)
    return stack_proxy.computes(proxy.address) if proxy is not None and health.get("proxy") == "SERVING" else []


def _print_computes(processes: list[ProcessRecord], health: dict[str, str]) -> None:
    proxy = next((p for p in processes if p.name == "proxy"), None)
    if proxy is None:
        return
    running = _proxy_computes(processes, health)
    print(f"\n{stack_proxy.describe(proxy.address)}\n{len(running)} compute(s) running")
    for c in running:
        at = f"@{c['lsn']}" if c.get("lsn") is not None else ""
        print(f"  {c['database']}{at}  pid {c['pid']}  idle {c['idle_s']}s{'  in a transaction' if c['in_transaction'] else ''}")


def _timelines(address: str) -> list[tuple[Any, list[Any]]]:
    """(TenantInfo, its TimelineInfos) for every tenant of the pageserver at `address`."""
    from strata.v1 import timeline_pb2, timeline_pb2_grpc

    with open_channel(address, []) as channel:
        stub = timeline_pb2_grpc.TimelineServiceStub(channel)
        tenants = stub.ListTenants(timeline_pb2.ListTenantsRequest(), timeout=5).tenants
        return [
            (tenant, list(stub.ListTimelines(timeline_pb2.TenantRef(tenant_id=tenant.tenant_id), timeout=5).timelines))
            for tenant in tenants
        ]


def main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"strata {command}")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where the stack keeps its data (default ./.strata)")
    if command == "status":
        parser.add_argument("--json", action="store_true", help="print it as one JSON object (exit code as without)")
    if command == "up":
        parser.add_argument(
            "--free-ports", action="store_true",
            help="put every component on a free port instead of 7676/6400 (`up` prints where each listens)",
        )
        stack_proxy.add_up_flags(parser)
        parser.add_argument(
            "--s3", action="store_true",
            help="also run a local S3 server (MinIO's `minio` if on PATH, else moto_server) as the remote storage",
        )
        parser.add_argument(
            "--tls", action="store_true",
            help="serve TLS everywhere (HTTPS on the proxy) with a local CA made under DIR/tls (kept: later `up`s use it too)",
        )
        parser.add_argument(
            "--replicas", type=replicas_arg, default=None,
            help="walservice nodes: 1, or 3 or 5 for a replicated cluster (default: what the data dir was first "
            f"started with, recorded in {CLUSTER_FILE}, else 1)",
        )
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[command](args)
