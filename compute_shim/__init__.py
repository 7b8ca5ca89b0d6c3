"""What a stateless compute node links: gRPC clients for Strata's services."""

from compute_shim.client import Client, PageError

__all__ = ["Client", "PageError"]
