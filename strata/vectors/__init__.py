"""What vector collections (compute_shim/vectors.py) and index builds (gpu/)
share, one module per format or role; it imports no component:

- `collection_format`: the page format of collections in a timeline's relations;
- `ivf_index`: the IVF-Flat index object (format, where it is stored, lookup, search);
- `kernels`: distances as one matrix multiply, top-k merges, NO_ID.
"""
