"""Local disk as a cache of remote layer files: on-demand download and LRU eviction.

With remote storage configured, the truth is the remote copy of each layer; the
local file is a cache entry. `LayerCache` (one per pageserver):

- `download(layer)`: fetch a layer that is not local (or whose local file failed
  its checks) on the executor, verified against the size and whole-file
  xxhash64 recorded in index_part.json (`HistoricLayer.remote`). Concurrent
  requests for one layer share one download.
- an LRU over local layers: every `reader()` touches the layer; after a flush,
  a compaction or a download adds bytes, the least recently used layers are
  evicted until the local bytes fit `--local-cache-bytes`. Only layers that are
  uploaded (`remote` set) and not pinned (a compaction thread reading them) are
  evicted; eviction runs on the event loop, and reads of layer files run on the
  event loop synchronously, so no read is ever in the middle of an evicted file.

Without remote storage nothing is evicted (no layer has `remote`).

Concurrency: `download`/`evict` run on the event loop; `touch` may be called
from executor threads (compaction), hence the lock around the LRU.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import Executor

from pageserver.layer_map import HistoricLayer, LayerDownloadNeeded
from strata.errors import Unavailable
from strata.logs import EventLogger
from strata.remote_storage.interface import RemoteStorage

DEFAULT_LOCAL_CACHE_BYTES = 10 * 1024**3


class LayerCache:
    def __init__(self, storage: RemoteStorage | None, executor: Executor, log: EventLogger, budget_bytes: int) -> None:
        self.storage = storage
        self.executor = executor
        self.log = log
        self.budget_bytes = budget_bytes
        self._lru: OrderedDict[int, HistoricLayer] = OrderedDict()
        self._lock = threading.Lock()
        self._downloads: dict[int, asyncio.Future[None]] = {}
        self.local_bytes = 0

    # -- bookkeeping ----------------------------------------------------------------

    def adopt(self, layer: HistoricLayer) -> None:
        """Track `layer` (local or not)."""
        layer.on_access = self.touch
        if layer.local:
            with self._lock:
                if id(layer) not in self._lru:
                    self._lru[id(layer)] = layer
                    self.local_bytes += layer.file_size

    def forget(self, layer: HistoricLayer) -> None:
        """`layer` left its timeline (compaction, deletion): stop tracking it."""
        with self._lock:
            if self._lru.pop(id(layer), None) is not None:
                self.local_bytes -= layer.file_size
        layer.on_access = None

    def touch(self, layer: HistoricLayer) -> None:
        with self._lock:
            if id(layer) in self._lru:
                self._lru.move_to_end(id(layer))

    # -- download -------------------------------------------------------------------

    async def download(self, need: LayerDownloadNeeded) -> None:
        layer = need.layer
        if layer.remote is None or self.storage is None:
            raise Unavailable(f"layer {layer.path} is not usable locally and remote storage does not hold it") from need
        running = self._downloads.get(id(layer))
        if running is not None:
            await asyncio.shield(running)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._downloads[id(layer)] = future
        try:
            if need.corrupt is not None:
                self.log.warning(
                    "layer_corrupt", layer=layer.name.file_name, path=str(layer.path), error=str(need.corrupt),
                    action="redownload",
                )
            layer.close()
            with self._lock:
                if self._lru.pop(id(layer), None) is not None:
                    self.local_bytes -= layer.file_size
            layer.local = False
            storage, remote = self.storage, layer.remote
            await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: storage.download_file(remote.key, layer.path, expected=remote)
            )
            layer.local = True
            self.adopt(layer)
            self.log.info("layer_downloaded", layer=layer.name.file_name, key=remote.key, bytes=remote.size)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._downloads[id(layer)]
        self.evict()

    async def ensure_local(self, layers: list[HistoricLayer]) -> None:
        for layer in layers:
            if not layer.local and layer.remote is not None:
                await self.download(LayerDownloadNeeded(layer))

    # -- eviction -------------------------------------------------------------------

    def evict(self) -> None:
        """Evict LRU layers (uploaded, unpinned) until local bytes fit the budget."""
        if self.local_bytes <= self.budget_bytes:
            return
        with self._lock:
            victims = []
            over = self.local_bytes - self.budget_bytes
            for layer in self._lru.values():
                if over <= 0:
                    break
                if layer.remote is None or layer.pins or id(layer) in self._downloads:
                    continue
                victims.append(layer)
                over -= layer.file_size
            for layer in victims:
                del self._lru[id(layer)]
                self.local_bytes -= layer.file_size
        for layer in victims:
            layer.close()
            layer.local = False
            layer.path.unlink(missing_ok=True)
            self.log.info("layer_evicted", layer=layer.name.file_name, bytes=layer.file_size, local_bytes=self.local_bytes)
