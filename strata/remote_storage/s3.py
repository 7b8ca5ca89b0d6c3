"""The S3 backend: `s3://BUCKET/PREFIX` on AWS or MinIO, through boto3.

The object for key K is `PREFIX/K` in the bucket. Configured the standard boto3
way: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.

# Consistency

- Create-only: PutObject and CompleteMultipartUpload carry `If-None-Match: *`,
  which S3, MinIO and moto answer 412 when an object is there; the same bytes
  again (the stored size and checksum match) are a no-op success.
- An overwrite is a plain PUT, which replaces the object at once; S3 keeps
  whichever overwriting PUT finished last, and lets exactly one conditional
  create win.
- Read-after-write and list-after-write: S3 is strongly consistent since
  December 2020, MinIO always was.

# Checksums

Every object's xxhash64 goes up with it as user metadata `x-amz-meta-xxhash64`
(16 hex digits), in the request that creates the object, so the file is hashed
before it is sent (and re-read for the parts of a multipart upload).
Downloads check it (verified.py); an object put there by another tool has none.

# Retries

Transient errors are retried: connection failures and timeouts, truncated
reads, HTTP 5xx, 408 and 429, and the throttling codes (SlowDown, ...). Each
request gets up to `RetryPolicy.max_attempts` attempts within
`RetryPolicy.max_total_s`, sleeping between them with full jitter,
uniform(0, min(max_delay_s, base_delay_s * 2**(attempt-1))), so that many
clients do not hammer a recovering store in step. Each retry logs one line,
`event=remote_retry op=... key=... attempt=... delay_s=... error=...`. When the
attempts or the time run out: `RemoteStorageUnavailable` (UNAVAILABLE), naming
the last error. Permanent errors are not retried: 404 is `NotFound`, 403 and
missing credentials `RemoteAccessDenied`, anything else `RemoteStorageError`.
botocore's own retries are off (total_max_attempts=1): this is the one retry
policy, so attempts do not multiply and tests can inject the sleep, the clock
and the RNG. A multipart upload retries each part on its own and aborts the
upload if it fails for good (best effort: give the bucket a lifecycle rule for
incomplete multipart uploads to sweep what an abort misses).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import xxhash
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import SSLError

from strata.errors import CorruptionError, NotFound, StrataError
from strata.logs import event_logger
from strata.remote_storage.interface import (
    Listing,
    RemoteAccessDenied,
    RemoteObject,
    RemoteObjectExists,
    RemoteStorageError,
    RemoteStorageUnavailable,
)
from strata.remote_storage.layout import check_key, check_prefix
from strata.remote_storage.verified import (
    CHUNK_SIZE,
    Fetched,
    VerifyingStorage,
    check_claimed,
    copy_hashing,
    parse_checksum,
)

MiB = 1024 * 1024
# S3's limits on multipart uploads: every part but the last at least 5 MiB, at most 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
MAX_DELETE_BATCH = 1000

# S3 error codes worth another try (with any 5xx, 408 and 429 status).
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
    | {"TooManyRequests", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
    # 409: a conditional write raced another write to the key; S3 says to retry.
    | {"ConditionalRequestConflict"}
)
_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"})
_BUCKET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")

log = event_logger("remote_storage")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How S3 requests are retried (see "Retries"). The defaults ride out
    about a minute of outage; an upload queue that must never give up retries
    the whole operation on RemoteStorageUnavailable."""

    max_attempts: int = 10
    base_delay_s: float = 0.1
    max_delay_s: float = 10.0
    max_total_s: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to sleep after failed attempt number `attempt` (from 1): full jitter."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt - 1, 62))
        return rng.uniform(0.0, cap)


class _PreconditionFailed(Exception):
    """A conditional request (If-None-Match: *) found an object under its key."""


class _DeleteFailed(Exception):
    """DeleteObjects answered 200 but listed keys it could not delete."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        shown = ", ".join(f"key={e.get('Key')} code={e.get('Code')}" for e in errors[:5])
        super().__init__(f"{len(errors)} keys not deleted: {shown}")
        self.codes = frozenset(e.get("Code", "") for e in errors)


class S3Storage(VerifyingStorage):
    """`s3://BUCKET/PREFIX`: the object for key K is PREFIX/K in BUCKET.

    With no `client`, it makes one the standard boto3 way: AWS_ENDPOINT_URL (or
    `endpoint_url`), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (else
    botocore's region chain), botocore's retries off (see "Retries"). Objects of
    at least `multipart_threshold` bytes go up in `part_size` parts,
    `upload_concurrency` at a time; `list_page_size` and `delete_batch_size`
    bound each ListObjectsV2 and DeleteObjects request.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: BaseClient | None = None,
        endpoint_url: str | None = None,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        upload_concurrency: int = 4,
        list_page_size: int = 1000,
        delete_batch_size: int = MAX_DELETE_BATCH,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not _BUCKET_NAME_RE.fullmatch(bucket):
            raise ValueError(f"bucket={bucket!r} is not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix, what="prefix")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size={part_size} is below S3's minimum part size of {MIN_PART_SIZE} bytes")
        if multipart_threshold < 1 or upload_concurrency < 1 or retry.max_attempts < 1:
            raise ValueError("multipart_threshold, upload_concurrency and retry.max_attempts must be at least 1")
        if not 1 <= list_page_size <= 1000 or not 1 <= delete_batch_size <= MAX_DELETE_BATCH:
            raise ValueError("list_page_size and delete_batch_size must be from 1 to 1000")
        self._bucket = bucket
        self._prefix = prefix
        self._client = client or _default_client(endpoint_url, max_pool_connections=max(10, 2 * upload_concurrency))
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._upload_concurrency = upload_concurrency
        self._list_page_size = list_page_size
        self._delete_batch_size = delete_batch_size
        self._retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def client(self) -> BaseClient:
        return self._client

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self._bucket}/{self._prefix})"

    def object_key(self, key: str) -> str:
        """The S3 key that holds the object for `key`."""
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def upload_file(
        self, local_path: Path, key: str, *, checksum: int | None = None, overwrite: bool = False
    ) -> RemoteObject:
        s3_key = self.object_key(key)
        with open(local_path, "rb") as src:
            # Hash first: the checksum goes in the request that creates the object.
            size, actual = copy_hashing(src, None)
            check_claimed(str(local_path), key, checksum, actual)

            def read(offset: int, length: int) -> bytes:
                data = os.pread(src.fileno(), length, offset)
                if len(data) != length:
                    raise CorruptionError(f"{local_path} shrank while it was uploaded to key={key}")
                return data

            self._upload(key, s3_key, size, actual, read, overwrite)
        return RemoteObject(key, size, actual)

    def upload_bytes(self, data: bytes, key: str, *, overwrite: bool = False) -> RemoteObject:
        s3_key = self.object_key(key)
        checksum = xxhash.xxh64_intdigest(data)
        view = memoryview(data)
        self._upload(
            key, s3_key, len(data), checksum, lambda offset, length: bytes(view[offset : offset + length]), overwrite
        )
        return RemoteObject(key, len(data), checksum)

    def _upload(
        self, key: str, s3_key: str, size: int, checksum: int, read: Callable[[int, int], bytes], overwrite: bool
    ) -> None:
        """One PUT (or a multipart upload); create-only unless `overwrite`:
        `If-None-Match: *` makes S3 refuse (412 PreconditionFailed) to replace an
        object. moto 5 honours the header on PutObject and CompleteMultipartUpload;
        a store that ignored it would overwrite, so the tests check the 412."""
        metadata = {"xxhash64": f"{checksum:016x}"}
        condition: dict[str, str] = {} if overwrite else {"IfNoneMatch": "*"}
        try:
            if size >= self._multipart_threshold:
                self._upload_multipart(key, s3_key, size, metadata, read, condition)
                return
            body = read(0, size)
            self._call(
                "upload",
                key,
                lambda: self._client.put_object(
                    Bucket=self._bucket, Key=s3_key, Body=body, Metadata=metadata, **condition
                ),
            )
        except _PreconditionFailed:
            # An object is there: ours from an attempt whose answer was lost, a
            # repeated upload of the same bytes, or a different one (refused).
            if self._stored_object(s3_key) == (size, metadata["xxhash64"]):
                return
            raise RemoteObjectExists(
                f"remote object key={key} already exists with other bytes (bucket={self._bucket}): "
                "objects are create-only and never overwritten"
            ) from None

    def _stored_object(self, s3_key: str) -> tuple[int, str | None] | None:
        """(size, x-amz-meta-xxhash64) of the stored object, None if there is none."""
        try:
            head = self._call("head", s3_key, lambda: self._client.head_object(Bucket=self._bucket, Key=s3_key))
        except NotFound:
            return None
        return int(head.get("ContentLength", -1)), head.get("Metadata", {}).get("xxhash64")

    def _upload_multipart(
        self,
        key: str,
        s3_key: str,
        size: int,
        metadata: dict[str, str],
        read: Callable[[int, int], bytes],
        condition: dict[str, str],
    ) -> None:
        create_args: dict[str, Any] = {"Bucket": self._bucket, "Key": s3_key, "Metadata": metadata}
        if self._client.meta.config.request_checksum_calculation == "when_supported":
            # As boto3's own transfers do: botocore adds a CRC32 to every part, so name it up front.
            create_args["ChecksumAlgorithm"] = "CRC32"
        upload_id: str = self._call(
            "create_multipart_upload", key, lambda: self._client.create_multipart_upload(**create_args)["UploadId"]
        )
        part_size = max(self._part_size, -(-size // MAX_PARTS))

        def upload_part(number: int) -> dict[str, Any]:
            offset = (number - 1) * part_size
            body = read(offset, min(part_size, size - offset))
            response = self._call(
                "upload_part",
                key,
                lambda: self._client.upload_part(
                    Bucket=self._bucket, Key=s3_key, UploadId=upload_id, PartNumber=number, Body=body
                ),
                part=number,
            )
            part = {"PartNumber": number, "ETag": response["ETag"]}
            if "ChecksumCRC32" in response:
                part["ChecksumCRC32"] = response["ChecksumCRC32"]
            return part

        try:
            pool = ThreadPoolExecutor(max_workers=self._upload_concurrency, thread_name_prefix="s3-upload-part")
            try:
                parts = list(pool.map(upload_part, range(1, -(-size // part_size) + 1)))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            self._call(
                "complete_multipart_upload",
                key,
                lambda: self._complete_multipart(s3_key, upload_id, parts, metadata["xxhash64"], condition),
            )
        except BaseException:
            self._abort_multipart(key, s3_key, upload_id)
            raise

    def _complete_multipart(
        self, s3_key: str, upload_id: str, parts: list[dict[str, Any]], checksum_hex: str, condition: dict[str, str]
    ) -> None:
        try:
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=s3_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )
        except ClientError as exc:
            if _is_precondition_failed(exc):
                raise _PreconditionFailed() from exc
            # An earlier attempt may have completed it and lost the answer: then the object is ours.
            if _error_code(exc) != "NoSuchUpload" or self._stored_checksum_hex(s3_key) != checksum_hex:
                raise

    def _stored_checksum_hex(self, s3_key: str) -> str | None:
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=s3_key)
        except ClientError:
            return None
        return head.get("Metadata", {}).get("xxhash64")

    def _abort_multipart(self, key: str, s3_key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=s3_key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            log.warning("remote_multipart_abort_failed", key=key, upload_id=upload_id, error=_describe(exc))

    def _fetch(self, key: str, out: BinaryIO) -> Fetched:
        s3_key = self.object_key(key)

        def attempt() -> Fetched:
            out.seek(0)
            out.truncate()
            response = self._client.get_object(Bucket=self._bucket, Key=s3_key)
            hasher = xxhash.xxh64()
            size = 0
            for chunk in response["Body"].iter_chunks(CHUNK_SIZE):
                out.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
            stored = response.get("Metadata", {}).get("xxhash64")
            where = f"x-amz-meta-xxhash64 of key={key}"
            stored_checksums = frozenset() if stored is None else frozenset({parse_checksum(stored, where)})
            return Fetched(size, hasher.intdigest(), stored_checksums)

        return self._call("download", key, attempt)

    def list(self, prefix: str = "") -> list[RemoteObject]:
        return list(self._list_pages(prefix, delimiter=False).objects)

    def list_delimited(self, prefix: str = "") -> Listing:
        return self._list_pages(prefix, delimiter=True)

    def _list_pages(self, prefix: str, delimiter: bool) -> Listing:
        """Every page of a ListObjectsV2 of `prefix` (with Delimiter='/' if `delimiter`)."""
        check_prefix(prefix)
        root = f"{self._prefix}/" if self._prefix else ""
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": root + prefix, "MaxKeys": self._list_page_size}
        if delimiter:
            request["Delimiter"] = "/"
        found: list[RemoteObject] = []
        prefixes: list[str] = []
        while True:
            page = self._call("list", prefix, lambda: self._client.list_objects_v2(**request))
            found.extend(RemoteObject(item["Key"][len(root) :], item["Size"], None) for item in page.get("Contents", []))
            prefixes.extend(item["Prefix"][len(root) :] for item in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return Listing(tuple(sorted(prefixes)), tuple(found))
            request = {**request, "ContinuationToken": page["NextContinuationToken"]}

    def delete(self, keys: list[str]) -> None:
        s3_keys = [self.object_key(key) for key in keys]
        for start in range(0, len(s3_keys), self._delete_batch_size):
            batch = s3_keys[start : start + self._delete_batch_size]
            described = keys[start] if len(batch) == 1 else f"{keys[start]} (+{len(batch) - 1} more)"
            self._call("delete", described, lambda batch=batch: self._delete_batch(batch))

    def _delete_batch(self, s3_keys: list[str]) -> None:
        response = self._client.delete_objects(
            Bucket=self._bucket, Delete={"Objects": [{"Key": k} for k in s3_keys], "Quiet": True}
        )
        if response.get("Errors"):
            raise _DeleteFailed(response["Errors"])

    def exists(self, key: str) -> bool:
        s3_key = self.object_key(key)

        def attempt() -> bool:
            try:
                self._client.head_object(Bucket=self._bucket, Key=s3_key)
            except ClientError as exc:
                if _http_status(exc) == 404:
                    return False
                raise
            return True

        return self._call("exists", key, attempt)

    def _call(self, op: str, key: str, attempt_fn: Callable[[], T], part: int | None = None) -> T:
        """`attempt_fn()`, retried on transient errors by the policy; errors mapped (see "Retries")."""
        started = self._clock()
        attempt = 1
        while True:
            try:
                return attempt_fn()
            except (BotoCoreError, ClientError, _DeleteFailed) as exc:
                if isinstance(exc, ClientError) and _is_precondition_failed(exc):
                    raise _PreconditionFailed() from exc
                where = f"op={op} key={key} bucket={self._bucket}"
                if not _is_transient(exc):
                    raise _permanent_error(where, exc) from exc
                delay = self._retry.backoff(attempt, self._rng)
                elapsed = self._clock() - started
                if attempt >= self._retry.max_attempts or elapsed + delay > self._retry.max_total_s:
                    raise RemoteStorageUnavailable(
                        f"{where}: remote storage still failing after attempts={attempt} "
                        f"elapsed_s={elapsed:.1f}: {_describe(exc)}"
                    ) from exc
                log.warning(
                    "remote_retry", op=op, key=key, part=part, attempt=attempt, delay_s=f"{delay:.3f}", error=_describe(exc)
                )
                self._sleep(delay)
                attempt += 1


def _default_client(endpoint_url: str | None, max_pool_connections: int) -> BaseClient:
    config = Config(retries={"total_max_attempts": 1}, max_pool_connections=max_pool_connections)
    session = boto3.session.Session()  # not the shared default session: clients may be made on any thread
    return session.client("s3", endpoint_url=endpoint_url, region_name=os.environ.get("AWS_REGION") or None, config=config)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_precondition_failed(exc: ClientError) -> bool:
    return _error_code(exc) == "PreconditionFailed" or _http_status(exc) == 412


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, SSLError):
        return False  # a certificate that fails now fails on every retry
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if isinstance(exc, ClientError):
        status = _http_status(exc)
        return status >= 500 or status in (408, 429) or _error_code(exc) in _TRANSIENT_CODES
    if isinstance(exc, _DeleteFailed):
        return exc.codes <= _TRANSIENT_CODES
    return False


def _permanent_error(where: str, exc: Exception) -> StrataError:
    if isinstance(exc, NoCredentialsError):
        return RemoteAccessDenied(f"{where}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, _DeleteFailed):
        if exc.codes & _ACCESS_DENIED_CODES:
            return RemoteAccessDenied(f"{where}: access denied: {exc}")
        return RemoteStorageError(f"{where}: {exc}")
    if not isinstance(exc, ClientError):
        return RemoteStorageError(f"{where}: {_describe(exc)}")
    code, status = _error_code(exc), _http_status(exc)
    if code == "NoSuchBucket":
        return RemoteStorageError(f"{where}: the bucket does not exist: create it or fix the s3:// URL")
    if status == 404 or code in ("NoSuchKey", "NotFound"):
        return NotFound(f"{where}: no such remote object")
    if status == 403 or code in _ACCESS_DENIED_CODES:
        return RemoteAccessDenied(
            f"{where}: access denied ({code or status}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket policy"
        )
    return RemoteStorageError(f"{where}: S3 refused the request: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
