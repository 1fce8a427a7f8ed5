"""The layers point one way (docs/architecture.md): a module imports only from its own layer or lower ones,
and no two modules import each other, directly or through others.

Imports under ``if TYPE_CHECKING:`` are annotations only and do not count; imports inside functions do (they
run).  ``errors`` and ``util`` are the leaf; ``honed/__init__.py`` (``honed.run``, the one entry point) sits above
the search, and the CLI and the one-line commands' workflow builders (``workflows``) call it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "honed"
LAYERS: list[tuple[str, ...]] = [
    ("errors", "util"),
    ("data", "models"),
    ("training",),
    ("passes",),
    ("systems", "evaluate", "report"),
    ("config",),
    ("engine",),
    ("search",),
    ("honed",),
    ("cli", "workflows"),
]
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    """The layer part of a module: ``honed.data.sources`` -> data, ``honed.errors`` -> errors, ``honed`` ->
    honed."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "honed"


def runtime_imports(path: Path) -> set[str]:
    """The honed modules ``path`` imports when it runs (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("honed"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("honed")}
    return {m for m in out if m in MODULES}


GRAPH = {m: runtime_imports(p) - {m} for m, p in MODULES.items()}


def test_every_package_has_a_layer() -> None:
    assert {part_of(m) for m in MODULES} <= set(LEVEL), sorted({part_of(m) for m in MODULES} - set(LEVEL))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_points_up(module: str) -> None:
    mine = LEVEL[part_of(module)]
    up = sorted(t for t in GRAPH[module] if LEVEL[part_of(t)] > mine)
    assert not up, f"{module} (layer {mine}) imports higher layers: {up}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_the_checks_see_a_violation() -> None:
    """The two checks flag what they exist for (a cycle, an upward edge) on a made-up graph."""
    fake = {"honed.data.a": {"honed.engine.b"}, "honed.engine.b": {"honed.data.a"}}
    assert cycles(fake) == [["honed.data.a", "honed.engine.b"]]
    assert LEVEL[part_of("honed.engine.b")] > LEVEL[part_of("honed.data.a")]
