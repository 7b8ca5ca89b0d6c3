"""deploy/Dockerfile, deploy/docker-compose.yml and deploy/k8s/ checked against the code.

No Docker engine or cluster runs here, so these parse the files and check what would
otherwise only fail at deploy time: every command line parses with the component's own
argparse parser, every port agrees across --listen, container ports, probes, health
checks and Services, every address names a service that exists and listens there,
every environment variable is one the code or boto3 reads, and the image's entrypoint
is the console script pyproject.toml installs. For MinIO, each component's remote
storage is opened the code's own way (open_remote_storage, with exactly the
manifest's environment) and boto3's endpoint, region and credentials must be the
MinIO that the manifest serves (its --address, published ports, Service), with the
bucket the create-bucket step makes.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from botocore import configprovider
from botocore.credentials import EnvProvider
from setuptools import find_packages

from pageserver import server as pageserver_server
from strata.remote_storage.s3 import _BUCKET_NAME_RE, S3Storage
from strata.remote_storage.url import open_remote_storage
from tests.env import StrataEnv
from walservice import server as walservice_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PARSERS = {"walservice": walservice_server.build_parser, "pageserver": pageserver_server.build_parser}
STRATA_PACKAGES = ("strata", "walservice", "pageserver", "compute_shim", "gpu", "deploy")


def environment_variables_read() -> set[str]:
    """What boto3 (botocore) and Strata's own code read from the environment."""
    names = {EnvProvider.ACCESS_KEY, EnvProvider.SECRET_KEY}
    for _, env, *_ in configprovider.BOTOCORE_DEFAUT_SESSION_VARIABLES.values():
        names.update([env] if isinstance(env, str) else env or [])
    if "'AWS_ENDPOINT_URL'" in inspect.getsource(configprovider.ConfiguredEndpointProvider):
        names.add("AWS_ENDPOINT_URL")
    pattern = re.compile(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']""")
    for package in STRATA_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names.update(pattern.findall(path.read_text()))
    return names


ENV_READ = environment_variables_read()


def parse_command(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """`strata COMMAND ARGS...` (the image's entrypoint is `strata`) through that command's parser."""
    assert argv and argv[0] in PARSERS, f"{argv}: the first word must be one of {sorted(PARSERS)}"
    parser = PARSERS[argv[0]]()

    def refuse(message: str) -> NoReturn:
        raise AssertionError(f"`strata {shlex.join(argv)}` does not parse with `strata {argv[0]}`'s flags: {message}")

    parser.error = refuse  # type: ignore[method-assign]
    return argv[0], parser.parse_args(argv[1:])


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def s3_bucket(url: str) -> str:
    assert url.startswith("s3://"), f"--remote-storage={url}: expected s3://BUCKET/PREFIX"
    return url[len("s3://"):].split("/", 1)[0]


def test_env_var_list_is_what_boto3_and_the_code_read() -> None:
    # The check below is only as good as this set: it must know the four standard settings.
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= ENV_READ
    assert "AWS_ENDPOINT" not in ENV_READ and "MINIO_ROOT_USER" not in ENV_READ


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_package_and_runs_the_console_script() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entrypoint = yaml.safe_load(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    assert entrypoint == ["strata"] and pyproject["project"]["scripts"]["strata"] == "strata.cli:main"
    assert any(word == "RUN" and "pip install ." in rest for word, rest in instructions)
    # The walservice's C append codec needs a compiler at install time (optional: a
    # missing one would only show as a slower walservice, `event=append_codec codec=python`).
    install = next(rest for word, rest in instructions if word == "RUN" and "pip install ." in rest)
    assert "gcc" in install.split("pip install .")[0], "the image installs without a C compiler"

    copied = set()
    for word, rest in instructions:
        if word == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
                copied.add(source.rstrip("/"))
    # Everything `pip install .` needs: pyproject's readme and every package it would install.
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {p.split(".")[0] for p in find_packages(where=str(ROOT), include=include)}
    assert top_level and top_level <= copied, f"packages not copied into the image: {sorted(top_level - copied)}"

    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    defaults = {port_of(walservice_server.DEFAULT_LISTEN), port_of(pageserver_server.DEFAULT_LISTEN)}
    assert exposed == defaults == {7676, 6400}


# --- docker-compose.yml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_builds_the_image_from_the_repository(compose: dict[str, Any]) -> None:
    strata_services = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(strata_services) == {"walservice-1", "walservice-2", "walservice-3", "pageserver"}
    for name, service in strata_services.items():
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == ROOT, name
        assert (context / service["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_compose_commands_ports_and_env_match_the_code(compose: dict[str, Any]) -> None:
    services = compose["services"]
    minio = services["minio"]
    minio_port = port_of(minio["command"][minio["command"].index("--address") + 1])
    bucket_script = services["create-bucket"]["entrypoint"][-1]
    buckets = set(re.findall(r"mc mb (?:--ignore-existing )?local/([a-z0-9.-]+)", bucket_script))
    assert buckets == {"strata"}
    assert services["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"

    listening: dict[str, int] = {}
    commands: dict[str, argparse.Namespace] = {}
    for name, service in services.items():
        if "build" not in service:
            continue
        command, args = parse_command(service["command"])
        port = port_of(args.listen)
        assert args.listen.startswith("0.0.0.0:"), f"{name}: --listen={args.listen} is not reachable from other containers"
        (published,) = service["ports"]
        assert published.split(":")[1] == str(port), f"{name}: ports {service['ports']} do not publish --listen's {port}"
        listening[name] = port

        health = service["healthcheck"]["test"]
        assert health[1:4] == ["python", "-m", "deploy.healthcheck"] and port_of(health[4]) == port, f"{name}: {health}"

        assert s3_bucket(args.remote_storage) in buckets, f"{name}: --remote-storage={args.remote_storage}"
        assert service["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
        env = service["environment"]
        assert set(env) <= ENV_READ, f"{name}: {sorted(set(env) - ENV_READ)} are read by neither Strata nor boto3"
        assert env["AWS_ENDPOINT_URL"] == f"http://minio:{minio_port}"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"]
        )

        mounts = dict(v.split(":", 1)[::-1] for v in service["volumes"])
        assert str(args.data_dir) in mounts and mounts[str(args.data_dir)] in compose["volumes"], f"{name}: {mounts}"
        assert name == command or name.startswith(command + "-"), name
        commands[name] = args

    host_ports = [s["ports"][0].split(":")[0] for s in services.values() if "build" in s]
    assert len(set(host_ports)) == len(host_ports), f"two services publish the same host port: {host_ports}"

    # The walservice cluster: every node names the same --peers, in node-id order,
    # each entry a node service at the port it listens on.
    nodes = {name: args for name, args in commands.items() if parse_command(services[name]["command"])[0] == "walservice"}
    peers = {args.peers for args in nodes.values()}
    assert len(peers) == 1, f"the nodes disagree on --peers: {peers}"
    peer_list = peers.pop().split(",")
    assert len(peer_list) == len(nodes) == 3
    for name, args in nodes.items():
        host, port = peer_list[args.node_id - 1].rsplit(":", 1)
        assert host == name and int(port) == listening[name], f"{name}: --node-id={args.node_id} but --peers names {host}:{port} there"

    # The pageserver streams from the walservice service, at the port it listens on.
    _, pageserver = parse_command(services["pageserver"]["command"])
    for address in pageserver.walservice.split(","):
        host, port = address.rsplit(":", 1)
        assert host in listening and services[host]["command"][0] == "walservice" and int(port) == listening[host], address
    assert sorted(pageserver.walservice.split(",")) == sorted(peer_list), "the pageserver should read from every node"
    for node in nodes:
        assert services["pageserver"]["depends_on"][node]["condition"] == "service_healthy"


def test_compose_health_check_command_works(tmp_path: Path) -> None:
    """The health check the compose file runs, against a real walservice and a closed port."""
    env = StrataEnv(tmp_path)
    try:
        wal = env.walservice()
        ok = subprocess.run([sys.executable, "-m", "deploy.healthcheck", wal.address], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        wal.stop()
        down = subprocess.run([sys.executable, "-m", "deploy.healthcheck", wal.address], capture_output=True, text=True, timeout=60)
        assert down.returncode == 1 and "unreachable" in down.stderr, down.stderr
    finally:
        env.teardown()


# --- Kubernetes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization.yaml resources {sorted(listed)} != files {sorted(on_disk)}"
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def workloads(objects: dict[tuple[str, str], dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for (kind, name), obj in objects.items():
        if kind in ("StatefulSet", "Deployment"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield name, obj, container


def config_keys(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    obj = objects.get((kind, name))
    assert obj is not None, f"no {kind} {name!r} in deploy/k8s"
    return dict(obj.get("data") or {}) | dict(obj.get("stringData") or {})


def container_env(objects: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        env |= config_keys(objects, "ConfigMap" if "configMapRef" in source else "Secret", ref["name"])
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            keys = config_keys(objects, "Secret", ref["name"])
            assert ref["key"] in keys, f"{item['name']}: Secret {ref['name']} has no key {ref['key']}"
            env[item["name"]] = keys[ref["key"]]
        else:
            env[item["name"]] = item["value"]
    return env


def services_for(objects: dict[tuple[str, str], dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        obj for (kind, _), obj in objects.items()
        if kind == "Service" and obj["spec"]["selector"].items() <= labels.items()
    ]


def test_k8s_workloads_match_the_code(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    minio_service = k8s[("Service", "minio")]
    job_script = k8s[("Job", "strata-create-bucket")]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    buckets = set(re.findall(r"mc mb (?:--ignore-existing )?local/([a-z0-9.-]+)", job_script))
    assert buckets == {"strata"}

    seen = {}
    for name, workload, container in workloads(k8s):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        if workload["kind"] == "StatefulSet":
            assert ("Service", workload["spec"]["serviceName"]) in k8s, f"{name}: serviceName names no Service"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # Every Service in front of the pods reaches a port the container declares, on the same number.
        for service in services_for(k8s, labels):
            for sp in service["spec"]["ports"]:
                target = ports.get(sp["targetPort"], sp["targetPort"])
                assert target in ports.values() and sp["port"] == target, f"Service {service['metadata']['name']}: {sp}"
        assert services_for(k8s, labels), f"{name}: no Service selects its pods"
        if container["image"] != "strata":
            continue

        command, args = parse_command(container["args"])
        seen[command] = (workload, args, ports)
        port = port_of(args.listen)
        assert args.listen.startswith("0.0.0.0:") and list(ports.values()) == [port], f"{name}: {args.listen} vs {ports}"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name}: {probe}"

        env = container_env(k8s, container)
        assert set(env) <= ENV_READ, f"{name}: {sorted(set(env) - ENV_READ)} are read by neither Strata nor boto3"
        endpoint = env["AWS_ENDPOINT_URL"]
        assert endpoint == f"http://{minio_service['metadata']['name']}:{minio_service['spec']['ports'][0]['port']}"
        assert s3_bucket(args.remote_storage) in buckets, f"{name}: --remote-storage={args.remote_storage}"

        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        assert mounts.get(str(args.data_dir)) in claims, f"{name}: --data-dir={args.data_dir} is not on a volume"

    assert set(seen) == {"walservice", "pageserver"}
    # The pageserver names walservice pods by their stable headless-Service addresses.
    wal_set, wal_args, _ = seen["walservice"]
    headless = k8s[("Service", wal_set["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    _, page_args, _ = seen["pageserver"]
    for address in page_args.walservice.split(","):
        match = re.fullmatch(r"(?P<set>[a-z0-9-]+)-(?P<ordinal>\d+)\.(?P<service>[a-z0-9-]+):(?P<port>\d+)", address)
        assert match, f"--walservice entry {address!r}: expected STATEFULSET-N.HEADLESS-SERVICE:PORT"
        assert match["set"] == wal_set["metadata"]["name"] and match["service"] == headless["metadata"]["name"], address
        assert int(match["ordinal"]) < wal_set["spec"]["replicas"], address
        assert int(match["port"]) == port_of(wal_args.listen), address


def test_minio_credentials_are_the_ones_strata_uses(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    minio = next(c for _, _, c in workloads(k8s) if c["name"] == "minio")
    strata_container = next(c for _, _, c in workloads(k8s) if c["image"] == "strata")
    minio_env, strata_env = container_env(k8s, minio), container_env(k8s, strata_container)
    assert (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"]) == (
        strata_env["AWS_ACCESS_KEY_ID"], strata_env["AWS_SECRET_ACCESS_KEY"]
    )


# --- MinIO: what the code reads, against what MinIO serves ---------------------------

MINIO_DEFAULT_REGION = "us-east-1"  # MinIO's region unless MINIO_REGION says otherwise


def storage_as_configured(url: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    """The remote storage a component opens for `--remote-storage=url` with exactly `env`
    (plus nothing from this machine's AWS settings): the code's own path, open_remote_storage."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("BOTO"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage = open_remote_storage(url)
    assert isinstance(storage, S3Storage), f"--remote-storage={url} did not open S3 storage: {storage!r}"
    return storage


def assert_reaches_minio(
    where: str, storage: S3Storage, *, endpoint: str, bucket: str, user: str, password: str
) -> None:
    client = storage._client
    assert client.meta.endpoint_url == endpoint, f"{where}: boto3 sends to {client.meta.endpoint_url}, MinIO is at {endpoint}"
    assert client.meta.region_name == MINIO_DEFAULT_REGION, f"{where}: region {client.meta.region_name}"
    credentials = client._request_signer._credentials
    assert credentials is not None, f"{where}: boto3 finds no credentials"
    frozen = credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key) == (user, password), f"{where}: not MinIO's root credentials"
    assert storage.bucket == bucket, f"{where}: bucket {storage.bucket}, the one made is {bucket}"


def minio_address_flag(argv: list[str], flag: str) -> int:
    """The port of MinIO's `--address :PORT` / `--console-address :PORT`."""
    assert flag in argv, f"minio {argv}: no {flag}"
    return port_of(argv[argv.index(flag) + 1])


def made_bucket(script: str) -> tuple[str, str]:
    """(the alias URL, the bucket) of the `mc alias set local URL ... && mc mb local/BUCKET` script."""
    alias = re.search(r"mc alias set local (\S+) ", script)
    buckets = re.findall(r"mc mb (?:--ignore-existing )?local/([a-z0-9.-]+)", script)
    assert alias and len(buckets) == 1, script
    assert _BUCKET_NAME_RE.fullmatch(buckets[0]), f"bucket {buckets[0]!r} is not a name S3Storage accepts"
    return alias[1], buckets[0]


def test_compose_minio_is_what_the_code_reads(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    minio = services["minio"]
    api_port = minio_address_flag(minio["command"], "--address")
    console_port = minio_address_flag(minio["command"], "--console-address")
    published = {int(p.split(":")[1]): int(p.split(":")[0]) for p in minio["ports"]}
    assert set(published) == {api_port, console_port}, f"minio publishes {minio['ports']}, serves {api_port}, {console_port}"
    endpoint = f"http://minio:{api_port}"
    assert minio["command"][:2] == ["server", "/data"] and any(v.endswith(":/data") for v in minio["volumes"])

    maker = services["create-bucket"]
    alias_url, bucket = made_bucket(maker["entrypoint"][-1])
    assert alias_url == endpoint, f"create-bucket talks to {alias_url}, MinIO serves {endpoint}"
    assert maker["environment"] == minio["environment"], "create-bucket logs in with MinIO's root credentials"
    user, password = minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert "MINIO_REGION" not in minio["environment"]

    for name, service in services.items():
        if "build" not in service:
            continue
        _, args = parse_command(service["command"])
        assert service["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully", name
        storage = storage_as_configured(args.remote_storage, service["environment"], monkeypatch)
        assert_reaches_minio(name, storage, endpoint=endpoint, bucket=bucket, user=user, password=password)


def test_k8s_minio_is_what_the_code_reads(
    k8s: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    minio_set = k8s[("StatefulSet", "minio")]
    minio = next(c for c in minio_set["spec"]["template"]["spec"]["containers"] if c["name"] == "minio")
    api_port = minio_address_flag(minio["args"], "--address")
    container_ports = {p["name"]: p["containerPort"] for p in minio["ports"]}
    assert container_ports == {"s3": api_port}, f"minio declares {container_ports}, serves {api_port}"
    for probe in ("readinessProbe", "livenessProbe"):
        assert minio[probe]["httpGet"]["port"] in ("s3", api_port), probe
    service = k8s[("Service", "minio")]
    assert service["spec"]["selector"].items() <= minio_set["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert container_ports.get(service_port["targetPort"], service_port["targetPort"]) == api_port
    endpoint = f"http://{service['metadata']['name']}:{service_port['port']}"
    mounts = {m["mountPath"] for m in minio["volumeMounts"]}
    assert minio["args"][:2] == ["server", "/data"] and "/data" in mounts

    minio_env = container_env(k8s, minio)
    user, password = minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"]
    assert "MINIO_REGION" not in minio_env
    job = k8s[("Job", "strata-create-bucket")]["spec"]["template"]["spec"]["containers"][0]
    alias_url, bucket = made_bucket(job["command"][-1])
    assert alias_url == endpoint, f"the bucket Job talks to {alias_url}, the minio Service is {endpoint}"
    assert container_env(k8s, job) == minio_env, "the bucket Job logs in with MinIO's root credentials"

    strata_containers = [(name, c) for name, _, c in workloads(k8s) if c["image"] == "strata"]
    assert {name for name, _ in strata_containers} >= {"walservice", "pageserver"}
    for name, container in strata_containers:
        _, args = parse_command(container["args"])
        storage = storage_as_configured(args.remote_storage, container_env(k8s, container), monkeypatch)
        assert_reaches_minio(name, storage, endpoint=endpoint, bucket=bucket, user=user, password=password)
