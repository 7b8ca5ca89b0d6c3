"""Vector index builds over layer snapshots (CuPy on a GPU, NumPy otherwise).

`build_index` / `build_indexes` (gpu/build.py) read collections from layer files
in remote storage and write IVF-Flat index objects (`IvfIndex`, whose format is
strata/vectors/ivf_index.py) that compute_shim.VectorCollection.search uses; `Device` (gpu/xp.py) is the one
array-module abstraction; `kmeans` / `train_batched` (gpu/kmeans.py) the
tiled-GEMM k-means.
"""

from gpu.build import BuildResult, IndexSpec, build_index, build_indexes
from gpu.kmeans import assign, kmeans, train_batched
from gpu.xp import Device
from strata.vectors.ivf_index import IvfIndex

__all__ = ["BuildResult", "Device", "IndexSpec", "IvfIndex", "assign", "build_index", "build_indexes", "kmeans", "train_batched"]
