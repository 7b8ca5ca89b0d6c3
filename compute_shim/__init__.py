"""What a stateless compute node links: gRPC clients for Strata's services,
a WAL writer, a page cache, SQLite on Strata pages, and vector collections."""

from compute_shim.client import Client, PageError
from compute_shim.commits import NoCommitAtLsn, read_lsn_of
from compute_shim.page_cache import PageCache
from compute_shim.sqlite import CommitRefused, CommitUncertain, WriteConflict, connect_sqlite
from compute_shim.vectors import VectorCollection
from compute_shim.wal_writer import AppendFailed, WalWriter

__all__ = [
    "AppendFailed",
    "Client",
    "CommitRefused",
    "CommitUncertain",
    "NoCommitAtLsn",
    "PageCache",
    "PageError",
    "VectorCollection",
    "WalWriter",
    "WriteConflict",
    "connect_sqlite",
    "read_lsn_of",
]
