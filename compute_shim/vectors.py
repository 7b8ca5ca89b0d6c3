"""`compute_shim.VectorCollection`: vectors kept in a timeline's pages.

    col = VectorCollection(client, tenant, timeline, "memories", dim=128)
    lsn = col.upsert(ids, rows)              # one atomic Append; its end LSN
    ids, dists = col.search(queries, k=10)   # exact, or IVF + fresh rows

The page format is in strata/vectors/collection_format.py, the index object
in strata/vectors/ivf_index.py and the design in
docs/design/0004-vectors.md. Because vectors are ordinary pages, a branch
forks them for free, `lsn=` reads any retained LSN, and GC needs nothing new.

Writes are conditional appends (`expected_end_lsn`): a change is planned
against the collection's state at the timeline's end E and appended only if
the end is still E; otherwise it is planned again (another writer won).
Bad input raises InvalidArgument before anything is written.

Reads keep a mirror of the collection at the newest LSN read (ids, seqs,
live bits and rows per slot); reading another LSN re-reads only the data
pages whose directory seq differs, with GetPages in big batches.

Search without an index is exact (batched matmul distances). With an index
object in remote storage (the pageserver's, or `remote_storage=`) built at
snapshot S <= the read LSN (gpu.build_index; this timeline's or an
ancestor's at or below the branch point), search probes `nprobe` lists of
the index and scans exactly the rows changed after S, dropping index entries
whose slot changed (deleted or rewritten): results are always as fresh as
the read LSN, and no page is read at S itself (GC may have removed it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import numpy as np

from compute_shim.client import Client, PageError
from strata.errors import FailedPrecondition, InvalidArgument, NotFound, StrataError
from strata.logs import event_logger
from strata.v1 import records_pb2, timeline_pb2
from strata.vectors import collection_format as vf
from strata.vectors.ivf_index import IvfIndex, find_index_key, load_index
from strata.vectors.kernels import NO_ID, exact_topk, merge_topk, prepare

if TYPE_CHECKING:
    from strata.remote_storage.interface import RemoteStorage

log = event_logger("vectors")

MAX_WRITE_ATTEMPTS = 8
READ_BATCH = 256  # pages per GetPages message


class PageSource(Protocol):
    """Pages of one timeline at one LSN (GetPages, or layer files for gpu/)."""

    page_size: int

    def rel_nblocks(self, rel: int) -> int | None:
        """The relation's size, or None if it does not exist."""
        ...

    def pages(self, rel: int, blknos: Sequence[int]) -> list[bytes]: ...


@dataclass
class ClientPages:
    """A PageSource over the pageserver's GetRelSize / GetPages."""

    client: Client
    tenant_id: str
    timeline_id: str
    lsn: int
    page_size: int

    def rel_nblocks(self, rel: int) -> int | None:
        r = self.client.get_rel_size(tenant_id=self.tenant_id, timeline_id=self.timeline_id, rel=rel, lsn=self.lsn)
        return r.nblocks if r.exists else None

    def pages(self, rel: int, blknos: Sequence[int]) -> list[bytes]:
        got = self.client.read_pages(
            tenant_id=self.tenant_id, timeline_id=self.timeline_id, keys=[(rel, b) for b in blknos], lsn=self.lsn, batch=READ_BATCH
        )
        for blkno, page in zip(blknos, got):
            if isinstance(page, PageError):
                raise StrataError(f"reading rel={rel} blkno={blkno} at lsn={self.lsn}: {page}")
        return got  # type: ignore[return-value]


# -- reading a collection at an LSN ---------------------------------------------------


def read_catalog(source: PageSource) -> dict[str, vf.CatalogEntry]:
    n = source.rel_nblocks(vf.CATALOG_REL)
    if not n:
        return {}
    out = {}
    for b, page in enumerate(source.pages(vf.CATALOG_REL, range(n))):
        for e in vf.decode_catalog_page(page, f"vector catalog block {b}"):
            out[e.name] = e
    return out


def find_collection(source: PageSource, name: str, lsn: int) -> vf.CatalogEntry:
    vf.check_name(name)
    entry = read_catalog(source).get(name)
    if entry is None:
        raise NotFound(f"vector collection {name!r} does not exist at lsn={lsn}: create it with VectorCollection(..., dim=D)")
    return entry


@dataclass
class CollectionState:
    """A collection at one LSN: its meta, the seq of each data page, and the
    slots (slot p*S + s is slot s of data page p)."""

    entry: vf.CatalogEntry
    layout: vf.DataLayout
    meta: vf.Meta
    page_seqs: np.ndarray  # uint64[npages]
    data: vf.DataPages
    lsn: int

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.data.live)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The live slot of each id, -1 where absent."""
        live = self.live_slots()
        out = np.full(len(ids), -1, np.int64)
        if len(live) == 0:
            return out
        live_ids = self.data.ids[live]
        order = np.argsort(live_ids, kind="stable")
        sorted_ids = live_ids[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        out[found] = live[order[pos[found]]]
        return out


def read_directory(source: PageSource, entry: vf.CatalogEntry, lsn: int) -> tuple[vf.Meta, np.ndarray]:
    """The meta page and the seq of every data page."""
    nblocks = source.rel_nblocks(entry.dir_rel)
    if not nblocks:
        raise NotFound(f"vector collection {entry.name!r} has no directory at lsn={lsn}: it did not exist yet")
    pages = source.pages(entry.dir_rel, range(nblocks))
    meta = vf.decode_meta(pages[0], f"collection {entry.name!r} meta page")
    seqs = [vf.decode_dir_page(p, f"collection {entry.name!r} directory block {b + 1}") for b, p in enumerate(pages[1:])]
    page_seqs = np.concatenate(seqs)[: meta.npages] if seqs else np.zeros(0, np.uint64)
    if len(page_seqs) != meta.npages:
        raise FailedPrecondition(f"collection {entry.name!r}: directory covers {len(page_seqs)} pages, meta says {meta.npages}")
    return meta, page_seqs


def load_state(source: PageSource, entry: vf.CatalogEntry, lsn: int, base: CollectionState | None = None) -> CollectionState:
    """The collection at `lsn`, re-reading only the data pages whose seq
    differs from `base` (the same collection at another LSN)."""
    meta, page_seqs = read_directory(source, entry, lsn)
    layout = vf.DataLayout.of(source.page_size, entry.dim)
    s = layout.slots
    if base is not None and base.entry == entry:
        keep = min(len(base.page_seqs), meta.npages)
        stale = np.flatnonzero(base.page_seqs[:keep] != page_seqs[:keep])
        read = np.concatenate([stale, np.arange(keep, meta.npages)]).astype(np.int64)
        if len(read) == 0 and keep == len(base.page_seqs):
            return replace(base, meta=meta, page_seqs=page_seqs, lsn=lsn)
        data = _resized(base.data, meta.npages * s, entry.dim)
    else:
        read = np.arange(meta.npages, dtype=np.int64)
        data = _resized(None, meta.npages * s, entry.dim)
    if len(read):
        got = vf.decode_data_pages(layout, source.pages(entry.data_rel, read.tolist()), f"collection {entry.name!r}")
        rows = slots_of(read, s)
        data.live[rows], data.ids[rows], data.seqs[rows], data.rows[rows] = got.live, got.ids, got.seqs, got.rows
    return CollectionState(entry, layout, meta, page_seqs, data, lsn)


def slots_of(pages: np.ndarray, slots_per_page: int) -> np.ndarray:
    """Every slot number of the given data pages, page by page."""
    return (np.asarray(pages, np.int64)[:, None] * slots_per_page + np.arange(slots_per_page)[None, :]).reshape(-1)


def _resized(data: vf.DataPages | None, n: int, dim: int) -> vf.DataPages:
    out = vf.DataPages(np.zeros(n, bool), np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros((n, dim), np.float32))
    if data is not None:
        m = min(n, len(data.ids))
        out.live[:m], out.ids[:m], out.seqs[:m], out.rows[:m] = data.live[:m], data.ids[:m], data.seqs[:m], data.rows[:m]
    return out


@dataclass
class Changes:
    """The slots changed at or after `since_seq`, read at one LSN."""

    meta: vf.Meta
    slots: np.ndarray  # int64: every slot of the changed data pages with seq >= since_seq
    live: np.ndarray
    ids: np.ndarray
    rows: np.ndarray


def read_changes(source: PageSource, entry: vf.CatalogEntry, lsn: int, since_seq: int) -> Changes:
    meta, page_seqs = read_directory(source, entry, lsn)
    layout = vf.DataLayout.of(source.page_size, entry.dim)
    pages = np.flatnonzero(page_seqs >= np.uint64(since_seq))
    got = vf.decode_data_pages(layout, source.pages(entry.data_rel, pages.tolist()), f"collection {entry.name!r}")
    slots = slots_of(pages, layout.slots)
    changed = got.seqs >= np.uint64(since_seq)
    return Changes(meta, slots[changed], got.live[changed], got.ids[changed], got.rows[changed])


# -- checking input -----------------------------------------------------------------


def check_ids(ids: Any, what: str = "ids") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or len(arr) == 0:
        raise InvalidArgument(f"{what} has shape {arr.shape}: expected a non-empty 1-D sequence of uint64 ids")
    if arr.dtype.kind == "i":
        if (arr < 0).any():
            raise InvalidArgument(f"{what} has a negative id ({int(arr.min())}): ids are uint64")
    elif arr.dtype.kind != "u":
        raise InvalidArgument(f"{what} has dtype {arr.dtype}: expected integer (uint64) ids")
    arr = arr.astype(np.uint64)
    if (arr == NO_ID).any():
        raise InvalidArgument(f"{what} holds {int(NO_ID)} (2**64 - 1): that id is reserved, search returns it for 'no result'")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        dup = uniq[counts > 1][:5].tolist()
        raise InvalidArgument(f"{what} repeats ids {dup}: each id may appear once per call")
    return arr


def check_rows(rows: Any, dim: int, metric: str, what: str = "vectors") -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
        raise InvalidArgument(f"{what} has shape {arr.shape}: expected (n, {dim}) with n >= 1 (the collection's dim is {dim})")
    if arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"{what} has dtype {arr.dtype}: expected float32 numbers")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise InvalidArgument(f"{what} row {int(np.flatnonzero(bad)[0])} has NaN or inf (as float32): every value must be finite")
    if metric == "cosine":
        zero = ~(np.abs(arr) > 0).any(axis=1)
        if zero.any():
            raise InvalidArgument(f"{what} row {int(np.flatnonzero(zero)[0])} is all zeros: cosine needs a non-zero vector")
    return arr


def tenant_info(client: Client, tenant_id: str) -> timeline_pb2.TenantInfo:
    """The tenant's TenantInfo (page size, remote storage URL, ...)."""
    for t in client.list_tenants().tenants:
        if t.tenant_id == tenant_id:
            return t
    raise NotFound(f"tenant {tenant_id} is not on this pageserver")


def tenant_page_size(client: Client, tenant_id: str) -> int:
    return int(tenant_info(client, tenant_id).page_size)


def tenant_remote_storage(client: Client, tenant_id: str) -> str:
    """The remote storage URL the pageserver keeps the tenant's layers in ("" if none)."""
    return str(tenant_info(client, tenant_id).remote_storage)


# -- the collection -------------------------------------------------------------------


class VectorCollection:
    """One named collection of (uint64 id, float32[dim]) rows on one timeline.

    `dim=None` opens an existing collection (NotFound if there is none);
    with `dim`, a missing collection is created. Search uses the index
    objects gpu.build_index writes to remote storage: by default
    (`remote_storage="auto"`) the pageserver's (TenantInfo.remote_storage;
    exact search only when it has none), or the URL / RemoteStorage given;
    `remote_storage=None` always searches exactly."""

    def __init__(
        self,
        client: Client,
        tenant_id: str,
        timeline_id: str,
        name: str,
        dim: int | None = None,
        metric: str = "l2",
        *,
        remote_storage: str | RemoteStorage | None = "auto",
    ) -> None:
        vf.check_name(name)
        if metric not in vf.METRICS:
            raise InvalidArgument(f"metric={metric!r} is invalid: expected one of {', '.join(vf.METRICS)}")
        if dim is not None and (not isinstance(dim, (int, np.integer)) or dim < 1):
            raise InvalidArgument(f"dim={dim!r} is invalid: expected a positive integer")
        self.client, self.tenant_id, self.timeline_id, self.name = client, tenant_id, timeline_id, name
        info = tenant_info(client, tenant_id)
        self.page_size = int(info.page_size)
        if remote_storage == "auto":
            remote_storage = info.remote_storage or None
        if isinstance(remote_storage, str):
            from strata.remote_storage.url import open_remote_storage

            remote_storage = open_remote_storage(remote_storage)
        self.remote_storage = remote_storage
        self._cache: CollectionState | None = None
        self._last_write_lsn = 0
        self._indexes: dict[str, IvfIndex] = {}
        end = self._end_lsn()
        catalog = read_catalog(self._source(end))
        entry = catalog.get(name)
        if entry is None:
            if dim is None:
                raise NotFound(f"vector collection {name!r} does not exist on timeline {timeline_id}: pass dim= to create it")
            vf.DataLayout.of(self.page_size, int(dim))  # InvalidArgument if it cannot fit
            entry = self._create(int(dim), metric)
        elif dim is not None and (entry.dim != dim or entry.metric != metric):
            raise InvalidArgument(
                f"vector collection {name!r} exists with dim={entry.dim} metric={entry.metric}, "
                f"not dim={dim} metric={metric}: open it with those (or dim=None)"
            )
        self.entry = entry

    @property
    def dim(self) -> int:
        return self.entry.dim

    @property
    def metric(self) -> str:
        return self.entry.metric

    # -- plumbing ------------------------------------------------------------------

    def _source(self, lsn: int) -> ClientPages:
        return ClientPages(self.client, self.tenant_id, self.timeline_id, lsn, self.page_size)

    def _end_lsn(self) -> int:
        """The timeline's end at the walservice: what a conditional append expects."""
        return self.client.status(tenant_id=self.tenant_id, timeline_id=self.timeline_id).commit_lsn

    def read_lsn(self, lsn: int = 0) -> int:
        """`lsn`, or for 0 the timeline's commit LSN at the walservice (this
        handle's own writes included): a read sees every Append acknowledged
        before it, whoever made it, and the pageserver's GetPages wait until
        that LSN is ingested. (The pageserver's `last_record_lsn` would be as
        cheap to ask but may trail a write another handle just made.)"""
        if lsn:
            return lsn
        return max(self._end_lsn(), self._last_write_lsn)

    def state(self, lsn: int = 0) -> CollectionState:
        """The collection at `lsn` (0: latest), from the mirror plus the pages that differ."""
        lsn = self.read_lsn(lsn)
        if self._cache is not None and self._cache.lsn == lsn:
            return self._cache
        st = load_state(self._source(lsn), self.entry, lsn, self._cache)
        if self._cache is None or lsn >= self._cache.lsn:
            self._cache = st
        return st

    def _append(self, records: list[records_pb2.Record], end: int) -> int | None:
        """Append iff the timeline still ends at `end`; None when another writer won."""
        try:
            resp = self.client.append(
                tenant_id=self.tenant_id, timeline_id=self.timeline_id, records=records, expected_end_lsn=end
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "expected_end_lsn" in (exc.details() or ""):
                return None
            raise
        self._last_write_lsn = max(self._last_write_lsn, resp.end_lsn)
        return resp.end_lsn

    def _create(self, dim: int, metric: str) -> vf.CatalogEntry:
        per_page = vf.catalog_entries_per_page(self.page_size)
        for _ in range(MAX_WRITE_ATTEMPTS):
            end = self._end_lsn()
            catalog = read_catalog(self._source(end))
            if self.name in catalog:
                return catalog[self.name]
            entries = sorted(catalog.values(), key=lambda e: e.number)
            entry = vf.CatalogEntry(self.name, dim, metric, len(entries))
            block = entry.number // per_page
            on_page = [e for e in entries if e.number // per_page == block] + [entry]
            meta = vf.Meta(dim, metric, vf.DataLayout.of(self.page_size, dim).slots, next_seq=1, nslots=0, npages=0)
            records = [
                _image(vf.CATALOG_REL, block, vf.encode_catalog_page(on_page, self.page_size)),
                _image(entry.dir_rel, 0, vf.encode_meta(meta, self.page_size)),
            ]
            lsn = self._append(records, end)
            if lsn is not None:
                log.info("collection_created", tenant=self.tenant_id, timeline=self.timeline_id, name=self.name, dim=dim, metric=metric, rel=entry.data_rel, lsn=lsn)
                return entry
        raise FailedPrecondition(f"creating collection {self.name!r}: the timeline kept moving ({MAX_WRITE_ATTEMPTS} attempts)")

    def _write(self, event: str, plan: Any) -> int:
        """Plan a change against the state at the timeline's end and append it
        conditionally; replan when another writer moved the end."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            end = self._end_lsn()
            st = self.state(end)
            change = plan(st)
            if change is None:
                return end
            pages, new_meta, touched, count = change
            records = self._records(st, pages, new_meta, touched)
            lsn = self._append(records, end)
            if lsn is None:
                continue
            self._apply(st, pages, new_meta, touched, lsn)
            log.info(event, tenant=self.tenant_id, timeline=self.timeline_id, name=self.name, rows=count, pages=len(touched), lsn=lsn)
            return lsn
        raise FailedPrecondition(f"{event} on collection {self.name!r}: the timeline kept moving ({MAX_WRITE_ATTEMPTS} attempts)")

    def _records(self, st: CollectionState, pages: vf.DataPages, meta: vf.Meta, touched: np.ndarray) -> list[records_pb2.Record]:
        layout = st.layout
        records = [
            _image(self.entry.data_rel, int(p), img) for p, img in zip(touched, vf.encode_data_pages(layout, pages))
        ]
        page_seqs = _page_seqs_after(st, meta, touched)
        per_dir = vf.dir_entries_per_page(self.page_size)
        for b in np.unique(touched // per_dir):
            chunk = page_seqs[b * per_dir : (b + 1) * per_dir]
            records.append(_image(self.entry.dir_rel, int(b) + 1, vf.encode_dir_page(chunk, self.page_size)))
        records.append(_image(self.entry.dir_rel, 0, vf.encode_meta(meta, self.page_size)))
        return records

    def _apply(self, st: CollectionState, pages: vf.DataPages, meta: vf.Meta, touched: np.ndarray, lsn: int) -> None:
        """Make the mirror the state at `lsn` (what was just appended)."""
        if self._cache is not st:
            return
        s = st.layout.slots
        data = st.data if meta.npages == st.meta.npages else _resized(st.data, meta.npages * s, st.entry.dim)
        rows = slots_of(touched, s)
        data.live[rows], data.ids[rows], data.seqs[rows], data.rows[rows] = pages.live, pages.ids, pages.seqs, pages.rows
        self._cache = CollectionState(st.entry, st.layout, meta, _page_seqs_after(st, meta, touched), data, lsn)

    # -- the API ---------------------------------------------------------------------

    def upsert(self, ids: Any, vectors: Any) -> int:
        """Insert or replace rows by id, in one atomic Append; its end LSN."""
        ids = check_ids(ids)
        rows = check_rows(vectors, self.dim, self.metric)
        if len(rows) != len(ids):
            raise InvalidArgument(f"{len(ids)} ids but {len(rows)} vectors: expected one vector per id")

        def plan(st: CollectionState) -> tuple[vf.DataPages, vf.Meta, np.ndarray, int]:
            s = st.layout.slots
            slots = st.lookup(ids)
            new = slots < 0
            free = np.flatnonzero(~st.data.live[: st.meta.nslots])
            # Reuse slots of deleted rows first, then grow.
            reuse = free[: int(new.sum())]
            grow = int(new.sum()) - len(reuse)
            fresh = np.concatenate([reuse, np.arange(st.meta.nslots, st.meta.nslots + grow)]).astype(np.int64)
            slots = slots.copy()
            slots[new] = fresh
            nslots = st.meta.nslots + grow
            npages = max(st.meta.npages, -(-nslots // s))
            seq = st.meta.next_seq
            touched = np.unique(slots // s)
            pages = _pages_of(st, touched)
            at = np.searchsorted(touched, slots // s) * s + slots % s
            pages.live[at], pages.ids[at], pages.seqs[at], pages.rows[at] = True, ids, seq, rows
            meta = replace(st.meta, next_seq=seq + 1, nslots=nslots, npages=npages)
            return pages, meta, touched, len(ids)

        return self._write("vectors_upserted", plan)

    def delete(self, ids: Any) -> int:
        """Delete rows by id (ids not present are ignored), in one Append; its
        end LSN (the current end when nothing was there to delete)."""
        ids = check_ids(ids)

        def plan(st: CollectionState) -> tuple[vf.DataPages, vf.Meta, np.ndarray, int] | None:
            s = st.layout.slots
            slots = st.lookup(ids)
            slots = slots[slots >= 0]
            if len(slots) == 0:
                return None
            seq = st.meta.next_seq
            touched = np.unique(slots // s)
            pages = _pages_of(st, touched)
            at = np.searchsorted(touched, slots // s) * s + slots % s
            pages.live[at], pages.seqs[at] = False, seq
            return pages, replace(st.meta, next_seq=seq + 1), touched, len(slots)

        return self._write("vectors_deleted", plan)

    def get(self, ids: Any, lsn: int = 0) -> np.ndarray:
        """The rows of `ids` at `lsn` (0: latest), float32 [len(ids), dim]; NotFound naming absent ids."""
        ids = check_ids(ids)
        st = self.state(lsn)
        slots = st.lookup(ids)
        if (slots < 0).any():
            missing = ids[slots < 0][:5].tolist()
            raise NotFound(f"collection {self.name!r} has no ids {missing} at lsn={st.lsn}")
        return st.data.rows[slots].copy()

    def count(self, lsn: int = 0) -> int:
        return int(self.state(lsn).data.live.sum())

    def search(self, queries: Any, k: int = 10, lsn: int = 0, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows of each query at `lsn`: (ids uint64 [nq, k'], distances
        float32 [nq, k']) ascending, k' = min(k, live rows). Distances: squared L2,
        1 - cosine similarity, or minus the inner product. With an index, a query
        whose probed lists hold fewer than k' rows gets NO_ID (2**64 - 1, an id
        no row may have) / distance inf in the missing places; raise `nprobe`
        to fill them."""
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise InvalidArgument(f"k={k!r} is invalid: expected a positive integer")
        if nprobe is not None and (not isinstance(nprobe, (int, np.integer)) or nprobe <= 0):
            raise InvalidArgument(f"nprobe={nprobe!r} is invalid: expected a positive integer or None (the default)")
        q = prepare(check_rows(queries, self.dim, "l2", "queries"), self.metric)
        lsn = self.read_lsn(lsn)
        t0 = time.monotonic()
        index = self._index_for(lsn)
        if index is None:
            st = self.state(lsn)
            live = st.live_slots()
            ids, d = exact_topk(q, prepare(st.data.rows[live], self.metric), st.data.ids[live], int(k), self.metric)
            mode = "exact"
        else:
            ch = read_changes(self._source(lsn), self.entry, lsn, index.next_seq)
            fresh = ch.live
            ids, d = index.search(q, int(k), nprobe=nprobe, exclude_slots=ch.slots)
            if fresh.any():
                fi, fd = exact_topk(q, prepare(ch.rows[fresh], self.metric), ch.ids[fresh], int(k), self.metric)
                ids, d = merge_topk(np.hstack([ids, fi]), np.hstack([d, fd]), int(k))
            # Columns no query filled (fewer candidates than k in the probed lists) go.
            filled = np.isfinite(d).any(axis=0)
            ids, d = ids[:, filled], d[:, filled]
            mode = f"ivf@{index.snapshot_lsn}"
        log.debug("vectors_searched", name=self.name, queries=len(q), k=k, lsn=lsn, mode=mode, ms=round((time.monotonic() - t0) * 1000, 2))
        return ids, d.astype(np.float32)

    def _index_for(self, lsn: int) -> IvfIndex | None:
        if self.remote_storage is None:
            return None
        key = find_index_key(self.client, self.remote_storage, self.tenant_id, self.timeline_id, self.name, lsn)
        if key is None:
            return None
        if key not in self._indexes:
            self._indexes[key] = load_index(self.remote_storage, key)
        return self._indexes[key]


def _image(rel: int, blkno: int, page: bytes) -> records_pb2.Record:
    return records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=page))


def _page_seqs_after(st: CollectionState, meta: vf.Meta, touched: np.ndarray) -> np.ndarray:
    """The directory after a change that wrote the data pages `touched` with seq meta.next_seq - 1."""
    page_seqs = np.zeros(meta.npages, np.uint64)
    page_seqs[: len(st.page_seqs)] = st.page_seqs
    page_seqs[touched] = meta.next_seq - 1
    return page_seqs


def _pages_of(st: CollectionState, touched: np.ndarray) -> vf.DataPages:
    """Copies of the data pages `touched` (zero pages past the current end)."""
    s = st.layout.slots
    rows = slots_of(touched, s)
    out = _resized(None, len(rows), st.entry.dim)
    inside = rows < len(st.data.ids)
    src = rows[inside]
    out.live[inside], out.ids[inside], out.seqs[inside], out.rows[inside] = (
        st.data.live[src], st.data.ids[src], st.data.seqs[src], st.data.rows[src]
    )
    return out
