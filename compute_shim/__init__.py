"""What a stateless compute node links: gRPC clients for Strata's services."""

from compute_shim.client import Client, PageError
from compute_shim.vectors import VectorCollection

__all__ = ["Client", "PageError", "VectorCollection"]
