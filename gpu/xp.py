"""One array module for both devices: CuPy on a CUDA device, NumPy otherwise.

    dev = Device.get("auto")      # "auto" | "cpu" | "gpu"
    x = dev.asarray(host_rows)    # on the device; dev.xp is cupy or numpy
    host = dev.to_host(x)

"auto" picks CuPy when it imports and sees a CUDA device, else NumPy;
"gpu" raises FailedPrecondition saying why it cannot. The k-means and IVF code
call only `dev.xp` (the shared NumPy/CuPy API) and the few helpers here, so
one code path runs on both and CI tests it on NumPy.

CuPy float32 matmul uses tensor cores (TF32) only with CUPY_TF32=1; the GPU
path sets it unless the caller set it, because k-means tolerates TF32's
rounding (results are compared by recall, not bit for bit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from strata.errors import FailedPrecondition, InvalidArgument

DEVICES = ("auto", "cpu", "gpu")


def _cupy() -> tuple[ModuleType | None, str]:
    os.environ.setdefault("CUPY_TF32", "1")
    try:
        import cupy  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, f"cupy does not import ({type(exc).__name__}: {exc}); install the gpu extra: pip install 'strata[gpu]'"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"no CUDA device ({exc})"
    if n < 1:
        return None, "no CUDA device"
    return cupy, ""


@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "gpu"
    xp: ModuleType
    # Bytes one distance tile ([rows, k] float32 plus its temporaries) may use.
    tile_bytes: int

    @classmethod
    def get(cls, device: str = "auto") -> Device:
        if device not in DEVICES:
            raise InvalidArgument(f"device={device!r} is invalid: expected one of {', '.join(DEVICES)}")
        if device in ("auto", "gpu"):
            cp, why = _cupy()
            if cp is not None:
                free, _total = cp.cuda.runtime.memGetInfo()
                return cls("gpu", cp, max(64 << 20, int(free * 0.25)))
            if device == "gpu":
                raise FailedPrecondition(f"device='gpu' but {why}; use device='cpu' or 'auto'")
        return cls("cpu", np, 64 << 20)

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a: Any) -> np.ndarray:
        return a.get() if self.is_gpu else np.asarray(a)

    def synchronize(self) -> None:
        if self.is_gpu:
            self.xp.cuda.Stream.null.synchronize()

    def segment_sum(self, x: Any, labels: Any, k: int) -> Any:
        """[k, d] sums of the rows of x per label (labels in [0, k))."""
        xp = self.xp
        if self.is_gpu:
            import cupyx  # type: ignore[import-not-found]

            out = xp.zeros((k, x.shape[1]), dtype=x.dtype)
            cupyx.scatter_add(out, labels, x)
            return out
        # Sort rows by label, then sum each contiguous run: a Python loop of k
        # contiguous sums is ~30x faster than np.add.reduceat over axis 0.
        # Labels narrowed to 16 bits sort by radix (~10x faster than int64),
        # and np.take gathers rows ~2x faster than fancy indexing.
        order = stable_label_order(labels, k)
        xs = np.take(x, order, axis=0)
        bounds = np.searchsorted(labels[order], np.arange(k + 1))
        out = np.zeros((k, x.shape[1]), dtype=x.dtype)
        for j in np.flatnonzero(np.diff(bounds)):
            xs[bounds[j] : bounds[j + 1]].sum(axis=0, out=out[j])
        return out

    def tile_rows(self, k: int, dim: int) -> int:
        """Rows per distance tile so the [rows, k] block fits `tile_bytes`."""
        per_row = 4 * (2 * k + dim)
        return max(256, int(self.tile_bytes // per_row))


def stable_label_order(labels: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(labels, kind="stable") for labels in [0, k): with k <= 2^16
    the labels are sorted as uint16, which NumPy sorts by radix (a few ms for
    a million labels instead of ~150 ms for int64)."""
    if k <= 1 << 16:
        return np.argsort(labels.astype(np.uint16), kind="stable")
    return np.argsort(labels, kind="stable")
