"""pageserver/remote_storage.py: one suite over every backend (file://, S3 on moto
in process, S3 on a moto_server subprocess over HTTP), then S3's retries under
injected faults and a moto_server that goes away for a few seconds.

Sleeps, the clock and the jitter are injected: the retry tests assert on the
sleeps asked for, never on wall time.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
import xxhash
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

from pageserver.remote_storage import (
    MiB,
    LocalFsStorage,
    RemoteAccessDenied,
    RemoteObject,
    RemoteObjectExists,
    RemoteStorage,
    RemoteStorageError,
    RemoteStorageUnavailable,
    RetryPolicy,
    S3Storage,
    check_prefix,
    open_remote_storage,
    timeline_key,
)
from strata.errors import CorruptionError, NotFound
from strata.ids import TenantId, TimelineId

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# --- every backend ----------------------------------------------------------------------


def test_small_round_trip(storage: RemoteStorage, tmp_path: Path) -> None:
    data = b'{"format_version": 1}\n' * 20
    uploaded = storage.upload_bytes(data, INDEX_KEY)
    assert uploaded == RemoteObject(INDEX_KEY, len(data), checksum(data))
    assert storage.exists(INDEX_KEY)
    assert storage.download_bytes(INDEX_KEY) == data
    assert storage.download_bytes(INDEX_KEY, uploaded) == data

    dest = tmp_path / "local" / "timeline" / "index_part.json"  # directories made as needed
    assert storage.download_file(INDEX_KEY, dest, expected=uploaded) == uploaded
    assert dest.read_bytes() == data
    assert files_under(tmp_path / "local") == ["timeline/index_part.json"]  # no temp file left

    empty = storage.upload_bytes(b"", "tenants/empty")
    assert empty == RemoteObject("tenants/empty", 0, checksum(b""))
    assert storage.download_bytes("tenants/empty", empty) == b""


def test_multipart_size_round_trip(storage: RemoteStorage, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(2 * 5 * MiB + 12345)  # three 5 MiB parts at the tests' part size
    src = tmp_path / "layer"
    src.write_bytes(data)
    uploaded = storage.upload_file(src, LAYER_KEY, checksum=checksum(data))
    assert uploaded == RemoteObject(LAYER_KEY, len(data), checksum(data))

    dest = tmp_path / "downloaded" / "layer"
    assert storage.download_file(LAYER_KEY, dest, expected=uploaded) == uploaded
    assert dest.read_bytes() == data
    from_bytes = storage.upload_bytes(data, "tenants/from-bytes")
    assert storage.download_bytes("tenants/from-bytes", from_bytes) == data

    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage.object_key(LAYER_KEY))
        assert head["ETag"].endswith('-3"'), "expected a three-part multipart upload"
        assert head["Metadata"] == {"xxhash64": f"{checksum(data):016x}"}
        assert storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []


def test_upload_refuses_a_file_that_changed_since_it_was_written(storage: RemoteStorage, tmp_path: Path) -> None:
    src = tmp_path / "layer"
    src.write_bytes(b"layer as written")
    written_checksum = checksum(b"layer as written")
    src.write_bytes(b"layer as damaged")
    with pytest.raises(CorruptionError, match="changed on local disk"):
        storage.upload_file(src, LAYER_KEY, checksum=written_checksum)
    assert not storage.exists(LAYER_KEY)
    assert storage.list() == []
    if isinstance(storage, LocalFsStorage):
        assert files_under(storage.root) == []  # the temp file went too


def test_overwrite_replaces_the_object(storage: RemoteStorage) -> None:
    storage.upload_bytes(b"index v1", INDEX_KEY, overwrite=True)
    v2 = storage.upload_bytes(b"index version 2", INDEX_KEY, overwrite=True)
    assert storage.download_bytes(INDEX_KEY, v2) == b"index version 2"
    assert storage.list() == [RemoteObject(INDEX_KEY, len(b"index version 2"), None)]


@pytest.mark.parametrize("size", [10, 6 * MiB])  # one PUT; a multipart upload (s3_options: 5 MiB)
def test_uploads_are_create_only(storage: RemoteStorage, tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    first = storage.upload_bytes(data, LAYER_KEY)
    # The same bytes again (a retried or repeated upload): a no-op success.
    assert storage.upload_bytes(data, LAYER_KEY) == first
    src = tmp_path / "layer"
    src.write_bytes(data)
    assert storage.upload_file(src, LAYER_KEY) == first
    # Other bytes: refused, and the object is unchanged.
    other = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(RemoteObjectExists, match="create-only"):
        storage.upload_bytes(other, LAYER_KEY)
    src.write_bytes(other)
    with pytest.raises(RemoteObjectExists):
        storage.upload_file(src, LAYER_KEY)
    assert storage.download_bytes(LAYER_KEY, first) == data
    assert storage.list() == [RemoteObject(LAYER_KEY, size, None)]
    if isinstance(storage, LocalFsStorage):
        assert sorted(p.name for p in storage.path_of(LAYER_KEY).parent.iterdir()) == [
            f".{storage.path_of(LAYER_KEY).name}.xxhash64", storage.path_of(LAYER_KEY).name,
        ]  # no temp file left behind


def test_list_by_prefix(storage: RemoteStorage) -> None:
    keys = [
        "tenants/a/timelines/x/index_part.json",
        "tenants/a/timelines/x/layer1",
        "tenants/a/timelines/y/layer2",
        "tenants/ab/timelines/z/layer3",
        "tenants/b/f",
        "wal/a/seg1",
    ]
    for size, key in enumerate(keys):
        storage.upload_bytes(b"x" * size, key)

    assert storage.list() == [RemoteObject(key, size, None) for size, key in enumerate(keys)]
    assert [o.key for o in storage.list("tenants/a/timelines/x/")] == keys[:2]
    assert [o.key for o in storage.list("tenants/a/")] == keys[:3]
    assert [o.key for o in storage.list("tenants/a")] == keys[:4]  # a string prefix, as in S3
    assert [o.key for o in storage.list("wal/a/se")] == ["wal/a/seg1"]
    assert [o.key for o in storage.list("tenants/b/f")] == ["tenants/b/f"]
    assert storage.list("tenants/c/") == []
    assert storage.list("nowhere") == []


def test_delete_in_batches_and_missing_keys_are_fine(storage: RemoteStorage) -> None:
    keys = [f"tenants/t/timelines/tl/layer{i}" for i in range(5)]
    for key in keys:
        storage.upload_bytes(key.encode(), key)
    storage.delete(keys[:3] + ["tenants/t/timelines/tl/never-uploaded", "nowhere/at/all"])
    assert [o.key for o in storage.list()] == keys[3:]
    assert not storage.exists(keys[0])
    assert storage.exists(keys[4])
    with pytest.raises(NotFound):
        storage.download_bytes(keys[0])

    storage.delete([])
    storage.delete(keys)
    assert storage.list() == []
    if isinstance(storage, LocalFsStorage):
        assert files_under(storage.root) == []  # sidecars went with their objects


def test_bad_keys_and_prefixes_are_rejected(storage: RemoteStorage, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    for key in BAD_KEYS:
        calls: list[Callable[[], object]] = [
            lambda: storage.upload_bytes(b"x", key),
            lambda: storage.upload_file(src, key),
            lambda: storage.download_bytes(key),
            lambda: storage.download_file(key, tmp_path / "dest"),
            lambda: storage.exists(key),
            lambda: storage.delete(["tenants/fine", key]),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="is invalid"):
                call()
    for prefix in BAD_PREFIXES:
        with pytest.raises(ValueError, match="prefix=.* is invalid"):
            storage.list(prefix)
    assert storage.list() == []


def test_missing_key_is_not_found(storage: RemoteStorage, tmp_path: Path, fake_time: FakeTime) -> None:
    missing = timeline_key(TENANT, TIMELINE, "missing-layer")
    with pytest.raises(NotFound, match="missing-layer"):
        storage.download_bytes(missing)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(NotFound):
        storage.download_file(missing, downloads / "missing-layer")
    assert files_under(downloads) == []
    assert not storage.exists(missing)
    storage.upload_bytes(b"x", "tenants/dir/object")
    with pytest.raises(NotFound):
        storage.download_bytes("tenants/dir")  # a prefix of a key names no object
    assert fake_time.sleeps == []  # a 404 is not retried


def test_corrupted_object_is_detected_and_leaves_no_file(storage: RemoteStorage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    uploaded = storage.upload_bytes(data, LAYER_KEY)
    flip_stored_byte(storage, LAYER_KEY, offset=1000)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for expected in (None, uploaded):  # the stored checksum catches it, with or without one from an index
        with pytest.raises(CorruptionError, match="xxhash64"):
            storage.download_file(LAYER_KEY, downloads / "layer", expected=expected)
        assert files_under(downloads) == []
    with pytest.raises(CorruptionError):
        storage.download_bytes(LAYER_KEY)


def test_download_checks_what_the_caller_expects(storage: RemoteStorage, tmp_path: Path) -> None:
    uploaded = storage.upload_bytes(b"abc", INDEX_KEY)
    dest = tmp_path / "downloads" / "index_part.json"
    with pytest.raises(CorruptionError, match="expected size=4"):
        storage.download_file(INDEX_KEY, dest, expected=replace(uploaded, size=4))
    assert not dest.parent.exists() or files_under(dest.parent) == []
    assert uploaded.checksum is not None
    with pytest.raises(CorruptionError, match="expected xxhash64"):
        storage.download_bytes(INDEX_KEY, replace(uploaded, checksum=uploaded.checksum ^ 1))
    with pytest.raises(ValueError, match="not key="):
        storage.download_bytes(INDEX_KEY, replace(uploaded, key="tenants/other"))
    [listed] = storage.list(INDEX_KEY)  # size only: a listing knows no checksum
    assert storage.download_bytes(INDEX_KEY, listed) == b"abc"


# --- file:// ---------------------------------------------------------------------------


def test_local_objects_are_plain_files_with_a_checksum_sidecar(tmp_path: Path) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    uploaded = storage.upload_bytes(b"hello", "tenants/t/f")
    assert (tmp_path / "remote" / "tenants" / "t" / "f").read_bytes() == b"hello"
    assert (tmp_path / "remote" / "tenants" / "t" / ".f.xxhash64").read_text() == f"{uploaded.checksum:016x}\n"
    # What a crashed upload or download leaves is hidden, never an object.
    (tmp_path / "remote" / "tenants" / "t" / ".f.k3j2h1.upload").write_bytes(b"partial")
    assert storage.list() == [RemoteObject("tenants/t/f", 5, None)]
    # An object put there by hand has no sidecar: it downloads, checked against `expected` only.
    (tmp_path / "remote" / "tenants" / "t" / "by-hand").write_bytes(b"manual")
    assert storage.download_bytes("tenants/t/by-hand") == b"manual"
    with pytest.raises(CorruptionError):
        storage.download_bytes("tenants/t/by-hand", RemoteObject("tenants/t/by-hand", 6, checksum(b"other!")))


def test_local_crash_at_any_step_of_an_overwrite_leaves_a_readable_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pageserver.remote_storage as remote_storage

    storage = LocalFsStorage(tmp_path / "remote")
    old = storage.upload_bytes(b"old index", INDEX_KEY)
    object_path = storage.path_of(INDEX_KEY)
    sidecar = object_path.with_name(f".{object_path.name}.xxhash64")
    real_replace = os.replace

    def crash_before_the_rename(src: Any, dst: Any) -> None:
        if Path(dst) == object_path:
            raise OSError("simulated crash before the rename")
        real_replace(src, dst)

    # Step 1 done (the sidecar accepts both), crash before step 2: the old object stays and verifies.
    monkeypatch.setattr(os, "replace", crash_before_the_rename)
    with pytest.raises(OSError, match="simulated crash"):
        storage.upload_bytes(b"new index", INDEX_KEY, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(sidecar.read_text().split()) == 2
    assert storage.download_bytes(INDEX_KEY, old) == b"old index"

    # Steps 1 and 2 done, crash before step 3: the new object is in place and verifies.
    real_write_durably = remote_storage.write_durably
    writes: list[bytes] = []

    def crash_at_the_second_sidecar_write(path: Path, data: bytes) -> None:
        writes.append(data)
        if len(writes) == 2:
            raise OSError("simulated crash before the sidecar shrinks")
        real_write_durably(path, data)

    monkeypatch.setattr(remote_storage, "write_durably", crash_at_the_second_sidecar_write)
    with pytest.raises(OSError, match="simulated crash"):
        storage.upload_bytes(b"newer index", INDEX_KEY, overwrite=True)
    monkeypatch.setattr(remote_storage, "write_durably", real_write_durably)
    assert storage.download_bytes(INDEX_KEY) == b"newer index"

    # The next upload leaves one checksum and no stray files.
    final = storage.upload_bytes(b"final index", INDEX_KEY, overwrite=True)
    assert sidecar.read_text() == f"{final.checksum:016x}\n"
    assert files_under(storage.root) == [f"tenants/{TENANT}/timelines/{TIMELINE}/.index_part.json.xxhash64", INDEX_KEY]


def test_local_reader_rereads_an_object_replaced_while_it_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalFsStorage(tmp_path / "remote")
    storage.upload_bytes(b"old bytes", INDEX_KEY)
    real_read_sidecar = storage._read_sidecar
    raced: list[bool] = []

    def overwrite_between_open_and_sidecar(path: Path) -> frozenset[int] | None:
        if not raced:  # the reader has the old file open: a writer replaces it completely now
            raced.append(True)
            storage.upload_bytes(b"new bytes", INDEX_KEY, overwrite=True)
        return real_read_sidecar(path)

    monkeypatch.setattr(storage, "_read_sidecar", overwrite_between_open_and_sidecar)
    assert storage.download_bytes(INDEX_KEY) == b"new bytes"
    assert raced == [True]


# --- s3:// -----------------------------------------------------------------------------


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


# --- shared ----------------------------------------------------------------------------


def test_retry_policy_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(0)
    for attempt in range(1, 20):
        cap = min(1.0, 0.1 * 2 ** (attempt - 1))
        assert 0.0 <= policy.backoff(attempt, rng) <= cap
    assert [policy.backoff(a, MaxJitter()) for a in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.backoff(10_000, MaxJitter()) == 1.0


def test_open_remote_storage(tmp_path: Path, aws_env: pytest.MonkeyPatch) -> None:
    local = open_remote_storage(f"file://{tmp_path}/remote")
    assert isinstance(local, LocalFsStorage)
    assert local.root == tmp_path / "remote" and local.root.is_dir()

    s3 = open_remote_storage("s3://my-bucket/strata/prod/")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix) == ("my-bucket", "strata/prod")
    assert s3.object_key(INDEX_KEY) == f"strata/prod/{INDEX_KEY}"
    bare = open_remote_storage("s3://my-bucket")
    assert isinstance(bare, S3Storage) and bare.prefix == "" and bare.object_key(INDEX_KEY) == INDEX_KEY


@pytest.mark.parametrize(
    "url", ["", "/var/lib/strata", "http://example.com/x", "s3://", "s3:///prefix", "file://", "S3://bucket", "gs://bucket"]
)
def test_open_remote_storage_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected file://DIR .* or s3://BUCKET\[/PREFIX\]"):
        open_remote_storage(url)


def test_open_remote_storage_rejects_bad_buckets_and_prefixes() -> None:
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        open_remote_storage("s3://Bad_Bucket/x")
    with pytest.raises(ValueError, match="prefix=.* is invalid"):
        open_remote_storage("s3://bucket/strata/../other")


def test_keys_and_prefixes() -> None:
    assert INDEX_KEY == f"tenants/{TENANT}/timelines/{TIMELINE}/index_part.json"
    with pytest.raises(ValueError, match="contains '..'"):
        timeline_key(TENANT, TIMELINE, "../escape")
    for prefix in ["", "tenants/", "tenants/a", f"tenants/{TENANT}/timelines/"]:
        assert check_prefix(prefix) == prefix
