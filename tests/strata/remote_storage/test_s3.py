"""strata/remote_storage/s3.py: listing inside the prefix, objects without
checksum metadata, then the retries under injected faults and a moto_server
that goes away for a few seconds."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

from strata.errors import CorruptionError, NotFound
from strata.remote_storage.interface import (
    RemoteAccessDenied,
    RemoteObject,
    RemoteStorageError,
    RemoteStorageUnavailable,
)
from strata.remote_storage.s3 import MiB, RetryPolicy, S3Storage
from tests.strata.remote_storage.harness import (
    INDEX_KEY,
    LAYER_KEY,
    STORAGE_PREFIX,
    FakeTime,
    MaxJitter,
    MotoServer,
    checksum,
    free_port,
    open_backend,
    s3_options,
    wait_until,
)


def test_s3_list_paginates_and_stays_inside_its_prefix(s3_storage: S3Storage) -> None:
    keys = [f"tenants/t/layer{i}" for i in range(5)]
    for key in keys:
        s3_storage.upload_bytes(b"x", key)
    client = s3_storage.client
    client.put_object(Bucket=s3_storage.bucket, Key="outside/tenants/t/layerX", Body=b"x")
    client.put_object(Bucket=s3_storage.bucket, Key=f"{STORAGE_PREFIX}-sibling/tenants/t/layerY", Body=b"x")
    pages: list[str] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kwargs: pages.append("page"))

    assert [o.key for o in s3_storage.list("tenants/")] == keys
    assert len(pages) == 3  # five keys, two a page
    assert client.head_object(Bucket=s3_storage.bucket, Key=f"{STORAGE_PREFIX}/{keys[0]}")["ContentLength"] == 1


def test_s3_object_without_checksum_metadata_is_checked_against_expected(s3_storage: S3Storage) -> None:
    s3_storage.client.put_object(Bucket=s3_storage.bucket, Key=s3_storage.object_key("tenants/foreign"), Body=b"from elsewhere")
    assert s3_storage.download_bytes("tenants/foreign") == b"from elsewhere"
    wrong = RemoteObject("tenants/foreign", len(b"from elsewhere"), checksum(b"something else"))
    with pytest.raises(CorruptionError, match="expected xxhash64"):
        s3_storage.download_bytes("tenants/foreign", wrong)


class FaultInjector:
    """Answers the next requests of one S3 operation in the server's stead, before they
    are sent (a botocore before-send hook): an HTTP status with S3's error body, or a
    connection error. Requests pass through once `faults` runs out."""

    CODES = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}

    def __init__(self, client: Any, operation: str, faults: Iterator[int | str], url_contains: str = "") -> None:
        self.faults = faults
        self.url_contains = url_contains
        self.injected = 0
        client.meta.events.register_first(f"before-send.s3.{operation}", self)

    def __call__(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        if self.url_contains not in request.url:
            return None
        fault = next(self.faults, None)
        if fault is None:
            return None
        self.injected += 1
        if fault == "connection":
            raise EndpointConnectionError(endpoint_url=request.url)
        assert isinstance(fault, int)
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.CODES[fault]}</Code><Message>injected</Message></Error>"
        return AWSResponse(request.url, fault, {"Content-Type": "application/xml"}, _RawBody(body.encode()))


class _RawBody:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def test_transient_errors_are_retried_with_backoff(
    server_storage: S3Storage, fake_time: FakeTime, retry_log: list[str]
) -> None:
    puts = FaultInjector(server_storage.client, "PutObject", iter([503, "connection", 500]))
    uploaded = server_storage.upload_bytes(b"layer bytes", LAYER_KEY)
    assert puts.injected == 3
    assert fake_time.sleeps == [0.1, 0.2, 0.4]  # full jitter's cap, doubling from base_delay_s
    assert [line.split("attempt=")[1].split()[0] for line in retry_log] == ["1", "2", "3"]
    assert all(f"op=upload key={LAYER_KEY}" in line for line in retry_log)
    assert "SlowDown" in retry_log[0] and "EndpointConnectionError" in retry_log[1] and "InternalError" in retry_log[2]

    gets = FaultInjector(server_storage.client, "GetObject", iter([503]))
    assert server_storage.download_bytes(LAYER_KEY, uploaded) == b"layer bytes"
    assert gets.injected == 1
    assert "op=download" in retry_log[3]


def test_a_failed_part_is_retried_alone(
    server_storage: S3Storage, fake_time: FakeTime, retry_log: list[str], tmp_path: Path
) -> None:
    data = random.Random(2).randbytes(2 * 5 * MiB + 1)
    src = tmp_path / "layer"
    src.write_bytes(data)
    parts = FaultInjector(server_storage.client, "UploadPart", iter(["connection", 503]), url_contains="partNumber=2")
    uploaded = server_storage.upload_file(src, LAYER_KEY)
    assert parts.injected == 2
    assert fake_time.sleeps == [0.1, 0.2]
    assert all("op=upload_part" in line and "part=2" in line for line in retry_log)
    assert server_storage.download_bytes(LAYER_KEY, uploaded) == data


def test_retries_end_with_a_clear_error(server_storage: S3Storage, fake_time: FakeTime) -> None:
    FaultInjector(server_storage.client, "PutObject", itertools.repeat(503))
    with pytest.raises(RemoteStorageUnavailable, match=f"op=upload key={LAYER_KEY} .*attempts=4 .*SlowDown"):
        server_storage.upload_bytes(b"never stored", LAYER_KEY)
    assert fake_time.sleeps == [0.1, 0.2, 0.4]
    assert not server_storage.exists(LAYER_KEY)


def test_retries_stop_at_the_time_budget(
    request: pytest.FixtureRequest, tmp_path: Path, aws_env: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    budget = RetryPolicy(max_attempts=100, base_delay_s=0.4, max_delay_s=10.0, max_total_s=1.0)
    with open_backend("s3-moto-server", request, tmp_path, aws_env, fake_time) as opened:
        assert isinstance(opened, S3Storage)
        storage = S3Storage(opened.bucket, STORAGE_PREFIX, **s3_options(fake_time, retry=budget))
        FaultInjector(storage.client, "HeadObject", itertools.repeat("connection"))
        with pytest.raises(RemoteStorageUnavailable, match="op=exists .*attempts=2 elapsed_s=0.4"):
            storage.exists(INDEX_KEY)
    assert fake_time.sleeps == [0.4]  # a second sleep of 0.8 would pass the 1.0 s budget


def test_permanent_errors_are_not_retried(
    server_storage: S3Storage, fake_time: FakeTime, tmp_path: Path, aws_env: pytest.MonkeyPatch
) -> None:
    FaultInjector(server_storage.client, "PutObject", iter([403]))
    with pytest.raises(RemoteAccessDenied, match="access denied .*AWS_ACCESS_KEY_ID"):
        server_storage.upload_bytes(b"x", INDEX_KEY)

    # A multipart upload refused halfway is aborted, not left to linger.
    data = random.Random(3).randbytes(5 * MiB + 1)
    FaultInjector(server_storage.client, "UploadPart", iter([403]), url_contains="partNumber=2")
    with pytest.raises(RemoteAccessDenied):
        server_storage.upload_bytes(data, LAYER_KEY)
    assert server_storage.client.list_multipart_uploads(Bucket=server_storage.bucket).get("Uploads", []) == []

    with pytest.raises(NotFound):
        server_storage.download_bytes("tenants/missing")
    no_bucket = S3Storage("strata-no-such-bucket", **s3_options(fake_time))
    with pytest.raises(RemoteStorageError, match="bucket does not exist"):
        no_bucket.upload_bytes(b"x", INDEX_KEY)
    assert fake_time.sleeps == []


class SleepGate:
    """An injected sleep that really sleeps and that a test can hold shut. `paused()`
    returns only once the sleeper is parked in it, so no request is in flight then."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._parked = False

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        with self._cond:
            self._parked = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._paused)
            self._parked = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._cond:
            self._paused = True
            if not self._cond.wait_for(lambda: self._parked, timeout=15):
                raise AssertionError("the uploader never went back to sleep")
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()


def test_upload_rides_out_remote_storage_down_for_a_few_seconds(
    tmp_path: Path, aws_env: pytest.MonkeyPatch, retry_log: list[str]
) -> None:
    server = MotoServer(free_port(), tmp_path / "moto_server.log")
    server.start()
    try:
        bucket = f"strata-test-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        aws_env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        gate = SleepGate()
        policy = RetryPolicy(max_attempts=1000, base_delay_s=0.05, max_delay_s=0.5, max_total_s=10.0)
        storage = S3Storage(bucket, STORAGE_PREFIX, retry=policy, sleep=gate.sleep)
        storage.upload_bytes(b"while up", "tenants/before")  # a pooled connection that will go stale

        server.stop()
        stopped_at = time.monotonic()
        data = b"uploaded while the store was down" * 100
        outcome: dict[str, Any] = {}

        def upload() -> None:
            try:
                outcome["uploaded"] = storage.upload_bytes(data, LAYER_KEY)
            except Exception as exc:  # reported by the assertions below
                outcome["error"] = exc

        uploader = threading.Thread(target=upload, name="uploader")
        uploader.start()
        wait_until(lambda: len(retry_log) >= 3, timeout=10, what="the upload to fail and back off")
        time.sleep(max(0.0, 1.5 - (time.monotonic() - stopped_at)))
        with gate.paused():  # the uploader waits in its backoff while the store comes back
            server.start()
            server.create_bucket(bucket)  # moto keeps its state in memory; a real store keeps the bucket
        uploader.join(timeout=20)
        assert not uploader.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["uploaded"] == RemoteObject(LAYER_KEY, len(data), checksum(data))
        assert storage.download_bytes(LAYER_KEY, outcome["uploaded"]) == data

        assert all(f"op=upload key={LAYER_KEY}" in line and "error=" in line for line in retry_log)
        assert any("EndpointConnectionError" in line for line in retry_log)
        attempts = [int(line.split("attempt=")[1].split()[0]) for line in retry_log]
        assert attempts == list(range(1, len(attempts) + 1))
    finally:
        server.stop()


def test_retry_policy_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(0)
    for attempt in range(1, 20):
        cap = min(1.0, 0.1 * 2 ** (attempt - 1))
        assert 0.0 <= policy.backoff(attempt, rng) <= cap
    assert [policy.backoff(a, MaxJitter()) for a in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.backoff(10_000, MaxJitter()) == 1.0
