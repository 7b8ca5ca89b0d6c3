"""The file:// backend: remote storage in a local directory (the embedded default).

The object for key K is the plain file DIR/K; its checksum sits in a hidden
sidecar file `.NAME.xxhash64` next to it (one line of 16 hex digits per
checksum it accepts; sidecar rather than recomputing, so a download checks the
bytes even when the caller knows no checksum). Hidden names (a leading '.')
are never keys (layout.py `check_key`), so temp files and sidecars are never
listed as objects.

# Consistency

- Create-only: the temp file is hard-linked into place (`os.link` fails if the
  name exists), holding an flock on the object's directory, so the check that
  no object is there and the link are one step; writers of a directory take
  turns, across processes too.
- An overwrite renames the temp file over the object: a reader sees the whole
  old file or the whole new one.
- Read-after-write and list-after-write: it is the file system.

# Crash safety

An upload copies into a hidden temp file in the object's directory
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
inode), it reads the new object. A deletion removes the object before its
sidecar: an orphaned sidecar is ignored, an object without one is unverified.
"""

from __future__ import annotations

import fcntl
import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from strata.durable_file import fsync_dir, write_durably
from strata.errors import CorruptionError, NotFound
from strata.remote_storage.interface import Listing, RemoteObject, RemoteObjectExists
from strata.remote_storage.layout import check_key, check_prefix
from strata.remote_storage.verified import (
    Fetched,
    VerifyingStorage,
    check_claimed,
    copy_hashing,
    make_dirs_durably,
    parse_checksum,
    write_beside,
)

# How often a read starts over when the object keeps being replaced under it.
_REREADS_ON_REPLACE = 3


class LocalFsStorage(VerifyingStorage):
    """`file://DIR`: the object for key K is the plain file DIR/K, its checksum in
    the hidden sidecar DIR/.../.NAME.xxhash64 (see the module docstring)."""

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
            return self._store(key, path, lambda out: copy_hashing(src, out), checksum, str(local_path), overwrite)

    def upload_bytes(self, data: bytes, key: str, *, overwrite: bool = False) -> RemoteObject:
        path = self.path_of(key)
        return self._store(key, path, lambda out: copy_hashing(io.BytesIO(data), out), None, "data", overwrite)

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
            check_claimed(source, key, claimed, checksum)
            with _locked_dir(path.parent):
                if overwrite:
                    self._replace_object(tmp, path, checksum)
                else:
                    self._create_object(key, tmp, path, size, checksum)
            return RemoteObject(key, size, checksum)

        return write_beside(path, ".upload", fill, publish)

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
                stored_size, stored_checksum = copy_hashing(existing, None)
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
        return frozenset(parse_checksum(line, str(sidecar)) for line in lines)

    def _fetch(self, key: str, out: BinaryIO) -> Fetched:
        path = self.path_of(key)
        for _ in range(_REREADS_ON_REPLACE):
            fetched, replaced = self._read_once(key, path, out)
            if not replaced:
                break
        return fetched

    def _read_once(self, key: str, path: Path, out: BinaryIO) -> tuple[Fetched, bool]:
        """One read of the object; also whether it was replaced while being read."""
        try:
            src = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"remote object key={key} does not exist in file://{self._root}") from None
        with src:
            stored = self._read_sidecar(path) or frozenset()  # after the open: see "Crash safety"
            out.seek(0)
            out.truncate()
            size, checksum = copy_hashing(src, out)
            replaced = bool(stored) and checksum not in stored and _inode(path) != os.fstat(src.fileno()).st_ino
        return Fetched(size, checksum, stored), replaced

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

    def list_delimited(self, prefix: str = "") -> Listing:
        """One directory: its files, and the subdirectories that hold at least
        one object somewhere below (S3 has no empty folders, so neither does
        this listing)."""
        check_prefix(prefix)
        base = prefix.rpartition("/")[0]
        directory = self._root / base
        base = base + "/" if base else ""
        objects: list[RemoteObject] = []
        prefixes: list[str] = []
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return Listing((), ())
        for entry in entries:
            key = base + entry.name
            if entry.name.startswith(".") or not key.startswith(prefix):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if _holds_an_object(Path(entry.path)):
                        prefixes.append(key + "/")
                else:
                    objects.append(RemoteObject(key, entry.stat(follow_symlinks=False).st_size, None))
            except FileNotFoundError:
                continue  # deleted while we listed
        return Listing(tuple(sorted(prefixes)), tuple(sorted(objects, key=lambda obj: obj.key)))

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


def _holds_an_object(directory: Path) -> bool:
    """Whether some object (a file whose name and folders are not hidden) lies below `directory`."""
    for dirpath, dirnames, filenames in os.walk(directory):
        if any(not name.startswith(".") for name in filenames):
            return True
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return False


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
