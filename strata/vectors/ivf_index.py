"""The IVF-Flat index object: format, lookup and search.

Written by the index builds (gpu/build.py), searched by
compute_shim.VectorCollection; GC (pageserver/gc.py) keeps or deletes the
objects by their keys.

Stored at `tenants/<t>/timelines/<tl>/vector_indexes/<collection>/<LSN>.ivf`
(LSN: the snapshot LSN S as 16 upper-case hex digits), next to the layers;
the keys are built and parsed in strata/remote_storage/layout.py.
Little-endian:

| offset | size      | field                                                   |
|--------|-----------|---------------------------------------------------------|
| 0      | 4         | magic b"SIVF"                                           |
| 4      | 1         | FORMAT_VERSION (1)                                      |
| 5      | 1         | metric (0 l2, 1 cosine, 2 ip)                           |
| 6      | 2         | name length L (u16)                                     |
| 8      | 4         | dim (u32)                                               |
| 12     | 4         | nlist (u32)                                             |
| 16     | 8         | n, indexed rows (u64)                                   |
| 24     | 8         | snapshot_lsn S (u64)                                    |
| 32     | 8         | next_seq at S (u64): every row the index holds has seq < it |
| 40     | 32        | tenant id (32 ASCII hex)                                |
| 72     | 32        | timeline id (32 ASCII hex)                              |
| 104    | L         | collection name (UTF-8)                                 |
| ...    | 4·nlist·d | centroids float32 [nlist, dim]                          |
| ...    | 8·(nlist+1) | list offsets u64: list j is rows offsets[j]..offsets[j+1] |
| ...    | 8·n       | slots u64 (where the row lived at S)                    |
| ...    | 8·n       | ids u64                                                 |
| ...    | 8·n       | seqs u64 (the slot's seq at S)                          |
| ...    | 4·n·d     | rows float32 [n, dim], grouped by list (unit length for cosine) |
| end-8  | 8         | xxhash64 of every byte before it                        |

Search at LSN L >= S (compute_shim/vectors.py) passes the slots changed after
S (`exclude_slots`); their entries are skipped and the changed rows are
scanned exactly by the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import grpc
import numpy as np
import xxhash

from strata.errors import CorruptionError, InvalidArgument, NotFound
from strata.ids import Lsn, TenantId, TimelineId
from strata.remote_storage.layout import parse_vector_index_name, vector_index_key, vector_index_prefix
from strata.vectors.collection_format import METRICS
from strata.vectors.kernels import NO_ID, distances, merge_topk

MAGIC = b"SIVF"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBHIIQQQ32s32s")


def index_key(tenant_id: str, timeline_id: str, name: str, lsn: int) -> str:
    """The key of collection `name`'s index built at snapshot LSN `lsn`."""
    return vector_index_key(TenantId(tenant_id), TimelineId(timeline_id), name, Lsn(lsn))


def default_nprobe(nlist: int) -> int:
    return int(min(nlist, max(8, nlist // 32)))


@dataclass
class IvfIndex:
    tenant_id: str
    timeline_id: str
    name: str
    metric: str
    snapshot_lsn: int
    next_seq: int
    centroids: np.ndarray  # float32 [nlist, dim]
    offsets: np.ndarray  # uint64 [nlist + 1]
    slots: np.ndarray  # uint64 [n]
    ids: np.ndarray  # uint64 [n]
    seqs: np.ndarray  # uint64 [n]
    rows: np.ndarray  # float32 [n, dim], grouped by list

    # What search needs besides the lists, computed on first use (a build or a
    # GC pass that only writes or inspects the index never pays for them).
    @cached_property
    def _slot_order(self) -> np.ndarray:
        return np.argsort(self.slots, kind="stable")

    @cached_property
    def _row_sq(self) -> np.ndarray | None:
        return np.einsum("ij,ij->i", self.rows, self.rows) if self.metric == "l2" else None

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def list_sizes(self) -> np.ndarray:
        return np.diff(self.offsets.astype(np.int64))

    def labels(self) -> np.ndarray:
        """The list of every row (rows are grouped by list)."""
        return np.repeat(np.arange(self.nlist), self.list_sizes())

    def encode(self) -> bytes:
        raw_name = self.name.encode()
        head = _HEADER.pack(
            MAGIC, FORMAT_VERSION, METRICS.index(self.metric), len(raw_name), self.dim, self.nlist, len(self.ids),
            self.snapshot_lsn, self.next_seq, self.tenant_id.encode(), self.timeline_id.encode(),
        )
        parts = [
            head, raw_name, self.centroids.astype("<f4").tobytes(), self.offsets.astype("<u8").tobytes(),
            self.slots.astype("<u8").tobytes(), self.ids.astype("<u8").tobytes(), self.seqs.astype("<u8").tobytes(),
            self.rows.astype("<f4").tobytes(),
        ]
        body = b"".join(parts)
        return body + struct.pack("<Q", xxhash.xxh64_intdigest(body))

    @classmethod
    def decode(cls, data: bytes, where: str) -> IvfIndex:
        if len(data) < _HEADER.size + 8:
            raise CorruptionError(f"{where}: {len(data)} bytes is too short for an index object")
        (stored,) = struct.unpack_from("<Q", data, len(data) - 8)
        actual = xxhash.xxh64_intdigest(memoryview(data)[:-8])
        if actual != stored:
            raise CorruptionError(f"{where}: checksum {actual:016x} does not match the stored {stored:016x}")
        magic, version, metric, name_len, dim, nlist, n, lsn, next_seq, tenant, timeline = _HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise CorruptionError(f"{where}: magic {magic!r}, expected {MAGIC!r}")
        if version != FORMAT_VERSION:
            raise CorruptionError(f"{where}: index format version {version}, this reader knows {FORMAT_VERSION}")
        at = _HEADER.size
        name = data[at : at + name_len].decode()
        at += name_len

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal at
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=at)
            at += arr.nbytes
            return arr

        centroids = take("<f4", nlist * dim).reshape(nlist, dim).astype(np.float32)
        offsets = take("<u8", nlist + 1).astype(np.uint64)
        slots, ids, seqs = (take("<u8", n).astype(np.uint64) for _ in range(3))
        rows = take("<f4", n * dim).reshape(n, dim).astype(np.float32)
        if at != len(data) - 8:
            raise CorruptionError(f"{where}: {len(data) - 8 - at} unexpected bytes before the checksum")
        return cls(tenant.decode(), timeline.decode(), name, METRICS[metric], lsn, next_seq, centroids, offsets, slots, ids, seqs, rows)

    def search(
        self, q: np.ndarray, k: int, *, nprobe: int | None = None, exclude_slots: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed rows of each prepared query in the `nprobe` nearest
        lists, skipping rows whose slot is in `exclude_slots`; (ids, distances),
        [nq, k] padded with NO_ID / distance inf where fewer were found."""
        nprobe = default_nprobe(self.nlist) if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise InvalidArgument(f"nprobe={nprobe} is invalid: expected at least 1")
        nprobe = min(nprobe, self.nlist)
        keep = np.ones(len(self.ids), bool)
        if exclude_slots is not None and len(exclude_slots):
            sorted_slots = self.slots[self._slot_order]
            ex = np.asarray(exclude_slots, dtype=np.uint64)
            pos = np.searchsorted(sorted_slots, ex)
            hit = pos < len(sorted_slots)
            hit[hit] &= sorted_slots[pos[hit]] == ex[hit]
            keep[self._slot_order[pos[hit]]] = False
        coarse = distances(q, self.centroids, "ip" if self.metric == "ip" else "l2")
        nq = len(q)
        if nprobe < self.nlist:
            probe = np.argpartition(coarse, nprobe - 1, axis=1)[:, :nprobe]
        else:
            probe = np.tile(np.arange(self.nlist), (nq, 1))
        # Batched by list: each probed list is one matmul against all the
        # queries that probe it; each (query, probe) pair keeps its top k,
        # then one merge per query.
        flat_l = probe.reshape(-1)
        flat_q = np.repeat(np.arange(nq), nprobe)
        flat_p = np.tile(np.arange(nprobe), nq)
        order = np.argsort(flat_l, kind="stable")
        bounds = np.searchsorted(flat_l[order], np.arange(self.nlist + 1))
        cand_ids = np.full((nq, nprobe, k), NO_ID, np.uint64)
        cand_d = np.full((nq, nprobe, k), np.inf, np.float32)
        offsets = self.offsets.astype(np.int64)
        filtered = not keep.all()
        for lst in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[lst] : bounds[lst + 1]]
            lo, hi = offsets[lst], offsets[lst + 1]
            x, ids = self.rows[lo:hi], self.ids[lo:hi]
            x_sq = self._row_sq[lo:hi] if self._row_sq is not None else None
            if filtered:
                m = keep[lo:hi]
                x, ids, x_sq = x[m], ids[m], (x_sq[m] if x_sq is not None else None)
            if len(ids) == 0:
                continue
            d = distances(q[flat_q[sel]], x, self.metric, x_sq)
            kk = min(k, len(ids))
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if len(ids) > kk else np.broadcast_to(np.arange(kk), (len(sel), kk))
            cand_d[flat_q[sel], flat_p[sel], :kk] = np.take_along_axis(d, part, 1)
            cand_ids[flat_q[sel], flat_p[sel], :kk] = ids[part]
        return merge_topk(cand_ids.reshape(nq, -1), cand_d.reshape(nq, -1), k)


def load_index(storage: object, key: str) -> IvfIndex:
    return IvfIndex.decode(storage.download_bytes(key), f"remote {key}")  # type: ignore[attr-defined]


def list_index_lsns(storage: object, tenant_id: str, timeline_id: str, name: str) -> list[int]:
    prefix = vector_index_prefix(TenantId(tenant_id), TimelineId(timeline_id), name)
    listed = storage.list(prefix)  # type: ignore[attr-defined]
    return sorted(lsn for obj in listed if (lsn := parse_vector_index_name(obj.key[len(prefix) :])) is not None)


def find_index_key(client: object, storage: object, tenant_id: str, timeline_id: str, name: str, lsn: int) -> str | None:
    """The newest index object of the collection with snapshot LSN <= `lsn` on
    this timeline, else on its ancestors at or below the branch point."""
    tl, hi = timeline_id, lsn
    while tl:
        usable = [s for s in list_index_lsns(storage, tenant_id, tl, name) if s <= hi]
        if usable:
            return index_key(tenant_id, tl, name, usable[-1])
        try:
            info = client.get_timeline(tenant_id=tenant_id, timeline_id=tl)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise  # UNAVAILABLE and the like: the caller's to retry, not "no such timeline"
            raise NotFound(f"timeline {tl} of tenant {tenant_id} does not exist: {exc.details()}") from exc  # type: ignore[attr-defined]
        tl, hi = info.ancestor_timeline_id, min(hi, info.ancestor_lsn)
    return None
