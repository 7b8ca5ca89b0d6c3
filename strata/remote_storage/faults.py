"""A fault-injecting wrapper around any RemoteStorage, for tests and simulations.

`FaultyStorage(inner)` passes every call through to `inner` until a test
arms a fault:

- `fail(op, times=N, error=...)`: the next N calls of `op` (an operation name
  below, or "*" for all) raise `error` (default: `RemoteStorageUnavailable`,
  what a backend raises once its retries are spent) before reaching the store;
- `lose_answers(op, times=N)`: the next N calls of `op` reach the store and
  succeed there, then raise `RemoteStorageUnavailable`, as when the answer is
  lost on the way back (a retried create-only upload of the same bytes must
  then succeed: the interface's idempotence);
- `down()` / `up()`: an outage: every call fails until `up()`;
- `delay(op, seconds)`: each call of `op` first sleeps `seconds` (through the
  injected `sleep`, so a seeded simulation need not wait in wall time);
- `tear_uploads(times=N, keep=F)`: the next N uploads store only the first
  `F` of their bytes (at least one byte short) and then raise, as when a
  store keeps what a dropped connection carried. A well-behaved backend never
  does this (uploads are atomic), so it checks that readers holding an
  expected checksum (an index's `remote_checksum`) refuse what was torn.

Every call is recorded in `calls` as `(op, key or prefix)`, so a test can assert
what was asked for. Operation names: upload_file, upload_bytes, list,
list_delimited, delete, exists, download_file, download_bytes.

Concurrency: `_lock` guards the armed faults and `calls`; the inner storage is
called outside it (it is thread-safe itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from strata.remote_storage.interface import Listing, RemoteObject, RemoteStorage, RemoteStorageUnavailable

OPERATIONS = frozenset(
    {"upload_file", "upload_bytes", "list", "list_delimited", "delete", "exists", "download_file", "download_bytes"}
)
T = TypeVar("T")


class TornUpload(RemoteStorageUnavailable):
    """An injected torn upload: part of the bytes were stored, then the call failed."""


@dataclass
class _Failure:
    remaining: int
    error: Callable[[str, str], Exception]


class FaultyStorage(RemoteStorage):
    """`inner` with faults a test arms (module doc)."""

    def __init__(self, inner: RemoteStorage, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self._sleep = sleep
        self._lock = threading.Lock()
        self._failures: dict[str, list[_Failure]] = {}  # op or "*" -> armed failures, oldest first
        self._lost_answers: dict[str, int] = {}  # op or "*" -> how many more answers to lose
        self._delays: dict[str, float] = {}
        self._down = False
        self._tears_left = 0
        self._tear_keep = 0.5
        self.calls: list[tuple[str, str]] = []

    # -- arming ------------------------------------------------------------------

    def fail(self, op: str = "*", times: int = 1, error: Callable[[str, str], Exception] | None = None) -> None:
        """The next `times` calls of `op` raise `error(op, key)` (default: RemoteStorageUnavailable)."""
        _check_op(op)
        if times < 1:
            raise ValueError(f"times={times} is invalid: expected at least 1")
        make = error or (lambda o, k: RemoteStorageUnavailable(f"injected fault: {o} {k} failed"))
        with self._lock:
            self._failures.setdefault(op, []).append(_Failure(times, make))

    def lose_answers(self, op: str = "*", times: int = 1) -> None:
        """The next `times` calls of `op` take effect in the store, then raise RemoteStorageUnavailable."""
        _check_op(op)
        if times < 1:
            raise ValueError(f"times={times} is invalid: expected at least 1")
        with self._lock:
            self._lost_answers[op] = self._lost_answers.get(op, 0) + times

    def down(self) -> None:
        """Every call fails (RemoteStorageUnavailable) until `up()`."""
        with self._lock:
            self._down = True

    def up(self) -> None:
        with self._lock:
            self._down = False

    def delay(self, op: str, seconds: float) -> None:
        """Each call of `op` ("*": every call) first sleeps `seconds` (0 removes the delay)."""
        _check_op(op)
        if seconds < 0:
            raise ValueError(f"seconds={seconds} is invalid: expected >= 0")
        with self._lock:
            self._delays[op] = seconds

    def tear_uploads(self, times: int = 1, keep: float = 0.5) -> None:
        """The next `times` uploads store a prefix (`keep` of the bytes, at least one byte short), then raise TornUpload."""
        if times < 1 or not 0.0 <= keep < 1.0:
            raise ValueError(f"times={times} keep={keep} is invalid: expected times >= 1 and 0 <= keep < 1")
        with self._lock:
            self._tears_left, self._tear_keep = times, keep

    # -- the interface -----------------------------------------------------------

    def upload_file(
        self, local_path: Path, key: str, *, checksum: int | None = None, overwrite: bool = False
    ) -> RemoteObject:
        keep = self._enter("upload_file", key, upload=True)
        if keep is not None:
            return self._tear(Path(local_path).read_bytes(), key, keep, overwrite)
        return self._answer("upload_file", key, self.inner.upload_file(local_path, key, checksum=checksum, overwrite=overwrite))

    def upload_bytes(self, data: bytes, key: str, *, overwrite: bool = False) -> RemoteObject:
        keep = self._enter("upload_bytes", key, upload=True)
        if keep is not None:
            return self._tear(data, key, keep, overwrite)
        return self._answer("upload_bytes", key, self.inner.upload_bytes(data, key, overwrite=overwrite))

    def list(self, prefix: str = "") -> list[RemoteObject]:
        self._enter("list", prefix)
        return self._answer("list", prefix, self.inner.list(prefix))

    def list_delimited(self, prefix: str = "") -> Listing:
        self._enter("list_delimited", prefix)
        return self._answer("list_delimited", prefix, self.inner.list_delimited(prefix))

    def delete(self, keys: list[str]) -> None:
        described = keys[0] if len(keys) == 1 else f"{len(keys)} keys"
        self._enter("delete", described)
        self._answer("delete", described, self.inner.delete(keys))

    def exists(self, key: str) -> bool:
        self._enter("exists", key)
        return self._answer("exists", key, self.inner.exists(key))

    def download_file(self, key: str, local_path: Path, *, expected: RemoteObject | None = None) -> RemoteObject:
        self._enter("download_file", key)
        return self._answer("download_file", key, self.inner.download_file(key, local_path, expected=expected))

    def download_bytes(self, key: str, expected: RemoteObject | None = None) -> bytes:
        self._enter("download_bytes", key)
        return self._answer("download_bytes", key, self.inner.download_bytes(key, expected))

    # -- internals ---------------------------------------------------------------

    def _enter(self, op: str, key: str, upload: bool = False) -> float | None:
        """Record the call, sleep its delay, raise an armed failure; for an
        upload, the fraction to keep if this one is torn (None: not torn)."""
        with self._lock:
            self.calls.append((op, key))
            delay = self._delays.get(op, 0.0) + self._delays.get("*", 0.0)
            error: Exception | None = None
            if self._down:
                error = RemoteStorageUnavailable(f"injected outage: {op} {key} failed: remote storage is down")
            else:
                for name in (op, "*"):
                    armed = self._failures.get(name)
                    if armed:
                        error = armed[0].error(op, key)
                        armed[0].remaining -= 1
                        if armed[0].remaining == 0:
                            armed.pop(0)
                        break
            keep = None
            if error is None and upload and self._tears_left:
                self._tears_left -= 1
                keep = self._tear_keep
        if delay:
            self._sleep(delay)
        if error is not None:
            raise error
        return keep

    def _answer(self, op: str, key: str, result: T) -> T:
        """`result`, unless this call's answer is to be lost (it took effect all the same)."""
        with self._lock:
            name = op if self._lost_answers.get(op) else "*" if self._lost_answers.get("*") else None
            if name is not None:
                self._lost_answers[name] -= 1
        if name is not None:
            raise RemoteStorageUnavailable(f"injected fault: {op} {key} took effect but its answer was lost")
        return result

    def _tear(self, data: bytes, key: str, keep: float, overwrite: bool) -> RemoteObject:
        kept = data[: min(int(len(data) * keep), max(len(data) - 1, 0))]
        self.inner.upload_bytes(kept, key, overwrite=overwrite)
        raise TornUpload(f"injected torn upload: {key} kept {len(kept)} of {len(data)} bytes, then the connection dropped")


def _check_op(op: str) -> None:
    if op != "*" and op not in OPERATIONS:
        raise ValueError(f"op={op!r} is not an operation: expected '*' or one of {sorted(OPERATIONS)}")
