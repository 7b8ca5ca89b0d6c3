"""The pageserver: ingests WAL into immutable layer files and rebuilds any page
at any LSN of any timeline.

By role: `keys` and `value` (what layers store), `layers/` (the delta and image
file formats, the block cache, and the in-memory layer: ingest's write buffer),
`layer_map` (which layers cover a key at an LSN), `reconstruct` (page@LSN),
`index_part` (a timeline's manifest), `timeline`, `ingest`, `compaction`,
`tenant`, `service` (gRPC), `server` (the process).
"""
