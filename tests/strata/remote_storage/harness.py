"""What the strata/remote_storage tests share (and tests elsewhere that need S3):
moto in process and as a moto_server subprocess over HTTP, the backends
opened the tests' way, an injected clock and jitter.

Sleeps, the clock and the jitter are injected: the retry tests assert on the
sleeps asked for, never on wall time.
"""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import xxhash
from moto import mock_aws

from strata.ids import TenantId, TimelineId
from strata.local_process import free_port
from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.layout import timeline_key
from strata.remote_storage.local_fs import LocalFsStorage
from strata.remote_storage.s3 import MiB, RetryPolicy, S3Storage

TENANT = TenantId("a1" * 16)
TIMELINE = TimelineId("b2" * 16)
INDEX_KEY = timeline_key(TENANT, TIMELINE, "index_part.json")
LAYER_KEY = timeline_key(TENANT, TIMELINE, "000000067F0000000000000000000000-00000007FFFFFFFFFFFFFFFFFFFFFFFF__0000000001000000-0000000002000000")
STORAGE_PREFIX = "strata/remote"  # the S3 storages' prefix inside their bucket
TEST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.1, max_delay_s=1.0, max_total_s=30.0)
BACKENDS = ["file", "s3-moto", "s3-moto-server"]
BAD_KEYS = ["", "/tenants/t/index_part.json", "tenants/../etc/passwd", "..", "tenants//t", "tenants/t/", ".hidden", "tenants/./t", "a\0b"]
BAD_PREFIXES = ["/", "/tenants", "../", "tenants/../x", "tenants//", ".x", "tenants/.x"]


class FakeTime:
    """An injected clock: `sleep` records the delay and moves time on at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


class MaxJitter(random.Random):
    """Full jitter that always draws its cap, so the backoff sequence is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def s3_options(fake_time: FakeTime, **overrides: Any) -> dict[str, Any]:
    """Small parts and pages, so that tests cross multipart and pagination with little data."""
    options: dict[str, Any] = dict(
        multipart_threshold=5 * MiB,
        part_size=5 * MiB,  # S3's minimum
        list_page_size=2,
        delete_batch_size=2,
        retry=TEST_RETRY,
        sleep=fake_time.sleep,
        clock=fake_time.monotonic,
        rng=MaxJitter(),
    )
    return {**options, **overrides}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class MotoServer:
    """moto_server as a real subprocess on 127.0.0.1; `start` returns once it accepts connections."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not listen on {self.endpoint} within 30s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def create_bucket(self, bucket: str) -> None:
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(free_port(), tmp_path_factory.mktemp("moto_server") / "moto_server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Test credentials the standard boto3 way, and nothing from the machine's own AWS set-up."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return monkeypatch


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def retry_log() -> Iterator[list[str]]:
    """The `event=remote_retry` lines remote_storage logs, from any thread."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "event=remote_retry" in message:
                lines.append(message)

    logger = logging.getLogger("strata.remote_storage")
    handler = Collect()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextmanager
def open_backend(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, aws_env: pytest.MonkeyPatch, fake_time: FakeTime
) -> Iterator[RemoteStorage]:
    bucket = f"strata-test-{uuid.uuid4().hex[:12]}"
    if kind == "file":
        yield LocalFsStorage(tmp_path / "remote")
    elif kind == "s3-moto":
        with mock_aws():
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield S3Storage(bucket, STORAGE_PREFIX, **s3_options(fake_time))
    elif kind == "s3-moto-server":
        server: MotoServer = request.getfixturevalue("moto_server")
        server.create_bucket(bucket)
        aws_env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        yield S3Storage(bucket, STORAGE_PREFIX, **s3_options(fake_time))
    else:
        raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, aws_env: pytest.MonkeyPatch, fake_time: FakeTime
) -> Iterator[RemoteStorage]:
    with open_backend(request.param, request, tmp_path, aws_env, fake_time) as opened:
        yield opened


@pytest.fixture(params=["s3-moto", "s3-moto-server"])
def s3_storage(request: pytest.FixtureRequest, tmp_path: Path, aws_env: pytest.MonkeyPatch, fake_time: FakeTime) -> Iterator[S3Storage]:
    with open_backend(request.param, request, tmp_path, aws_env, fake_time) as opened:
        assert isinstance(opened, S3Storage)
        yield opened


@pytest.fixture
def server_storage(
    request: pytest.FixtureRequest, tmp_path: Path, aws_env: pytest.MonkeyPatch, fake_time: FakeTime
) -> Iterator[S3Storage]:
    """S3 over real HTTP, where a botocore hook can answer in the server's stead."""
    with open_backend("s3-moto-server", request, tmp_path, aws_env, fake_time) as opened:
        assert isinstance(opened, S3Storage)
        yield opened


def flip_stored_byte(storage: RemoteStorage, key: str, offset: int) -> None:
    """Damage the stored object behind the backend's back (its stored checksum stays)."""
    if isinstance(storage, LocalFsStorage):
        with open(storage.path_of(key), "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ 0x01]))
        return
    assert isinstance(storage, S3Storage)
    stored = storage.client.get_object(Bucket=storage.bucket, Key=storage.object_key(key))
    body = bytearray(stored["Body"].read())
    body[offset] ^= 0x01
    storage.client.put_object(Bucket=storage.bucket, Key=storage.object_key(key), Body=bytes(body), Metadata=stored["Metadata"])


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def checksum(data: bytes) -> int:
    return xxhash.xxh64_intdigest(data)
