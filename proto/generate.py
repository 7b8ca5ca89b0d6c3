"""Generate the checked-in Python stubs of the strata.v1 contract.

The stubs live in the package `strata.v1` (strata/v1/*_pb2*.py and .pyi) and are
checked in, so a fresh clone imports them without a compiler. They are generated
code: never edit them by hand; change the .proto files and run

    python proto/generate.py           # rewrite strata/v1 from proto/strata/v1/*.proto
    python proto/generate.py --check   # exit 1 if the checked-in stubs are stale

tests/test_proto_stubs.py runs the check, so a .proto change without regenerated
stubs fails the suite. Needs grpcio-tools (the `dev` extra).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PACKAGE_DIR = REPO_ROOT / "strata" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "strata" / "v1").glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Compile every .proto into out_root/strata/v1 and return the files written."""
    from grpc_tools import protoc  # dev-only dependency
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted((out_root / "strata" / "v1").glob("*_pb2*"))


def stale_stubs() -> list[str]:
    """Names of stubs that differ from (or are missing next to) fresh protoc output."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        checked_in = {p.name for p in PACKAGE_DIR.glob("*_pb2*") if p.name.endswith(GENERATED_SUFFIXES)}
        problems = sorted(checked_in - fresh.keys())
        for name, path in fresh.items():
            target = PACKAGE_DIR / name
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                problems.append(name)
        return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args()
    if args.check:
        problems = stale_stubs()
        for name in problems:
            print(f"stale stub: strata/v1/{name}", file=sys.stderr)
        return 1 if problems else 0
    with tempfile.TemporaryDirectory() as tmp:
        PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
        for old in PACKAGE_DIR.glob("*_pb2*"):
            old.unlink()
        for path in generate(Path(tmp)):
            (PACKAGE_DIR / path.name).write_bytes(path.read_bytes())
            print(f"wrote strata/v1/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
