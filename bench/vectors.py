"""Vector index builds: Strata's k-means/IVF-Flat (NumPy or CuPy) vs faiss-cpu IVF-Flat.

    python -m bench.vectors            # 1M x 128 and 100k x 768, nlist 1024; writes BENCHMARKS.md
    python -m bench.vectors --quick    # smoke sizes; BENCHMARKS.md untouched
    python -m bench.vectors --device gpu --no-layers --sets 1000000x128   # on a GPU machine

Side by side in one run, on the same clustered synthetic float32 vectors
(gpu/synthetic.py) and the same queries:
- build: faiss `IndexIVFFlat.train` + `add` vs `gpu.kmeans` (sample-trained,
  tiled GEMM) + `gpu.assign` + grouping into lists, both with the same nlist,
  the same iterations and faiss's sample of 256 rows per list, both random init;
- recall@10 as ann-benchmarks defines it (share of the true 10 nearest found,
  truth by exact search) and queries per second, at nprobe 8, 16 and 32;
- ratios: faiss time / Strata time (above 1: Strata faster), QPS Strata / faiss.
The core runs on in-memory arrays; the build-from-layers path (upsert into a
real walservice + pageserver, then gpu.build_index reading layer files from
file:// remote storage) is measured separately at a smaller size.

faiss-cpu is not a dependency of Strata: `pip install 'strata[bench]'` (or
`pip install faiss-cpu`) before running; without it the faiss rows are missing
and the section says so.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import NEUTRAL_OPTIONS, add_write_argument, partial_run_reasons, publish_section
from gpu.build import group_by_list
from gpu.kmeans import DEFAULT_TOL, assign, kmeans
from gpu.synthetic import clustered, recall_at_k
from gpu.xp import Device
from strata.vectors.ivf_index import IvfIndex
from strata.vectors.kernels import exact_topk

NPROBES = (8, 16, 32)
SEARCH_REPEATS = 3
K = 10
# Per-dimension noise around unit-normal centres: wide enough that clusters touch
# and recall at nprobe 8..32 is below 1.
SPREAD = 1.0


@dataclass
class SearchRow:
    nprobe: int
    recall: float
    qps: float


@dataclass
class SystemResult:
    system: str
    build_s: float
    searches: list[SearchRow] = field(default_factory=list)
    max_list: int = 0
    mean_list: float = 0.0
    iterations: int = 0  # Lloyd steps the best build ran


@dataclass
class SetResult:
    n: int
    dim: int
    nlist: int
    queries: int
    strata: SystemResult
    faiss: SystemResult | None
    lloyd_step_s: float = 0.0  # one full-size Lloyd step (2·n_train·k·d FLOP), Strata's device
    train_rows: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class LayerResult:
    n: int
    dim: int
    nlist: int
    upsert_s: float
    build_s: float  # gpu.build_index: compact + upload wait + snapshot read + train + assign + upload
    read_s: float  # of which: compact + upload wait + reading the layer files into rows
    faiss_build_s: float | None


def _timed_search(search: object, q: np.ndarray, truth: np.ndarray, nprobe: int, repeats: int = SEARCH_REPEATS) -> SearchRow:
    """Best of `repeats` timed batches after one untimed warm-up call (both systems
    alike): on a shared machine the best run is the least disturbed one."""
    search(q[:10], nprobe)  # type: ignore[operator]
    best, ids = 0.0, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = search(q, nprobe)  # type: ignore[operator]
        best = max(best, len(q) / (time.perf_counter() - t0))
    return SearchRow(nprobe, recall_at_k(ids, truth, K), best)


def _strata_build(dev: Device, x: np.ndarray, nlist: int, niter: int, seed: int) -> tuple[IvfIndex, np.ndarray, float, int]:
    """Sample-trained k-means (tiled GEMM, stopping at gpu.kmeans' default
    tolerance), assign every row, group into lists."""
    t0 = time.perf_counter()
    centroids, stats = kmeans(dev, x, nlist, niter=niter, init="random", seed=seed)
    labels = dev.to_host(assign(dev, dev.asarray(x), dev.asarray(centroids))[0])
    order, offsets, sizes = group_by_list(labels, nlist)
    slots = order.astype(np.uint64)
    index = IvfIndex("0" * 32, "0" * 32, "bench", "l2", 0, 0, centroids, offsets, slots, slots, np.zeros(len(x), np.uint64), x[order])
    return index, sizes, time.perf_counter() - t0, stats.iterations


def _faiss_build(faiss: Any, x: np.ndarray, nlist: int, niter: int, seed: int) -> tuple[Any, np.ndarray, float]:
    """faiss-cpu IVF-Flat with the same nlist, iterations and training sample."""
    t0 = time.perf_counter()
    fi = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
    fi.cp.niter = niter
    fi.cp.seed = seed
    fi.cp.max_points_per_centroid = 256
    fi.train(x)
    fi.add(x)
    seconds = time.perf_counter() - t0
    return fi, np.array([fi.invlists.list_size(i) for i in range(nlist)]), seconds


def run_set(
    n: int, dim: int, nlist: int, nq: int, niter: int, device: str, seed: int = 0, use_faiss: bool = True, log: bool = True,
    spread: float = SPREAD, repeats: int = 1,
) -> SetResult:
    """Builds alternate (Strata, faiss, Strata, faiss, ...) `repeats` times and
    each system's best build counts, so both see the same machine load."""
    clusters = max(nlist // 8, 16)
    data = clustered(n + nq, dim, clusters, seed=seed, spread=spread)
    x, q = data[:n], data[n:]
    del data
    say = print if log else (lambda *a, **k: None)
    say(f"[vectors] {n}x{dim} nlist={nlist}: exact ground truth for {nq} queries")
    truth, _ = exact_topk(q, x, np.arange(n, dtype=np.uint64), K, "l2")
    dev = Device.get(device)
    faiss: Any = None
    notes = []
    if use_faiss:
        try:
            import faiss  # type: ignore[import-not-found,no-redef]
        except ImportError:
            notes.append("faiss-cpu is not installed (pip install 'strata[bench]'): no faiss rows")
    strata = SystemResult(f"Strata ({dev.name}, {'CuPy' if dev.is_gpu else 'NumPy'})", float("inf"))
    fr = SystemResult(f"faiss-cpu IndexIVFFlat ({faiss.omp_get_max_threads()} threads)", float("inf")) if faiss else None
    index: IvfIndex | None = None
    fi: Any = None
    for r in range(repeats):
        say(f"[vectors] strata build on {dev.name} ({r + 1}/{repeats})")
        index = None  # free the previous one first
        index, sizes, seconds, iterations = _strata_build(dev, x, nlist, niter, seed)
        if seconds < strata.build_s:
            strata.iterations = iterations
        strata.build_s, strata.max_list, strata.mean_list = min(strata.build_s, seconds), int(sizes.max()), float(sizes.mean())
        if fr is not None:
            say(f"[vectors] faiss-cpu build ({r + 1}/{repeats})")
            fi = None
            fi, fsizes, seconds = _faiss_build(faiss, x, nlist, niter, seed)
            fr.build_s, fr.max_list, fr.mean_list = min(fr.build_s, seconds), int(fsizes.max()), float(fsizes.mean())
            fr.iterations = niter
    assert index is not None

    def fsearch(qq: np.ndarray, p: int) -> np.ndarray:
        fi.nprobe = p
        return fi.search(qq, K)[1]

    for nprobe in NPROBES:  # alternating too
        strata.searches.append(_timed_search(lambda qq, p: index.search(qq, K, nprobe=p)[0], q, truth, nprobe))
        if fr is not None:
            fr.searches.append(_timed_search(fsearch, q, truth, nprobe))

    # One Lloyd step at full size, timed alone (for FLOP/s): distances + argmin + update.
    n_train = min(n, 256 * nlist)
    xs, c = dev.asarray(x[:n_train]), dev.asarray(index.centroids)
    dev.synchronize()
    t1 = time.perf_counter()
    lab = assign(dev, xs, c)[0]
    dev.segment_sum(xs, lab, nlist)
    dev.synchronize()
    lloyd = time.perf_counter() - t1
    return SetResult(n, dim, nlist, nq, strata, fr, lloyd, n_train, notes)


def run_layers(n: int, dim: int, nlist: int, work_dir: Path, use_faiss: bool = True, log: bool = True) -> LayerResult:
    """Upsert n rows into a real stack, then gpu.build_index from the layer files."""
    from compute_shim import Client, VectorCollection
    from gpu.build import build_index
    from tests.env import StrataEnv

    say = print if log else (lambda *a, **k: None)
    url = f"file://{work_dir / 'remote'}"
    env = StrataEnv(work_dir)
    try:
        wal = env.walservice("--remote-storage", url)
        ps = env.pageserver(wal, "--remote-storage", url)
        x = clustered(n, dim, max(2 * nlist, 16), seed=1, spread=0.5)
        with Client(pageserver=ps.address, walservice=wal.address) as client:
            tenant = client.create_tenant(page_size=8192).tenant_id
            tl = client.create_timeline(tenant_id=tenant).timeline_id
            col = VectorCollection(client, tenant, tl, "bench", dim=dim)
            say(f"[vectors] layers: upserting {n}x{dim}")
            t0 = time.perf_counter()
            per_call = max(1, (16 << 20) // (4 * dim))
            for lo in range(0, n, per_call):
                col.upsert(np.arange(lo, min(n, lo + per_call)), x[lo : lo + per_call])
            upsert_s = time.perf_counter() - t0
            say("[vectors] layers: gpu.build_index")
            t0 = time.perf_counter()
            built = build_index(client, tenant, tl, "bench", nlist=nlist, device="cpu", remote_storage=url, init="random")
            build_s = time.perf_counter() - t0
    finally:
        env.teardown()
    faiss_s = None
    if use_faiss:
        try:
            import faiss  # type: ignore[import-not-found]

            t0 = time.perf_counter()
            fi = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            fi.cp.niter = 20
            fi.train(x)
            fi.add(x)
            faiss_s = time.perf_counter() - t0
        except ImportError:
            pass
    return LayerResult(n, dim, nlist, upsert_s, build_s, built.read_seconds, faiss_s)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def render_markdown(sets: list[SetResult], layers: LayerResult | None, niter: int, gpu_peak_tflops: float | None) -> str:
    out = [
        f"Clustered synthetic float32 vectors (nlist/8 Gaussian centres, per-dimension noise std {SPREAD}), at most {niter} Lloyd iterations "
        f"(faiss runs all of them; Strata stops once a step moves under {DEFAULT_TOL:.0%} of the training rows to another list: "
        "the `iterations` column), 256 training rows per list, random init for both; builds alternate between the systems and each one's best of the runs counts; recall@10 as ann-benchmarks defines it (share of the true 10 nearest found); QPS: the best of "
        f"{SEARCH_REPEATS} batches of all the queries. Ratios: build = faiss time / Strata time (above 1: Strata builds faster); QPS = Strata / faiss.",
        "",
        "| vectors | nlist | system | iterations | build s | build ratio | max/mean list | nprobe | recall@10 | QPS | QPS ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sets:
        systems = [s.strata] + ([s.faiss] if s.faiss else [])
        for sysr in systems:
            for i, row in enumerate(sysr.searches):
                peer = s.faiss.searches[i] if s.faiss else None
                is_strata = sysr is s.strata
                build_ratio = _ratio(s.faiss.build_s, s.strata.build_s) if (is_strata and s.faiss and i == 0) else ""
                qps_ratio = _ratio(row.qps, peer.qps) if (is_strata and peer) else ""
                build = f"{sysr.build_s:.2f}" if i == 0 else ""
                iterations = str(sysr.iterations) if i == 0 else ""
                out.append(
                    f"| {s.n:,} x {s.dim} | {s.nlist} | {sysr.system} | {iterations} | {build} | {build_ratio} | "
                    f"{sysr.max_list}/{sysr.mean_list:.0f} | {row.nprobe} | {row.recall:.3f} | {row.qps:,.0f} | {qps_ratio} |"
                )
    out.append("")
    for s in sets:
        if s.faiss is not None:
            out.append(f"- Target, {s.n:,} x {s.dim}: " + build_verdict(
                s.strata.build_s, s.faiss.build_s, s.strata.searches[0].recall, s.faiss.searches[0].recall, s.strata.searches[0].nprobe
            ))
    for s in sets:
        flop = 2 * s.train_rows * s.nlist * s.dim
        line = (f"- {s.n:,} x {s.dim}: one Lloyd step on {s.train_rows:,} training rows x {s.nlist} lists "
                f"({flop / 1e9:.1f} GFLOP) took {s.lloyd_step_s * 1000:.1f} ms on {s.strata.system}: {flop / s.lloyd_step_s / 1e12:.2f} TFLOP/s")
        if gpu_peak_tflops and "gpu" in s.strata.system:
            line += f", {flop / s.lloyd_step_s / 1e12 / gpu_peak_tflops:.1%} of the {gpu_peak_tflops:.0f} TFLOP/s peak"
        out.append(line + ".")
        out.extend(f"- {note}" for note in s.notes)
    if layers is not None:
        faiss_txt = f"; faiss-cpu builds the same array in memory in {layers.faiss_build_s:.2f} s" if layers.faiss_build_s else ""
        out.append(
            f"- From layers: {layers.n:,} x {layers.dim} upserted in {layers.upsert_s:.2f} s ({layers.n / layers.upsert_s:,.0f} rows/s); "
            f"`gpu.build_index` (Compact, wait for upload, read the layer files, reconstruct pages, train nlist={layers.nlist}, assign, "
            f"upload the index) took {layers.build_s:.2f} s, of which {layers.read_s:.2f} s made remote storage current and "
            f"read the collection from the layer files ({layers.n / layers.read_s:,.0f} rows/s){faiss_txt}."
        )
    return "\n".join(out)


def build_verdict(strata_s: float, faiss_s: float, strata_recall: float, faiss_recall: float, nprobe: int) -> str:
    """The target: the NumPy build no slower than faiss-cpu, recall@10 within 0.01 of its."""
    met = strata_s <= faiss_s and abs(strata_recall - faiss_recall) <= 0.01
    return (
        f"the NumPy build no slower than faiss-cpu at equal recall@10: {'met' if met else 'not met'} ({strata_s:.1f} s vs "
        f"{faiss_s:.1f} s; recall@10 at nprobe {nprobe} {strata_recall:.3f} vs {faiss_recall:.3f})."
    )


def parse_sets(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        n, _, d = part.strip().partition("x")
        out.append((int(n), int(d)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vectors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=parse_sets, default=None, help="NxD sets, comma-separated (default 1000000x128,100000x768)")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="alternating builds per system; the best counts (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="cpu")
    parser.add_argument("--layers", type=parse_sets, default=None, help="NxD for the build-from-layers run (default 100000x128)")
    parser.add_argument("--no-layers", action="store_true", help="skip the build-from-layers run")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--gpu-peak-tflops", type=float, default=None, help="dense float32/TF32 peak of the GPU, for the FLOP/s fraction")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (20k x 32, nlist 64); BENCHMARKS.md untouched")
    add_write_argument(parser)
    parser.add_argument("--section", default="vectors", help="BENCHMARKS.md section name (default vectors)")
    parser.add_argument("--note", action="append", default=[], help="a line to add under the table (repeatable)")
    args = parser.parse_args(argv)
    if args.quick:
        sets, nlist, nq, layers = args.sets or [(20000, 32)], min(args.nlist, 64), min(args.queries, 100), (args.layers or [(2000, 32)])[0]
    else:
        sets, nlist, nq, layers = args.sets or [(1_000_000, 128), (100_000, 768)], args.nlist, args.queries, (args.layers or [(100_000, 128)])[0]
    repeats = 1 if args.quick else args.repeats
    results = [run_set(n, d, nlist, nq, args.niter, args.device, use_faiss=not args.no_faiss, repeats=repeats) for n, d in sets]
    layer_result = None
    if not args.no_layers:
        with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
            layer_result = run_layers(layers[0], layers[1], min(nlist, max(1, layers[0] // 100)), Path(tmp), use_faiss=not args.no_faiss)
    markdown = render_markdown(results, layer_result, args.niter, args.gpu_peak_tflops)
    markdown += "".join(f"\n- {note}" for note in args.note)
    print(markdown)
    # A GPU run goes into a section of its own (--section vectors-gpu): its device,
    # section, notes and peak are not partial options; anything else is.
    reasons = partial_run_reasons(parser, args, NEUTRAL_OPTIONS | {"device", "section", "note", "gpu_peak_tflops"})
    if args.device != "cpu" and args.section == "vectors":
        reasons.append(f"--device {args.device} into the CPU section (name another with --section)")
    publish_section(
        args.section, markdown, reasons=reasons, write=args.write, command="python -m bench.vectors",
        title=f"{args.section}: IVF-Flat builds, Strata gpu/ vs faiss-cpu",
    )


if __name__ == "__main__":
    main()
