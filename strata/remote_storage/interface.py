"""The remote storage interface: where layer files, index_part.json and offloaded WAL live.

One interface, `RemoteStorage`, for objects under '/'-separated keys (which
keys exist and who writes them: layout.py). Its backends, `LocalFsStorage`
(local_fs.py, `file://DIR`, the embedded default) and `S3Storage` (s3.py,
`s3://BUCKET/PREFIX`: AWS or MinIO through boto3), both download through
verified.py; url.py's `open_remote_storage` picks one by URL. faults.py wraps
any of them for tests.

# Consistency

What every backend guarantees (how each does it: its own module's docstring):

- Uploads are create-only by default: an object, once written, is never
  overwritten. An upload to a key that holds different bytes fails with
  `RemoteObjectExists`. An upload to a key that already holds the very same
  bytes (size and xxhash64) succeeds and changes nothing, so a retried or
  repeated upload is idempotent. Layer names carry the writer's generation, so
  two pageservers never race for one.
- `overwrite=True` is for the two objects that one writer updates in place:
  a generation's own `index_part.json-<gen>` (only the pageserver holding that
  generation writes it) and the walservice's `.partial` WAL object. Such an
  upload is atomic: a reader sees the whole old object or the whole new one,
  never a mix.
- Read-after-write and list-after-write: once an upload returns, every
  download, `exists` and `list` sees it.
- Nothing spans objects. A caller that needs "B only after A" uploads A, waits
  for it to return, then uploads B: index_part.json goes up after every layer it
  names.
- One writer per key at a time: a backend either serializes the writers of a
  key or lets exactly one conditional create win.
- Every object carries the xxhash64 of its bytes, stored as it is uploaded, and
  every download is checked against it (verified.py, "Checksums").

`list` and `list_delimited` give keys and sizes only (`checksum=None`): S3
listings carry no metadata.

# Listing with the delimiter

`list_delimited(prefix)` is one level of the key tree, like S3's listing with
`Delimiter='/'` (Neon's `ListingMode::WithDelimiter`): the objects whose key
is `prefix` + a name without '/', and the sub-prefixes (`prefix` + name + '/')
that hold at least one object, each once. It finds a tenant's timelines, or a
timeline's indexes, without walking every layer and WAL segment below.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from strata.errors import AlreadyExists, StrataError, Unavailable


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
class Listing:
    """One level below a prefix (`RemoteStorage.list_delimited`): the
    sub-prefixes (each a full key prefix ending in '/'), and the objects there,
    both sorted by key."""

    prefixes: tuple[str, ...]
    objects: tuple[RemoteObject, ...]


class RemoteStorage(ABC):
    """Objects under '/'-separated keys (layout.py `check_key`), each uploaded
    atomically and verified on download."""

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
    def list_delimited(self, prefix: str = "") -> Listing:
        """One level of the key tree below `prefix` ("Listing with the delimiter")."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete these objects; a key with no object is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def download_file(self, key: str, local_path: Path, *, expected: RemoteObject | None = None) -> RemoteObject:
        """Fetch the object into `local_path`, made whole by a rename after it is
        verified (verified.py). CorruptionError if the bytes fail the stored
        checksum or `expected`, and then no file is left; NotFound if no object."""

    @abstractmethod
    def download_bytes(self, key: str, expected: RemoteObject | None = None) -> bytes:
        """The object's bytes, verified as `download_file` does."""
