"""PRAGMAs a Strata database refuses (compute_shim/sqlite.py's module docstring,
"Limits"): values read the way SQLite's own parser reads them."""

from __future__ import annotations

# SQLite's journal modes in the order its PRAGMA journal_mode parser tries them
# (sqlite3JournalModename): the value is compared case-insensitively with the first
# len(value) characters of each, so "W" or "wA" mean WAL; no match is a query.
JOURNAL_MODES = ("delete", "persist", "off", "truncate", "memory", "wal")
REFUSED_JOURNAL_MODES: dict[str, str] = {
    "off": "transactions must be able to roll back; keep journal_mode=MEMORY (or DELETE, TRUNCATE, PERSIST: journals live in memory)",
    "wal": "each commit is already one atomic Append; keep journal_mode=MEMORY",
}
_NO_EXCLUSIVE = (
    "a failed commit is cleaned up when SQLite ends its transaction, which it never does in exclusive locking mode; "
    "keep NORMAL"
)


def refused_pragma(name: str, value: str | None) -> str | None:
    """Why PRAGMA `name`=`value` is refused on a Strata database, or None. Values are
    read the way SQLite's own parser reads them (SQLite hands them over dequoted):
    journal_mode by case-insensitive prefix in SQLite's order, locking_mode by
    case-insensitive name. Any synchronous level is fine: commits ship at
    SQLITE_FCNTL_SYNC, which SQLite sends under synchronous=OFF too."""
    if value is None:
        return None  # a query
    name = name.lower()
    if name == "journal_mode" and value:
        mode = next((m for m in JOURNAL_MODES if m[: len(value)] == value.lower()), None)
        return REFUSED_JOURNAL_MODES.get(mode) if mode is not None else None
    if name == "locking_mode" and value.lower() == "exclusive":
        return _NO_EXCLUSIVE
    return None
