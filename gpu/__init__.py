"""Vector index builds over layer snapshots (CuPy on a GPU, NumPy otherwise).

`build_index` / `build_indexes` (gpu/build.py) read collections from layer files
in remote storage and write IVF-Flat index objects that
compute_shim.VectorCollection.search uses; `Device` (gpu/xp.py) is the one
array-module abstraction; `kmeans` / `train_batched` (gpu/kmeans.py) the
tiled-GEMM k-means.
"""

from gpu.build import BuildResult, IndexSpec, build_index, build_indexes
from gpu.ivf import IvfIndex
from gpu.kmeans import assign, kmeans, train_batched
from gpu.xp import Device

__all__ = ["BuildResult", "Device", "IndexSpec", "IvfIndex", "assign", "build_index", "build_indexes", "kmeans", "train_batched"]
