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

Only a layer named by an uploaded index has `remote` set (remote_timeline.py
sets it once that index is up), so an evicted layer can always be downloaded
again, after a restart too.

Disk full (strata/disk_space.py): `evict_for_space(n)` evicts uploaded,
unpinned layers (least recently used first), whatever the budget, until about
`n` bytes are freed: a layer flush that ran out of space calls it before its
retry (pageserver/timeline.py). A download that runs out of space evicts the
same way and tries once more, then answers RESOURCE_EXHAUSTED (DiskFull).

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
from pathlib import Path

from strata.disk_space import DiskSpaceWatch, disk_full_error, is_disk_full
from strata.errors import Unavailable
from strata.logs import EventLogger
from strata.remote_storage.interface import RemoteStorage

DEFAULT_LOCAL_CACHE_BYTES = 10 * 1024**3


class LayerCache:
    def __init__(
        self, storage: RemoteStorage | None, executor: Executor, log: EventLogger, budget_bytes: int,
        data_dir: Path | None = None,
    ) -> None:
        self.storage = storage
        self.data_dir = data_dir or Path(".")
        # The pageserver's disk-full state, shared by its timelines (`disk_full` / `disk_space_back`).
        self.disk = DiskSpaceWatch(log, self.data_dir)
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
            fetch = lambda: storage.download_file(remote.key, layer.path, expected=remote)  # noqa: E731
            try:
                await asyncio.get_running_loop().run_in_executor(self.executor, fetch)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.disk.failed("layer_download", exc, layer=layer.name.file_name)
                if not self.evict_for_space(remote.size):
                    raise disk_full_error("pageserver", self.data_dir, f"layer {layer.name.file_name} was not downloaded", exc) from exc
                try:
                    await asyncio.get_running_loop().run_in_executor(self.executor, fetch)
                except OSError as again:
                    if not is_disk_full(again):
                        raise
                    raise disk_full_error("pageserver", self.data_dir, f"layer {layer.name.file_name} was not downloaded", again) from again
            self.disk.succeeded()
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
        if self.local_bytes > self.budget_bytes:
            self._evict(self.local_bytes - self.budget_bytes, "budget")

    def evict_for_space(self, need_bytes: int) -> int:
        """The disk is full: evict LRU layers (uploaded, unpinned) until about
        `need_bytes` are freed, whatever the budget. Returns the bytes freed."""
        return self._evict(max(1, need_bytes), "disk_full")

    def _evict(self, over: int, reason: str) -> int:
        with self._lock:
            victims = []
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
            self.log.info(
                "layer_evicted", layer=layer.name.file_name, bytes=layer.file_size, local_bytes=self.local_bytes, reason=reason,
            )
        return sum(layer.file_size for layer in victims)
