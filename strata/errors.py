"""Errors, in two layers.

Components raise the precise exceptions below, with key=value context in the
message; each service maps them onto gRPC status codes in one place
(`abort_with`), so the codes of DESIGN.md's contract live here and nowhere else::

    StrataError                     -> INTERNAL
    ├── InvalidArgument             -> INVALID_ARGUMENT  (malformed input; names the field)
    ├── NotFound                    -> NOT_FOUND         (no such tenant/timeline/relation)
    ├── OutOfRange                  -> OUT_OF_RANGE      (a block at or past the relation's end)
    ├── FailedPrecondition          -> FAILED_PRECONDITION
    │   └── EndLsnMismatch          (expected_end_lsn != the timeline's end; carries it)
    ├── AlreadyExists               -> ALREADY_EXISTS
    ├── DeadlineExceeded            -> DEADLINE_EXCEEDED (an LSN not reached in time)
    ├── Unavailable                 -> UNAVAILABLE       (shutting down, no quorum, not leader)
    ├── ResourceExhausted           -> RESOURCE_EXHAUSTED
    │   └── DiskFull                (ENOSPC/EDQUOT: nothing was written; retry once space is back)
    └── CorruptionError             -> DATA_LOSS         (bytes on disk failed their checksum)

Shutdown and cancellation are not errors and are not raised as these.
"""

from __future__ import annotations

from typing import NoReturn

import grpc


class StrataError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(StrataError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StrataError):
    code = grpc.StatusCode.NOT_FOUND


class OutOfRange(StrataError):
    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPrecondition(StrataError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class EndLsnMismatch(FailedPrecondition):
    """A conditional append found another end LSN than the one expected."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"expected_end_lsn={expected} does not match the timeline's current end_lsn={current}; "
            f"re-read at {current} and retry with expected_end_lsn={current}"
        )
        self.expected = expected
        self.current = current


class AlreadyExists(StrataError):
    code = grpc.StatusCode.ALREADY_EXISTS


class DeadlineExceeded(StrataError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(StrataError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(StrataError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DiskFull(ResourceExhausted):
    """A write found the data directory full (ENOSPC, or EDQUOT): what was being
    written was not (or was rolled back); the same call succeeds once space is
    back, with no restart (strata/disk_space.py builds these)."""


class CorruptionError(StrataError):
    """Bytes read back from disk or remote storage failed their checks."""

    code = grpc.StatusCode.DATA_LOSS


async def abort_with(context: grpc.aio.ServicerContext, exc: StrataError) -> NoReturn:
    """The one place a StrataError becomes a gRPC status: its code, its message,
    and its `trailing_metadata` when it has some (e.g. `strata-leader` on a
    walservice node that does not lead). Raises (grpc's AbortError)."""
    metadata = getattr(exc, "trailing_metadata", None)
    if metadata:
        context.set_trailing_metadata(metadata)
    await context.abort(exc.code, str(exc))
    raise AssertionError("unreachable: ServicerContext.abort raises")
