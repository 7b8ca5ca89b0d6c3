"""The in-memory layer: what ingest wrote since the last freeze.

Holds, for every key, the values of LSNs in [start_lsn, end_lsn), in LSN order.
Ingest appends to the *open* layer on the event loop; `freeze` makes it
immutable, after which the flush thread reads it to write an L0 delta layer
while readers on the loop keep reading it until the layer file replaces it.

Concurrency: mutated only on the event loop and only while not frozen; a
frozen layer is never mutated, so the flush thread reads it without locks.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from pageserver.index_part import Truncation
from pageserver.keys import Key
from pageserver.value import will_init
from strata.ids import Lsn


class InMemoryLayer:
    def __init__(self, start_lsn: Lsn) -> None:
        self.start_lsn = start_lsn
        self.end_lsn = start_lsn  # exclusive: one past the last LSN put
        self.frozen = False
        self.bytes = 0
        self.created_at = time.monotonic()
        # The timeline's relation directory as of end_lsn - 1, taken at freeze:
        # what index_part.json records once this layer is on disk.
        self.relations_at_end: dict[int, object] = {}
        self.truncations_at_end: tuple[Truncation, ...] = ()
        # key -> ([lsn, ...], [value, ...]) in ascending LSN
        self._entries: dict[int, tuple[list[int], list[bytes]]] = {}

    def put(self, key: Key, lsn: Lsn, value: bytes) -> None:
        if self.frozen:
            raise RuntimeError("put into a frozen in-memory layer")
        if lsn < self.start_lsn:
            raise ValueError(f"lsn={lsn} is below the layer's start_lsn={self.start_lsn}")
        lsns, values = self._entries.setdefault(key, ([], []))
        if lsns and lsn <= lsns[-1]:
            raise ValueError(f"key={key:#x} lsn={lsn} is not after the previous lsn={lsns[-1]}")
        lsns.append(lsn)
        values.append(value)
        self.bytes += len(value) + 48
        self.end_lsn = max(self.end_lsn, lsn + 1)

    def advance(self, lsn: int) -> None:
        """Record that every record up to `lsn` was ingested (even if it added no value here)."""
        self.end_lsn = max(self.end_lsn, lsn + 1)

    def freeze(self) -> None:
        self.frozen = True

    @property
    def empty(self) -> bool:
        return not self._entries

    def get(self, key: int, lsn_start: int, lsn_end: int) -> list[tuple[int, bytes]]:
        """(lsn, value) of `key` with lsn in [lsn_start, lsn_end), ascending."""
        found = self._entries.get(key)
        if found is None:
            return []
        lsns, values = found
        lo = bisect.bisect_left(lsns, lsn_start)
        hi = bisect.bisect_left(lsns, lsn_end)
        return list(zip(lsns[lo:hi], values[lo:hi]))

    def get_newest_first(self, key: int, lsn_start: int, lsn_end: int, stop_at_init: bool = True) -> list[tuple[int, bytes]]:
        """(lsn, value) of `key` in [lsn_start, lsn_end), newest first; with
        `stop_at_init`, only up to the newest value that defines the key alone."""
        found = self._entries.get(key)
        if found is None:
            return []
        lsns, values = found
        out: list[tuple[int, bytes]] = []
        lo = bisect.bisect_left(lsns, lsn_start)
        for i in range(bisect.bisect_left(lsns, lsn_end) - 1, lo - 1, -1):
            out.append((lsns[i], values[i]))
            if stop_at_init and will_init(values[i]):
                break
        return out

    def keys(self) -> list[int]:
        return list(self._entries)

    def sorted_entries(self) -> Iterator[tuple[int, int, bytes, bool]]:
        """(key, lsn, value, will_init) in (key, lsn) order: what the L0 delta holds."""
        for key in sorted(self._entries):
            lsns, values = self._entries[key]
            for lsn, value in zip(lsns, values):
                yield key, lsn, value, will_init(value)
