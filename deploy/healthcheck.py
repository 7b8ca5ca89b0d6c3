"""`python -m deploy.healthcheck HOST:PORT`: exit 0 when that Strata process answers
the standard gRPC health check with SERVING, else print what it answered and exit 1.

For container health checks (deploy/docker-compose.yml), where no grpc_health_probe
binary is at hand; Kubernetes uses its native gRPC probes instead.
"""

from __future__ import annotations

import argparse
import sys

from deploy.local_stack import _health


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="HOST:PORT of a walservice or pageserver")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    state = _health(args.address, timeout=args.timeout)
    if state != "SERVING":
        print(f"{args.address}: {state}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
