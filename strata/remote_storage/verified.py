"""Verified transfers: every download is checked before anyone sees it, and no
upload stores a file that changed since its checksum was taken.

`VerifyingStorage` is the base of every backend (and of faults.py's wrapper): a
backend implements `_fetch`, the raw read of an object's bytes, and gets
`download_file` and `download_bytes` from here, so the checks below are written
once.

# Checksums

Every object's xxhash64 (seed 0) is computed on upload and stored with it (S3:
user metadata, s3.py; file://: a sidecar file, local_fs.py), so a download
checks the bytes even when the caller knows no checksum. A checksum that the
caller passes to `upload_file` (the one computed when the layer was written) is
checked against the file before anything is stored (`check_claimed`), so a file
damaged on local disk never becomes the remote truth. Every download hashes the
bytes as they stream in and compares them with the stored checksums (when there
are any: objects put there by other tools have none) and with `expected`, the
`RemoteObject` an index recorded at upload (its size, and its checksum when
known). A mismatch is `CorruptionError`.

# Crash safety

A download streams into a hidden temp file beside the destination
(`.NAME.<random>.download`), fsyncs it, verifies it, renames it over the
destination and fsyncs the directory. A crash leaves no file or a whole,
verified one (and perhaps a hidden temp file, never read); a corrupt download
never reaches the destination. Directories made for a destination are fsynced
into their parents (`make_dirs_durably`).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import xxhash

from strata.durable_file import fsync_dir
from strata.errors import CorruptionError
from strata.remote_storage.interface import RemoteObject, RemoteStorage
from strata.remote_storage.layout import check_key

CHUNK_SIZE = 1024 * 1024
_CHECKSUM_RE = re.compile(r"[0-9a-f]{16}")

T = TypeVar("T")


@dataclass(frozen=True)
class Fetched:
    """What a backend read for a download, before it is verified."""

    size: int
    checksum: int
    # The checksums stored with the object (S3 metadata, the file:// sidecar); empty if none.
    stored_checksums: frozenset[int]


class VerifyingStorage(RemoteStorage):
    """A RemoteStorage whose downloads are verified here; backends implement `_fetch`."""

    @abstractmethod
    def _fetch(self, key: str, out: BinaryIO) -> Fetched:
        """Write the object's bytes to `out` (empty on entry; truncate it before
        starting over) and say what was read. NotFound if there is no object."""

    def download_file(self, key: str, local_path: Path, *, expected: RemoteObject | None = None) -> RemoteObject:
        check_key(key)
        _check_expected(key, expected)
        local_path = Path(local_path)
        make_dirs_durably(local_path.parent)

        def publish(tmp: Path, fetched: Fetched) -> RemoteObject:
            checked = verify(key, fetched, expected)
            os.replace(tmp, local_path)
            fsync_dir(local_path.parent)
            return checked

        return write_beside(local_path, ".download", lambda out: self._fetch(key, out), publish)

    def download_bytes(self, key: str, expected: RemoteObject | None = None) -> bytes:
        check_key(key)
        _check_expected(key, expected)
        out = io.BytesIO()
        verify(key, self._fetch(key, out), expected)
        return out.getvalue()


def verify(key: str, fetched: Fetched, expected: RemoteObject | None) -> RemoteObject:
    """The downloaded object, once its bytes passed its stored checksums and
    `expected`; CorruptionError naming the key otherwise."""
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


def check_claimed(source: str, key: str, claimed: int | None, actual: int) -> None:
    """Before an upload: CorruptionError if `source` no longer hashes to the
    checksum it was written with (`claimed`, None: none known)."""
    if claimed is not None and claimed != actual:
        raise CorruptionError(
            f"{source} has xxhash64={actual:016x}, not the checksum it was written with ({claimed:016x}): "
            f"it changed on local disk; not uploading it to key={key}"
        )


def parse_checksum(text: str, where: str) -> int:
    """A stored checksum: 16 lowercase hex digits; CorruptionError naming `where` otherwise."""
    if not _CHECKSUM_RE.fullmatch(text):
        raise CorruptionError(f"{where}: malformed xxhash64 {text!r}: expected 16 lowercase hex digits")
    return int(text, 16)


def copy_hashing(src: BinaryIO, out: BinaryIO | None) -> tuple[int, int]:
    """Copy `src` to `out` (when given) in chunks; the size and xxhash64 of what passed."""
    hasher = xxhash.xxh64()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        if out is not None:
            out.write(chunk)
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.intdigest()


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


def write_beside(
    dest: Path, suffix: str, fill: Callable[[BinaryIO], T], publish: Callable[[Path, T], RemoteObject]
) -> RemoteObject:
    """Fill a hidden temp file beside `dest`, fsync it, and `publish(temp, filled)`
    (which renames or links it into place); the temp file is removed if anything fails."""
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


def _check_expected(key: str, expected: RemoteObject | None) -> None:
    if expected is not None and expected.key != key:
        raise ValueError(f"expected describes key={expected.key}, not key={key}")
