"""What a stateless compute node links: gRPC clients for Strata's services."""

from compute_shim.client import Client, PageError
from compute_shim.wal_writer import AppendFailed, WalWriter

__all__ = ["AppendFailed", "Client", "PageError", "WalWriter"]
