"""Layers: `names` (what a layer is called), `delta` and `image` (one module
per immutable file format), `block_file` (the blocks, index and trailer the two
formats share), `block_cache` (decoded blocks in memory, shared by every
reader) and `in_memory_layer` (ingest's write buffer, before it is a file)."""
