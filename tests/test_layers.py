"""The layering is one-way: a module imports only from its own layer or below.

crypto -> matching -> cluster -> protocol -> node -> net -> cli; ``errors``,
``_fs`` and the native binding are the floor everyone may use. ``face`` and
``synthetic`` stand apart: they use the floor only, and nothing below the
CLI imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pprm"
ORDER = ["crypto", "matching", "cluster", "protocol", "node", "net", "cli"]
FLOOR = {"errors", "_fs", "_native_kernel"}
APART = {"face", "synthetic"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pprm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pprm") and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if node.module == "pprm")
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_only(path):
    rel = path.relative_to(PKG)
    mine = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    for target in _imports(path):
        layer = _layer(target)
        if not (PKG / layer).exists() and not (PKG / f"{layer}.py").exists() and layer not in FLOOR:
            # A name re-exported by pprm/__init__.py (pprm.__version__, pprm.State): the top of the stack.
            assert mine == "cli", f"{rel} imports {target} from the package root"
            continue
        if layer in FLOOR or layer == mine or target == "pprm":
            continue
        if mine in APART or layer in APART:
            assert mine == "cli" or layer == mine, f"{rel} imports {target}: face and synthetic stand apart"
            continue
        if mine in FLOOR:
            raise AssertionError(f"{rel} is below every layer but imports {target}")
        assert layer in ORDER and mine in ORDER, f"{rel} imports {target}"
        assert ORDER.index(layer) < ORDER.index(mine), f"{rel} ({mine}) imports {target} ({layer}), a layer above"
