"""Index builds: collections read from layer snapshots, k-means on the device.

    gpu.build_index(client, tenant, timeline, "memories", lsn=0, nlist=None, device="auto")
    gpu.build_indexes(client, [IndexSpec(tenant, branch, "memories"), ...], ...)

Remote storage: the pageserver's (TenantInfo.remote_storage, the URL of its
--remote-storage; for s3:// the credentials come the standard boto3 way), or
`remote_storage=` (a URL or a RemoteStorage) to override it.

For each spec: resolve the snapshot LSN S (0: the timeline's last record),
make remote storage hold the timeline through S (gpu/snapshot.py), read the
collection at S from the layer files, then train IVF centroids and assign
every live row, and upload the index object (strata/vectors/ivf_index.py) to
`tenants/<t>/timelines/<tl>/vector_indexes/<name>/<S:016X>.ivf`.

Batching: the specs that need training and share (dim, nlist) are trained
together by one `train_batched` call (one batched GEMM per step for all of
them). Warm start: when the timeline or an ancestor (at or below the branch
point) already has an index of the collection at S' < S and at most
`retrain_fraction` of today's rows changed since S', the new index keeps the
old centroids and the old list of every unchanged row (same slot, same seq:
the same bytes) and assigns only the changed rows. "Changed" counts rows
written since S' and rows of the old index gone since (deleted or
overwritten); with no nlist asked for, the build keeps the old index's
nlist. Keeping the centroids fixed makes that exact: it is the index a full
assignment would give.

Init: `init="auto"` is greedy k-means++ up to AUTO_KMEANSPP_MAX_K lists (it
avoids lists holding several clusters when nlist is near the cluster count)
and faiss's random init above (k sequential steps cost more than they save).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compute_shim.client import Client
from compute_shim.vectors import CollectionState, find_collection, load_state, tenant_page_size, tenant_remote_storage
from gpu.kmeans import DEFAULT_TOL, Progress, assign, sample_rows, train_batched
from gpu.snapshot import ensure_uploaded, open_snapshot
from gpu.xp import Device, stable_label_order
from strata.remote_storage.interface import RemoteStorage
from strata.remote_storage.url import open_remote_storage
from strata.errors import FailedPrecondition, InvalidArgument
from strata.logs import event_logger
from strata.vectors.ivf_index import IvfIndex, find_index_key, index_key, load_index
from strata.vectors.kernels import prepare

log = event_logger("gpu")

AUTO_KMEANSPP_MAX_K = 256


def default_nlist(n: int) -> int:
    """About √n lists, with at least 39 rows per list (faiss's floor)."""
    return int(max(1, min(round(np.sqrt(n)), n // 39)))


def group_by_list(labels: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, offsets, sizes): rows in list order, where each list starts
    (u64 [nlist + 1]) and how many rows each list holds."""
    order = stable_label_order(labels, nlist)
    sizes = np.bincount(labels, minlength=nlist)
    return order, np.concatenate([[0], np.cumsum(sizes)]).astype(np.uint64), sizes


@dataclass(frozen=True)
class IndexSpec:
    tenant_id: str
    timeline_id: str
    name: str
    lsn: int = 0
    nlist: int | None = None


@dataclass(frozen=True)
class BuildResult:
    key: str
    lsn: int
    rows: int
    nlist: int
    device: str
    warm_started_from: str | None  # the index whose centroids were reused
    assigned: int  # rows assigned to lists in this build (all, or only the changed)
    max_list: int
    mean_list: float
    seconds: float  # the whole build_indexes call so far
    read_seconds: float  # making remote storage current + reading the snapshot from layer files


@dataclass
class _Job:
    spec: IndexSpec
    lsn: int
    state: CollectionState
    slots: np.ndarray
    rows: np.ndarray  # prepared (unit length for cosine)
    nlist: int
    base: IvfIndex | None = None
    base_key: str | None = None
    keep: np.ndarray | None = None  # rows whose list comes from `base`
    keep_labels: np.ndarray | None = None
    centroids: np.ndarray | None = None
    read_seconds: float = 0.0


def build_index(
    client: Client,
    tenant_id: str,
    timeline_id: str,
    name: str,
    lsn: int = 0,
    nlist: int | None = None,
    device: str = "auto",
    **kwargs: Any,
) -> BuildResult:
    """Build one collection's index; see build_indexes for the keyword arguments."""
    return build_indexes(client, [IndexSpec(tenant_id, timeline_id, name, lsn, nlist)], device=device, **kwargs)[0]


def build_indexes(
    client: Client,
    specs: list[IndexSpec],
    *,
    remote_storage: str | RemoteStorage | None = None,
    device: str = "auto",
    niter: int = 20,
    tol: float = DEFAULT_TOL,
    init: str = "auto",
    seed: int = 0,
    warm_start: bool = True,
    retrain_fraction: float = 0.2,
    max_points_per_centroid: int = 256,
    progress: Progress | None = None,
    upload_timeout: float = 120.0,
) -> list[BuildResult]:
    """Build the index of every spec in one batched pass on `device`."""
    if not specs:
        raise InvalidArgument("specs is empty: name at least one collection to index")
    if remote_storage is None:
        remote_storage = _pageserver_remote_storage(client, specs[0].tenant_id)
    storage = open_remote_storage(remote_storage) if isinstance(remote_storage, str) else remote_storage
    dev = Device.get(device)
    t0 = time.monotonic()
    jobs = [_read(client, storage, spec, upload_timeout, progress) for spec in specs]
    if warm_start:
        for job in jobs:
            _warm_start(client, storage, job, retrain_fraction)
    rng = np.random.default_rng(seed)
    if init == "auto":  # k-means++ costs k sequential steps: worth it for few lists only
        init = "kmeans++" if max(j.nlist for j in jobs) <= AUTO_KMEANSPP_MAX_K else "random"
    groups: dict[tuple[int, int], list[_Job]] = {}
    for job in jobs:
        if job.centroids is None:
            groups.setdefault((job.rows.shape[1], job.nlist), []).append(job)
    for (dim, nlist), group in groups.items():
        samples = [j.rows[sample_rows(len(j.rows), nlist, max_points_per_centroid, rng)] for j in group]
        centroids, stats = train_batched(dev, samples, nlist, niter=niter, init=init, seed=seed, progress=progress, label=group[0].spec.name, tol=tol)
        for j, c in zip(group, centroids):
            j.centroids = c
        log.info("kmeans_trained", collections=len(group), dim=dim, nlist=nlist, iterations=stats.iterations, seconds=round(stats.seconds, 3), device=dev.name)
    return [_finish(storage, dev, job, t0, progress) for job in jobs]


def _pageserver_remote_storage(client: Client, tenant_id: str) -> str:
    """The pageserver's remote storage URL (one per pageserver, so any tenant's says it)."""
    url = tenant_remote_storage(client, tenant_id)
    if not url:
        raise FailedPrecondition(
            "the pageserver runs without --remote-storage: index builds read layer files from remote storage "
            "(start it with --remote-storage URL, or pass remote_storage=)"
        )
    return url


def _read(client: Client, storage: RemoteStorage, spec: IndexSpec, timeout: float, progress: Progress | None) -> _Job:
    t0 = time.monotonic()
    lsn = spec.lsn or _latest_lsn(client, spec.tenant_id, spec.timeline_id)
    ensure_uploaded(client, spec.tenant_id, spec.timeline_id, lsn, timeout)
    page_size = tenant_page_size(client, spec.tenant_id)
    with tempfile.TemporaryDirectory(prefix="strata-vectors-") as tmp:
        snap = open_snapshot(storage, spec.tenant_id, spec.timeline_id, lsn, page_size, Path(tmp))
        try:
            entry = find_collection(snap, spec.name, lsn)
            state = load_state(snap, entry, lsn)
        finally:
            snap.close()
    slots = state.live_slots()
    if len(slots) == 0:
        raise InvalidArgument(f"collection {spec.name!r} has no rows at lsn={lsn}: nothing to index")
    rows = prepare(state.data.rows[slots], entry.metric)
    nlist = spec.nlist or default_nlist(len(slots))
    if not 1 <= nlist <= len(slots):
        raise InvalidArgument(f"nlist={nlist} is invalid for {len(slots)} rows: expected 1 <= nlist <= rows")
    fields = {"tenant": spec.tenant_id, "timeline": spec.timeline_id, "name": spec.name, "lsn": lsn, "rows": len(slots), "nlist": nlist}
    log.info("index_snapshot_read", **fields)
    if progress is not None:
        progress("index_snapshot_read", fields)
    return _Job(spec, lsn, state, slots, rows, nlist, read_seconds=time.monotonic() - t0)


def _latest_lsn(client: Client, tenant_id: str, timeline_id: str) -> int:
    """The timeline's end: the walservice's commit LSN when the client has one
    (the pageserver may not have ingested it yet), else its last record."""
    last = client.get_timeline(tenant_id=tenant_id, timeline_id=timeline_id).last_record_lsn
    try:
        return max(last, client.status(tenant_id=tenant_id, timeline_id=timeline_id).commit_lsn)
    except ValueError:  # no walservice address
        return last


def _warm_start(client: Client, storage: RemoteStorage, job: _Job, retrain_fraction: float) -> None:
    """Reuse an earlier index's centroids when few rows changed since it."""
    key = find_index_key(client, storage, job.spec.tenant_id, job.spec.timeline_id, job.spec.name, job.lsn - 1)
    if key is None:
        return
    base = load_index(storage, key)
    if base.metric != job.state.entry.metric or base.dim != job.rows.shape[1]:
        return
    # The default nlist (about √rows) drifts as rows come and go: keep the base's lists.
    nlist = base.nlist if job.spec.nlist is None and base.nlist <= len(job.slots) else job.nlist
    if base.nlist != nlist:
        return
    seqs = job.state.data.seqs[job.slots]
    keep = seqs < np.uint64(base.next_seq)  # unchanged since the base snapshot: same slot, same bytes
    # Changed: rows written since the base (new or updated) and base rows gone
    # since (deleted or overwritten); both move centroids away from the base's.
    changed = int((~keep).sum()) + (len(base.ids) - int(keep.sum()))
    if changed > retrain_fraction * max(len(keep), len(base.ids)):
        return
    order = np.argsort(base.slots, kind="stable")
    pos = np.searchsorted(base.slots[order], job.slots[keep])
    labels = base.labels()[order[pos]]
    job.base, job.base_key, job.keep, job.keep_labels, job.centroids = base, key, keep, labels, base.centroids
    job.nlist = nlist


def _finish(storage: RemoteStorage, dev: Device, job: _Job, t0: float, progress: Progress | None) -> BuildResult:
    assert job.centroids is not None
    labels = np.empty(len(job.slots), np.int64)
    todo = np.ones(len(job.slots), bool) if job.keep is None else ~job.keep
    if job.keep is not None:
        labels[job.keep] = job.keep_labels
    if todo.any():
        got, _ = assign(dev, dev.asarray(job.rows[todo]), dev.asarray(job.centroids))
        labels[todo] = dev.to_host(got)
    order, offsets, sizes = group_by_list(labels, job.nlist)
    st = job.state
    index = IvfIndex(
        job.spec.tenant_id, job.spec.timeline_id, job.spec.name, st.entry.metric, job.lsn, st.meta.next_seq,
        job.centroids.astype(np.float32), offsets, job.slots[order].astype(np.uint64), st.data.ids[job.slots][order],
        st.data.seqs[job.slots][order], job.rows[order],
    )
    key = index_key(job.spec.tenant_id, job.spec.timeline_id, job.spec.name, job.lsn)
    # A rebuild at the same LSN (k-means draws differ) replaces the index: overwrite.
    storage.upload_bytes(index.encode(), key, overwrite=True)
    result = BuildResult(
        key, job.lsn, len(job.slots), job.nlist, dev.name, job.base_key, int(todo.sum()), int(sizes.max()),
        float(sizes.mean()), time.monotonic() - t0, job.read_seconds,
    )
    fields = {"tenant": job.spec.tenant_id, "timeline": job.spec.timeline_id, "name": job.spec.name, "lsn": job.lsn,
              "rows": result.rows, "nlist": result.nlist, "assigned": result.assigned, "warm_start": result.warm_started_from,
              "max_list": result.max_list, "mean_list": round(result.mean_list, 1), "key": key, "device": dev.name}
    log.info("index_built", **fields)
    if progress is not None:
        progress("index_built", fields)
    return result
