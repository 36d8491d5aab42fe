"""The layering is one-way, and no module of pprm imports itself back through others.

crypto -> matching -> cluster -> protocol -> node -> net -> bench -> cli: a
module imports only from its own layer or below. ``errors``, ``_fs``, the
native binding and ``profile`` are the floor everyone may use. ``face`` and
``synthetic`` stand apart: they use the floor only; the CLI may import both,
and the benchmarks (``bench``) the synthetic galleries. The package root
(``pprm/__init__.py``) re-exports names from the layers it imports, so only
the layers above all of those may import it.

Every import counts, at module level or inside a function, absolute or
relative: an import that runs only in a function still runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pprm"
ORDER = ["crypto", "matching", "cluster", "protocol", "node", "net", "bench", "cli"]
FLOOR = {"errors", "_fs", "_native_kernel", "profile"}
# What stands apart -> the layers allowed to import it (besides itself).
APART = {"face": {"cli"}, "synthetic": {"cli", "bench"}}


def _module_name(path: Path) -> str:
    parts = ("pprm", *path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = _all_modules()


def resolve_imports(module: str, source: str, known: Iterable[str], *, is_package: bool = False) -> set[str]:
    """The pprm modules ``module`` imports, anywhere in ``source``.

    ``from pprm.x import name`` counts as an import of ``pprm.x.name`` when
    that is a module, else of ``pprm.x``; relative imports are resolved
    against ``module`` (a package when ``is_package``).
    """
    known = set(known)
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == "pprm" or a.name.startswith("pprm."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != "pprm" and not base.startswith("pprm."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: resolve_imports(name, path.read_text(), MODULES, is_package=path.name == "__init__.py")
            for name, path in MODULES.items()}


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every import cycle: one path per strongly connected component of two or more modules.

    Each path starts at the component's smallest name and ends where it
    started, e.g. ``[a, b, a]``.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm, iteratively, so that deep graphs cannot overflow
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, c) for c in sorted(components, key=min)]


def _cycle_path(graph: Mapping[str, Iterable[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's smallest module back to itself, inside the component."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(set(graph.get(v, ())) & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _root_users() -> set[str]:
    """The layers above every layer the package root imports."""
    root = resolve_imports("pprm", MODULES["pprm"].read_text(), MODULES, is_package=True)
    top = max((ORDER.index(_layer(t)) for t in root if _layer(t) in ORDER), default=-1)
    return set(ORDER[top + 1:])


def _layered_modules() -> list[str]:
    return sorted(name for name in MODULES if name != "pprm")


@pytest.mark.parametrize("module", _layered_modules())
def test_imports_go_down_only(module: str) -> None:
    mine = _layer(module)
    rel = MODULES[module].relative_to(PKG)
    for target in sorted(resolve_imports(module, MODULES[module].read_text(), MODULES,
                                         is_package=MODULES[module].name == "__init__.py")):
        layer = _layer(target)
        if target == "pprm":
            # pprm/__init__.py re-exports names (pprm.__version__, pprm.State): importing it imports its layers.
            assert mine in _root_users(), f"{rel} imports {target} from the package root"
            continue
        if layer in FLOOR or layer == mine:
            continue
        if mine in APART or layer in APART:
            allowed = APART.get(layer, set())
            assert mine in allowed, f"{rel} imports {target}: {layer} stands apart, only {sorted(allowed)} use it"
            continue
        if mine in FLOOR:
            raise AssertionError(f"{rel} is below every layer but imports {target}")
        assert layer in ORDER and mine in ORDER, f"{rel} imports {target}"
        assert ORDER.index(layer) < ORDER.index(mine), f"{rel} ({mine}) imports {target} ({layer}), a layer above"


def test_every_layer_and_floor_module_exists() -> None:
    present = {_layer(name) for name in MODULES}
    assert set(ORDER) | (FLOOR - {"_native_kernel"}) | set(APART) <= present


def test_no_import_cycles() -> None:
    cycles = find_cycles(_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# -- the checks themselves ------------------------------------------------------------------------

def test_resolution_covers_function_level_relative_and_submodule_imports() -> None:
    known = {"pprm", "pprm.a", "pprm.a.b", "pprm.a.c", "pprm.d", "pprm.d.e"}
    source = (
        "from pprm.a import b, NAME\n"
        "import pprm.d.e as e\n"
        "import numpy\n"
        "def f():\n"
        "    from . import c\n"
        "    from ..d import e\n"
        "    from .b import thing\n"
    )
    assert resolve_imports("pprm.a.x", source, known) == {"pprm.a.b", "pprm.a", "pprm.d.e", "pprm.a.c"}
    assert resolve_imports("pprm.a", "from . import b\nfrom .c import z\n", known, is_package=True) == {
        "pprm.a.b", "pprm.a.c"}


def test_find_cycles_reports_each_cycle_as_a_path() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"k": {"n"}, "n": {"k"}, "x": {"k"}}) == [["k", "n", "k"]]
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
