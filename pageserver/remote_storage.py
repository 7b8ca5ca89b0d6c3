"""Remote storage: where layer files, index_part.json and offloaded WAL live.

One interface, `RemoteStorage`, and two backends chosen by URL with
`open_remote_storage`: `file://DIR` (`LocalFsStorage`, the embedded default)
and `s3://BUCKET/PREFIX` (`S3Storage`: AWS or MinIO through boto3).

# Layout

Keys are relative '/'-separated paths. Every segment is non-empty and does not
start with '.', so a key is never absolute, never holds '.', '..' or '//', and
never collides with the file:// backend's own hidden files (`check_key`).
A timeline's objects sit under one prefix (`timeline_prefix`, `timeline_key`)::

    tenants/<tenant_id>/timelines/<timeline_id>/index_part.json-<generation:08x>
    tenants/<tenant_id>/timelines/<timeline_id>/<layer file name>

WAL offload should use a prefix of its own (say `wal/tenants/<t>/timelines/<tl>/`)
so that listing a timeline's layers never walks WAL. The object for key K is
`PREFIX/K` in the bucket, or the file `DIR/K`.

# Consistency

- Uploads are create-only by default: an object, once written, is never
  overwritten. An upload to a key that holds different bytes fails with
  `RemoteObjectExists` (S3: PutObject / CompleteMultipartUpload with
  `If-None-Match: *`, which S3, MinIO and moto answer 412; file://: the temp
  file is hard-linked into place, which fails if the name exists). An upload
  to a key that already holds the very same bytes (size and xxhash64) succeeds
  and changes nothing, so a retried or repeated upload is idempotent. Layer
  names carry the writer's generation, so two pageservers never race for one.
- `overwrite=True` is for the two objects that one writer updates in place:
  a generation's own `index_part.json-<gen>` (only the pageserver holding that
  generation writes it) and the walservice's `.partial` WAL object. Such an
  upload is atomic: a reader sees the whole old object or the whole new one,
  never a mix (S3: a PUT replaces the object at once; file://: a rename).
- Read-after-write and list-after-write: once an upload returns, every
  download, `exists` and `list` sees it (S3 is strongly consistent since
  December 2020, MinIO always was; file:// is the file system).
- Nothing spans objects. A caller that needs "B only after A" uploads A, waits
  for it to return, then uploads B: index_part.json goes up after every layer it
  names.
- One writer per key at a time. file:// serializes writers of a directory with
  an flock on it (so its create-only check and link are one step); S3 keeps
  whichever overwriting PUT finished last, and lets exactly one conditional
  create win.

# Checksums

Every object's xxhash64 (seed 0) is computed on upload and stored with it: as
user metadata `x-amz-meta-xxhash64` (16 hex digits) in S3, and in a sidecar
file `.NAME.xxhash64` next to the object with file:// (sidecar rather than
recomputing, so a download checks the bytes even when the caller knows no
checksum, as with S3). A checksum that the caller passes to `upload_file` (the
one computed when the layer was written) is checked against the file before
anything is stored, so a file damaged on local disk never becomes the remote
truth. Every download hashes the bytes as they stream in and compares them with
the stored checksum (when there is one: objects put there by other tools have
none) and with `expected`, the `RemoteObject` an index recorded at upload (its
size, and its checksum when known). A mismatch is `CorruptionError`. `list`
gives keys and sizes only (`checksum=None`): S3 listings carry no metadata.

# Retries (S3)

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

# Crash safety

A download streams into a hidden temp file beside the destination
(`.NAME.<random>.download`), fsyncs it, verifies it, renames it over the
destination and fsyncs the directory. A crash leaves no file or a whole,
verified one (and perhaps a hidden temp file, never read); a corrupt download
never reaches the destination.

A file:// upload copies into a hidden temp file in the object's directory
(`.NAME.<random>.upload`) and fsyncs it. A create-only upload then, holding the
directory's flock, checks that no object is there, writes the sidecar (the new
checksum alone, durably), hard-links the temp file to the object's name
(`os.link` fails if the name exists) and fsyncs the directory: a crash leaves no
object (an orphaned sidecar is ignored and rewritten by the next upload) or the
whole new one with its sidecar. An overwriting upload, holding the flock:

1. sidecar := old checksums + the new one (written durably),
2. rename the temp file over the object and fsync the directory,
3. sidecar := the new checksum alone (written durably).

A crash at any step leaves the old or the new object, whole, with a sidecar that
accepts it. Directories made for a key are fsynced into their parents. A reader
opens the object before it reads the sidecar; if the bytes then fail the
sidecar because the object was replaced meanwhile (the path names another
inode), it reads the new object.
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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

from strata.durable_file import fsync_dir, write_durably
from strata.errors import AlreadyExists, CorruptionError, NotFound, StrataError, Unavailable
from strata.ids import TenantId, TimelineId
from strata.logs import event_logger

MiB = 1024 * 1024
# S3's limits on multipart uploads: every part but the last at least 5 MiB, at most 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
MAX_DELETE_BATCH = 1000
CHUNK_SIZE = 1 * MiB
# How often a file:// read starts over when the object keeps being replaced under it.
_REREADS_ON_REPLACE = 3

# S3 error codes worth another try (with any 5xx, 408 and 429 status).
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
    | {"TooManyRequests", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
    # 409: a conditional write raced another write to the key; S3 says to retry.
    | {"ConditionalRequestConflict"}
)
_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"})
_BUCKET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_CHECKSUM_RE = re.compile(r"[0-9a-f]{16}")

log = event_logger("remote_storage")

T = TypeVar("T")


class RemoteStorageError(StrataError):
    """A permanent remote storage failure (a misconfiguration, a refused request); not retried."""


class RemoteAccessDenied(RemoteStorageError):
    """The store refused the credentials (403) or there were none."""


class RemoteObjectExists(AlreadyExists):
    """A create-only upload found a different object under its key (never overwritten)."""


class RemoteStorageUnavailable(Unavailable):
    """Transient failures went on past the retry policy's attempts or time."""


@dataclass(frozen=True)
class RemoteObject:
    """An object in remote storage: its key, its size in bytes, and the xxhash64
    of its bytes (None where not known: `list` results)."""

    key: str
    size: int
    checksum: int | None


@dataclass(frozen=True)
class RetryPolicy:
    """How S3 requests are retried (see "Retries" above). The defaults ride out
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


def check_key(key: str, what: str = "key") -> str:
    """`key` if it is a valid remote storage key; ValueError saying why otherwise."""
    example = "expected a relative '/'-separated path like tenants/<t>/timelines/<tl>/index_part.json"
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what}={key!r} is invalid: it is empty; {example}")
    if key.startswith("/"):
        raise ValueError(f"{what}={key!r} is invalid: it is absolute; {example}")
    if "\0" in key:
        raise ValueError(f"{what}={key!r} is invalid: it contains a NUL character")
    for segment in key.split("/"):
        if segment == "":
            raise ValueError(f"{what}={key!r} is invalid: it has an empty segment ('//' or a trailing '/'); {example}")
        if segment in (".", ".."):
            raise ValueError(f"{what}={key!r} is invalid: it contains {segment!r}; {example}")
        if segment.startswith("."):
            raise ValueError(
                f"{what}={key!r} is invalid: segment {segment!r} starts with '.', which is reserved "
                f"for the file:// backend's temp and checksum files"
            )
    return key


def check_prefix(prefix: str) -> str:
    """`prefix` if it can start keys ('' lists everything); ValueError otherwise.
    Like S3, a prefix matches keys as strings: 'tenants/ab' matches 'tenants/abc/x'."""
    if prefix == "":
        return prefix
    try:
        # A prefix is valid when some valid key starts with it.
        check_key(prefix + "x" if isinstance(prefix, str) and prefix.endswith("/") else prefix)
    except ValueError as exc:
        reason = str(exc).partition(" is invalid: ")[2]
        raise ValueError(f"prefix={prefix!r} is invalid: no valid key starts with it ({reason})") from None
    return prefix


def timeline_prefix(tenant: TenantId, timeline: TimelineId) -> str:
    """The prefix that holds all of a timeline's objects (ends with '/')."""
    return check_key(f"tenants/{tenant}/timelines/{timeline}") + "/"


def timeline_key(tenant: TenantId, timeline: TimelineId, file_name: str) -> str:
    """The key of one of a timeline's files: index_part.json or a layer file."""
    return check_key(timeline_prefix(tenant, timeline) + file_name)


@dataclass(frozen=True)
class _Fetched:
    """What a backend read for a download, before it is verified."""

    size: int
    checksum: int
    # The checksums stored with the object (S3 metadata, the file:// sidecar); empty if none.
    stored_checksums: frozenset[int]


class RemoteStorage(ABC):
    """Objects under '/'-separated keys, each uploaded atomically and verified on download."""

    @abstractmethod
    def upload_file(
        self, local_path: Path, key: str, *, checksum: int | None = None, overwrite: bool = False
    ) -> RemoteObject:
        """Store the file's bytes under `key`. Create-only unless `overwrite`:
        RemoteObjectExists if a different object is there (the same bytes: a
        no-op success). When `checksum` is given, the file must still hash to it
        (CorruptionError if not, and nothing is stored)."""

    @abstractmethod
    def upload_bytes(self, data: bytes, key: str, *, overwrite: bool = False) -> RemoteObject:
        """Store `data` under `key`; create-only unless `overwrite`, as `upload_file`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[RemoteObject]:
        """Every object whose key starts with `prefix`, sorted by key (checksum None)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete these objects; a key with no object is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def _fetch(self, key: str, out: BinaryIO) -> _Fetched:
        """Write the object's bytes to `out` (empty on entry; truncate it before
        starting over) and say what was read. NotFound if there is no object."""

    def download_file(self, key: str, local_path: Path, *, expected: RemoteObject | None = None) -> RemoteObject:
        """Fetch the object into `local_path` (made whole by a rename after it is
        verified, see "Crash safety"). CorruptionError if the bytes fail the stored
        checksum or `expected`, and then no file is left; NotFound if no object."""
        check_key(key)
        _check_expected(key, expected)
        local_path = Path(local_path)
        make_dirs_durably(local_path.parent)

        def publish(tmp: Path, fetched: _Fetched) -> RemoteObject:
            verified = _verified(key, fetched, expected)
            os.replace(tmp, local_path)
            fsync_dir(local_path.parent)
            return verified

        return _write_beside(local_path, ".download", lambda out: self._fetch(key, out), publish)

    def download_bytes(self, key: str, expected: RemoteObject | None = None) -> bytes:
        """The object's bytes, verified as `download_file` does."""
        check_key(key)
        _check_expected(key, expected)
        out = io.BytesIO()
        _verified(key, self._fetch(key, out), expected)
        return out.getvalue()


# --- file:// --------------------------------------------------------------------------


class LocalFsStorage(RemoteStorage):
    """`file://DIR`: the object for key K is the plain file DIR/K, its checksum in
    the hidden sidecar DIR/.../.NAME.xxhash64 (see "Checksums", "Crash safety")."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root).absolute()
        make_dirs_durably(self._root)

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"LocalFsStorage(file://{self._root})"

    def path_of(self, key: str) -> Path:
        """The file that holds the object for `key`."""
        return self._root / check_key(key)

    def upload_file(
        self, local_path: Path, key: str, *, checksum: int | None = None, overwrite: bool = False
    ) -> RemoteObject:
        path = self.path_of(key)
        with open(local_path, "rb") as src:
            return self._store(key, path, lambda out: _copy_hashing(src, out), checksum, str(local_path), overwrite)

    def upload_bytes(self, data: bytes, key: str, *, overwrite: bool = False) -> RemoteObject:
        path = self.path_of(key)
        return self._store(key, path, lambda out: _copy_hashing(io.BytesIO(data), out), None, "data", overwrite)

    def _store(
        self,
        key: str,
        path: Path,
        fill: Callable[[BinaryIO], tuple[int, int]],
        claimed: int | None,
        source: str,
        overwrite: bool,
    ) -> RemoteObject:
        make_dirs_durably(path.parent)

        def publish(tmp: Path, written: tuple[int, int]) -> RemoteObject:
            size, checksum = written
            _check_claimed(source, key, claimed, checksum)
            with _locked_dir(path.parent):
                if overwrite:
                    self._replace_object(tmp, path, checksum)
                else:
                    self._create_object(key, tmp, path, size, checksum)
            return RemoteObject(key, size, checksum)

        return _write_beside(path, ".upload", fill, publish)

    def _create_object(self, key: str, tmp: Path, path: Path, size: int, checksum: int) -> None:
        """Create-only publish (see "Crash safety"); the caller holds the directory's flock."""
        if path.exists():
            self._check_same_object(key, path, size, checksum)
            return
        write_durably(_sidecar_path(path), _encode_sidecar(frozenset({checksum})))
        try:
            os.link(tmp, path)
        except FileExistsError:  # a writer that does not take the flock: still never overwritten
            self._check_same_object(key, path, size, checksum)
            return
        fsync_dir(path.parent)

    def _check_same_object(self, key: str, path: Path, size: int, checksum: int) -> None:
        """An object is already at `path`: fine if it holds these bytes, RemoteObjectExists if not."""
        try:
            stored = self._read_sidecar(path)
        except CorruptionError:
            stored = None
        if stored is None:
            with open(path, "rb") as existing:
                stored_size, stored_checksum = _copy_hashing(existing, None)
            stored = frozenset({stored_checksum}) if stored_size == size else frozenset()
        if checksum in stored and os.stat(path).st_size == size:
            return
        raise RemoteObjectExists(
            f"remote object key={key} already exists with other bytes (file://{self._root}): "
            f"objects are create-only and never overwritten"
        )

    def _replace_object(self, tmp: Path, path: Path, checksum: int) -> None:
        """Steps 1-3 of "Crash safety"; the caller holds the directory's flock."""
        sidecar = _sidecar_path(path)
        old = self._checksums_before_replace(path)
        if old is not None and checksum not in old:
            write_durably(sidecar, _encode_sidecar(old | {checksum}))
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is None or old - {checksum}:
            write_durably(sidecar, _encode_sidecar(frozenset({checksum})))

    def _checksums_before_replace(self, path: Path) -> frozenset[int] | None:
        """The checksums the sidecar accepts now: empty for a new object (an orphaned
        sidecar does not count), None when the present object has no usable sidecar."""
        if not path.exists():
            return frozenset()
        try:
            return self._read_sidecar(path)
        except CorruptionError:
            return None

    def _read_sidecar(self, path: Path) -> frozenset[int] | None:
        sidecar = _sidecar_path(path)
        try:
            text = sidecar.read_text(encoding="ascii", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        lines = text.split()
        if not lines:
            raise CorruptionError(f"checksum sidecar {sidecar} is empty")
        return frozenset(_parse_checksum(line, str(sidecar)) for line in lines)

    def _fetch(self, key: str, out: BinaryIO) -> _Fetched:
        path = self.path_of(key)
        for _ in range(_REREADS_ON_REPLACE):
            fetched, replaced = self._read_once(key, path, out)
            if not replaced:
                break
        return fetched

    def _read_once(self, key: str, path: Path, out: BinaryIO) -> tuple[_Fetched, bool]:
        """One read of the object; also whether it was replaced while being read."""
        try:
            src = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"remote object key={key} does not exist in file://{self._root}") from None
        with src:
            stored = self._read_sidecar(path) or frozenset()  # after the open: see "Crash safety"
            out.seek(0)
            out.truncate()
            size, checksum = _copy_hashing(src, out)
            replaced = bool(stored) and checksum not in stored and _inode(path) != os.fstat(src.fileno()).st_ino
        return _Fetched(size, checksum, stored), replaced

    def list(self, prefix: str = "") -> list[RemoteObject]:
        check_prefix(prefix)
        start = self._root / prefix.rpartition("/")[0]
        found: list[RemoteObject] = []
        for dirpath, dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(self._root).as_posix()
            base = "" if relative == "." else relative + "/"
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".") and ((base + d + "/").startswith(prefix) or prefix.startswith(base + d + "/"))
            ]
            for name in filenames:
                key = base + name
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue  # deleted while we listed
                found.append(RemoteObject(key, size, None))
        return sorted(found, key=lambda obj: obj.key)

    def delete(self, keys: list[str]) -> None:
        paths = [self.path_of(key) for key in keys]
        by_directory: dict[Path, list[Path]] = {}
        for path in paths:
            by_directory.setdefault(path.parent, []).append(path)
        for directory, files in by_directory.items():
            if not directory.is_dir():
                continue
            with _locked_dir(directory):
                for path in files:
                    # The object first: an orphaned sidecar is ignored, an object without one is unverified.
                    for victim in (path, _sidecar_path(path)):
                        try:
                            victim.unlink()
                        except (FileNotFoundError, IsADirectoryError):
                            pass
                fsync_dir(directory)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()


def _sidecar_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.xxhash64")


def _encode_sidecar(checksums: frozenset[int]) -> bytes:
    return "".join(f"{checksum:016x}\n" for checksum in sorted(checksums)).encode()


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


@contextmanager
def _locked_dir(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory: writers of its objects take turns, across processes too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- s3:// ----------------------------------------------------------------------------


class _PreconditionFailed(Exception):
    """A conditional request (If-None-Match: *) found an object under its key."""


class _DeleteFailed(Exception):
    """DeleteObjects answered 200 but listed keys it could not delete."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        shown = ", ".join(f"key={e.get('Key')} code={e.get('Code')}" for e in errors[:5])
        super().__init__(f"{len(errors)} keys not deleted: {shown}")
        self.codes = frozenset(e.get("Code", "") for e in errors)


class S3Storage(RemoteStorage):
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
            size, actual = _copy_hashing(src, None)
            _check_claimed(str(local_path), key, checksum, actual)

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

    def _fetch(self, key: str, out: BinaryIO) -> _Fetched:
        s3_key = self.object_key(key)

        def attempt() -> _Fetched:
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
            stored_checksums = frozenset() if stored is None else frozenset({_parse_checksum(stored, where)})
            return _Fetched(size, hasher.intdigest(), stored_checksums)

        return self._call("download", key, attempt)

    def list(self, prefix: str = "") -> list[RemoteObject]:
        check_prefix(prefix)
        root = f"{self._prefix}/" if self._prefix else ""
        request: dict[str, Any] = {"Bucket": self._bucket, "Prefix": root + prefix, "MaxKeys": self._list_page_size}
        found: list[RemoteObject] = []
        while True:
            page = self._call("list", prefix, lambda: self._client.list_objects_v2(**request))
            found.extend(RemoteObject(item["Key"][len(root) :], item["Size"], None) for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return found
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


# --- shared ---------------------------------------------------------------------------


def open_remote_storage(url: str) -> RemoteStorage:
    """The storage a `--remote-storage` URL names: file://DIR or s3://BUCKET[/PREFIX]."""
    usage = (
        "expected file://DIR (a local directory, e.g. file:///var/lib/strata/remote) or "
        "s3://BUCKET[/PREFIX] (AWS or MinIO, configured by AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_REGION)"
    )
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "file":
        if not rest:
            raise ValueError(f"remote storage URL {url!r} names no directory: {usage}")
        return LocalFsStorage(Path(rest))
    if sep and scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"remote storage URL {url!r} names no bucket: {usage}")
        return S3Storage(bucket, prefix)
    raise ValueError(f"unsupported remote storage URL {url!r}: {usage}")


def make_dirs_durably(directory: Path) -> None:
    """`mkdir -p`, fsyncing each new directory's parent so its entry survives a crash."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            pass  # made by someone else meanwhile
        fsync_dir(new.parent)


def _write_beside(
    dest: Path, suffix: str, fill: Callable[[BinaryIO], T], publish: Callable[[Path, T], RemoteObject]
) -> RemoteObject:
    """Fill a hidden temp file beside `dest`, fsync it, and `publish(temp, filled)`
    (which renames it into place); the temp file is removed if anything fails."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        with open(fd, "w+b") as out:
            filled = fill(out)
            out.flush()
            os.fsync(out.fileno())
        return publish(tmp, filled)
    finally:
        tmp.unlink(missing_ok=True)  # gone already once published


def _copy_hashing(src: BinaryIO, out: BinaryIO | None) -> tuple[int, int]:
    """Copy `src` to `out` (when given) in chunks; the size and xxhash64 of what passed."""
    hasher = xxhash.xxh64()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        if out is not None:
            out.write(chunk)
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.intdigest()


def _check_claimed(source: str, key: str, claimed: int | None, actual: int) -> None:
    if claimed is not None and claimed != actual:
        raise CorruptionError(
            f"{source} has xxhash64={actual:016x}, not the checksum it was written with ({claimed:016x}): "
            f"it changed on local disk; not uploading it to key={key}"
        )


def _check_expected(key: str, expected: RemoteObject | None) -> None:
    if expected is not None and expected.key != key:
        raise ValueError(f"expected describes key={expected.key}, not key={key}")


def _parse_checksum(text: str, where: str) -> int:
    if not _CHECKSUM_RE.fullmatch(text):
        raise CorruptionError(f"{where}: malformed xxhash64 {text!r}: expected 16 lowercase hex digits")
    return int(text, 16)


def _verified(key: str, fetched: _Fetched, expected: RemoteObject | None) -> RemoteObject:
    """The downloaded object, once its bytes passed its stored checksum and `expected`."""
    if fetched.stored_checksums and fetched.checksum not in fetched.stored_checksums:
        stored = ",".join(f"{c:016x}" for c in sorted(fetched.stored_checksums))
        raise CorruptionError(
            f"remote object key={key} read back with xxhash64={fetched.checksum:016x} "
            f"but was stored with xxhash64={stored}"
        )
    if expected is not None and fetched.size != expected.size:
        raise CorruptionError(f"remote object key={key} has size={fetched.size}, expected size={expected.size}")
    if expected is not None and expected.checksum is not None and fetched.checksum != expected.checksum:
        raise CorruptionError(
            f"remote object key={key} has xxhash64={fetched.checksum:016x}, expected xxhash64={expected.checksum:016x}"
        )
    return RemoteObject(key, fetched.size, fetched.checksum)
