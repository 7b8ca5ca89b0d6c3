"""The block cache: decoded layer-file blocks kept in memory, shared by every
layer reader of a pageserver (block_file.py's `BlockFileReader` asks it before
reading a block and fills it after).

Apart from the file format on purpose: the cache knows a block only as a value
with a size (`EntryBlock.nbytes`) under a key, never its bytes or layout.

Concurrency: one cache serves every reader thread at once; `BlockCache._lock`
guards all of its state (see the class).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pageserver.layers.block_file import EntryBlock

FileIdentity = tuple[int, int, int]  # (st_dev, st_ino, file checksum)
BlockCacheKey = tuple[FileIdentity, int]  # (file, block number)


class BlockCache:
    """An LRU of decoded blocks shared by the readers of a pageserver, bounded
    by the bytes the blocks hold (a block larger than the whole budget is not
    kept). Keyed by (file identity, block number); the identity includes the
    file's checksum, so a file replaced under the same name never hits stale
    blocks.

    Thread-safe: every method takes `_lock`, which guards `_blocks`, `_bytes`
    and the counters; nothing else is done while holding it.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes={capacity_bytes} must be >= 0")
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._blocks: OrderedDict[BlockCacheKey, tuple[EntryBlock, int]] = OrderedDict()
        self._bytes = 0  # sum of the sizes in _blocks, <= capacity_bytes
        self.hits = 0
        self.misses = 0

    def get(self, key: BlockCacheKey) -> EntryBlock | None:
        with self._lock:
            found = self._blocks.get(key)
            if found is None:
                self.misses += 1
                return None
            self._blocks.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: BlockCacheKey, block: EntryBlock, nbytes: int | None = None) -> None:
        size = block.nbytes if nbytes is None else nbytes
        if size > self.capacity_bytes:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._blocks[key] = (block, size)
            self._bytes += size
            while self._bytes > self.capacity_bytes:
                _, (_, evicted) = self._blocks.popitem(last=False)
                self._bytes -= evicted

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._blocks
