"""Domain types at module boundaries: ids, LSNs, keys.

Ids are 32 lowercase hex characters (DESIGN.md, "Words"). LSNs are uint64 WAL
byte positions; a record's LSN is the position just past its frame. A database
name is a DNS label, `[a-z][a-z0-9-]{0,62}` (DESIGN.md, "Databases").
"""

from __future__ import annotations

import re
import secrets
from typing import NewType

from strata.errors import InvalidArgument

TenantId = NewType("TenantId", str)
TimelineId = NewType("TimelineId", str)
Lsn = NewType("Lsn", int)
Term = NewType("Term", int)
DatabaseName = NewType("DatabaseName", str)

MAX_U64 = (1 << 64) - 1
DEFAULT_PAGE_SIZE = 8192
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536

_ID_RE = re.compile(r"[0-9a-f]{32}")
_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")


def new_id() -> str:
    return secrets.token_hex(16)


def _check_id(value: str, field: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidArgument(f"{field}={value!r} is malformed: expected 32 lowercase hex characters")
    return value


def database_name(value: str, field: str = "name") -> DatabaseName:
    """A database name, else InvalidArgument saying what a name may be."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field}={value!r} is not a database name: 1 to 63 characters, lowercase letters, digits and '-', "
            "starting with a letter (a DNS label)"
        )
    return DatabaseName(value)


def tenant_id(value: str, field: str = "tenant_id") -> TenantId:
    return TenantId(_check_id(value, field))


def timeline_id(value: str, field: str = "timeline_id") -> TimelineId:
    return TimelineId(_check_id(value, field))


def page_size(value: int, field: str = "page_size") -> int:
    """0 means the default; otherwise a power of two from 512 to 65536."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if value < MIN_PAGE_SIZE or value > MAX_PAGE_SIZE or value & (value - 1):
        raise InvalidArgument(
            f"{field}={value} is invalid: expected a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})"
        )
    return value


# The longest ttl_seconds / pitr_seconds accepted: 100 years. Times are kept in
# microseconds (expires_at_us = now + ttl), which must stay well inside uint64.
MAX_DURATION_SECONDS = 100 * 365 * 24 * 3600


def duration_seconds(value: int, field: str) -> int:
    """A request's duration in seconds (0 has the field's own meaning): 0 to
    MAX_DURATION_SECONDS, else InvalidArgument naming the field and the bound."""
    if not 0 <= value <= MAX_DURATION_SECONDS:
        raise InvalidArgument(f"{field}={value} is out of range: at most {MAX_DURATION_SECONDS} seconds (100 years)")
    return value


# The highest start_lsn a timeline may be created at: 2^62 leaves 4 EiB of WAL
# before an LSN could pass uint64 (a start near 2^64 once stored WAL whose LSNs
# no response could carry).
MAX_START_LSN = Lsn(1 << 62)


def start_lsn(value: int, field: str = "start_lsn") -> Lsn:
    if not 0 <= value <= MAX_START_LSN:
        raise InvalidArgument(f"{field}={value} is out of range: at most {MAX_START_LSN} (2^62)")
    return Lsn(value)
