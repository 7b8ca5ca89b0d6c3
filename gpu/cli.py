"""`strata vectors build TENANT TIMELINE NAME [--lsn] [--nlist] [--device]`.

Reads the collection from the layer files in remote storage, builds its
IVF-Flat index and uploads it (gpu/build.py); prints one line with the key.
The endpoints default to the local stack's default ports (6400, 7676); pass
`--pageserver`/`--walservice` for a stack on other ports (`strata status` says
where each listens).
"""

from __future__ import annotations

import argparse
import sys

import grpc

from strata import logs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strata vectors", description="vector collections: index builds")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build a collection's IVF index from a layer snapshot")
    b.add_argument("tenant")
    b.add_argument("timeline")
    b.add_argument("name")
    b.add_argument("--lsn", type=lambda s: int(s, 0), default=0, help="snapshot LSN (default: the timeline's last record)")
    b.add_argument("--nlist", type=int, default=None, help="inverted lists (default: about sqrt(rows))")
    b.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    b.add_argument("--niter", type=int, default=20, help="k-means iterations")
    b.add_argument("--pageserver", default="127.0.0.1:6400")
    b.add_argument("--walservice", default="127.0.0.1:7676")
    b.add_argument("--remote-storage", default=None, help="remote storage URL (default: the pageserver's --remote-storage)")
    args = parser.parse_args(argv)
    logs.configure()
    from compute_shim import Client
    from gpu.build import build_index
    from strata.errors import StrataError

    with Client(pageserver=args.pageserver, walservice=args.walservice) as client:
        try:
            r = build_index(
                client, args.tenant, args.timeline, args.name, lsn=args.lsn, nlist=args.nlist, device=args.device,
                remote_storage=args.remote_storage, niter=args.niter,
            )
        except StrataError as exc:
            print(f"strata vectors build: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except grpc.RpcError as exc:
            print(f"strata vectors build: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"built {r.key}: rows={r.rows} nlist={r.nlist} lsn={r.lsn} device={r.device} max_list={r.max_list} seconds={r.seconds:.2f}")
    return 0
