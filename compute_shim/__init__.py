"""What a stateless compute node links: gRPC clients for Strata's services,
a page cache, and SQLite on Strata pages."""

from compute_shim.client import Client, PageError
from compute_shim.page_cache import PageCache
from compute_shim.sqlite import CommitRefused, CommitUncertain, WriteConflict, connect_sqlite

__all__ = ["Client", "CommitRefused", "CommitUncertain", "PageCache", "PageError", "WriteConflict", "connect_sqlite"]
