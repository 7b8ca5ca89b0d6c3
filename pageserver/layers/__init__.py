"""Immutable layer files: `names` (what a layer is called), `delta` and
`image` (one module per file format), and `block_file` (the blocks, index,
trailer and block cache the two formats share)."""
