"""Strata: the parts every component shares.

- `strata.v1`: the generated gRPC stubs of the contract (do not edit).
- `strata.ids`: domain types (TenantId, TimelineId, Lsn) and their validation.
- `strata.errors`: the error hierarchy and its one mapping onto gRPC status codes.
- `strata.redo`: record validation and the redo rules of DESIGN.md.
- `strata.logs`: one key=value line per event.
- `strata.grpc_server`: serving a component (health, SIGTERM, limits).
- `strata.cli`: the `strata` console script.
"""
