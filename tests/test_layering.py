"""The package layering (docs/layering.md), checked over the source tree with `ast`.

Every `import` and `from ... import` statement counts as an arrow, wherever it
stands (a function-level import is still a dependency), except those under an
`if TYPE_CHECKING:` block. Arrows go from the importing module to the module
imported; `from pkg import name` points at `pkg.name` when that is a module and at
`pkg` (its `__init__`) otherwise. A submodule does not point at its package just
by being in it: a cycle through a package's `__init__` needs a real import back
into the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("strata", "walservice", "pageserver", "compute_shim", "gpu", "deploy", "proxy")
MAX_LINES = 800
# Generated gRPC stubs and the benchmarks are exempt from the length guideline.
LENGTH_EXEMPT = ("strata/v1/", "bench/")
# The one pageserver module `gpu/` may read layer snapshots through.
SNAPSHOT_READER = "pageserver.snapshot_reader"


def _source_files(packages: tuple[str, ...]) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name.split(".")[0] in PACKAGES and name != module}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in _source_files(PACKAGES)}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = set()
        for name in _imports(path, module, modules):
            # `import a.b.c` of a module we know, or the longest known prefix of it.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _package(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_checker_sees_real_arrows(graph: dict[str, set[str]]) -> None:
    # Guards the checker itself: if it parsed nothing, every rule below would pass.
    assert "walservice.server" in graph
    assert "strata.errors" in graph["walservice.server"] or any(
        t.startswith("strata.") for t in graph["walservice.server"]
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = _cycles(graph)
    assert not cycles, "import cycles (outside TYPE_CHECKING):\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", ["walservice", "compute_shim"])
def test_no_arrow_into_the_pageserver(graph: dict[str, set[str]], package: str) -> None:
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if _package(m) == package for t in ts if _package(t) == "pageserver")
    assert not bad, "\n".join(bad)


def test_gpu_reads_the_pageserver_only_through_the_snapshot_reader(graph: dict[str, set[str]]) -> None:
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if _package(m) == "gpu"
        for t in ts
        if _package(t) == "pageserver" and t != SNAPSHOT_READER
    )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["strata", "walservice", "pageserver", "compute_shim", "gpu"])
def test_libraries_do_not_import_the_deploy_tooling(graph: dict[str, set[str]], package: str) -> None:
    # strata.cli is the console script: it dispatches to every component, deploy included.
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if _package(m) == package and m != "strata.cli"
        for t in ts
        if _package(t) == "deploy"
    )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["strata", "walservice", "pageserver", "compute_shim", "gpu", "deploy"])
def test_nothing_imports_the_proxy(graph: dict[str, set[str]], package: str) -> None:
    # The proxy sits on top of compute_shim; only the console script dispatches to it.
    bad = sorted(
        f"{m} -> {t}" for m, ts in graph.items() if _package(m) == package and m != "strata.cli" for t in ts if _package(t) == "proxy"
    )
    assert not bad, "\n".join(bad)


def test_shared_base_imports_no_component(graph: dict[str, set[str]]) -> None:
    # strata/ is below every component; only the console script sits on top.
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if _package(m) == "strata" and m != "strata.cli" and m != "strata.__main__"
        for t in ts
        if _package(t) != "strata"
    )
    assert not bad, "\n".join(bad)


def test_no_source_file_over_the_length_guideline() -> None:
    long_files = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv/", "build/")) or rel.startswith(LENGTH_EXEMPT) or "/." in f"/{rel}":
            continue
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long_files.append(f"{rel}: {lines} lines")
    assert not long_files, f"files over {MAX_LINES} lines:\n" + "\n".join(long_files)
