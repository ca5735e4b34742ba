"""The layout of ``eartalk.core`` and its import rules, read from the modules' own imports (AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"

FOUNDATION = {"__init__", "cli", "commands", "config", "errors", "hookspecs", "protocol", "registry", "types"}
ROOMS = {"engine", "media", "data"}

#: room -> module prefixes it must never import (at module level or inside functions).
FORBIDDEN = {
    "engine": ("eartalk.core.data", "eartalk.core.media", "eartalk.recipes", "eartalk.core.cli"),
    "media": ("eartalk.core.engine",),
    "data": ("eartalk.core.engine", "eartalk.recipes"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name a file imports, with its line (``from a import b`` gives ``a.b`` too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(room_dir: Path, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted(room_dir.rglob("*.py")):
        for line, name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path}:{line} imports {name}")
    return bad


def test_core_top_level_holds_only_the_foundation_and_three_rooms():
    modules = {p.stem for p in CORE.glob("*.py")}
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules == FOUNDATION, f"unexpected top-level modules: {sorted(modules - FOUNDATION)}"
    assert folders == ROOMS


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_import_rules(room):
    assert violations(CORE / room, FORBIDDEN[room]) == []


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_says_what_it_is_for_and_what_it_may_import(room):
    doc = ast.get_docstring(ast.parse((CORE / room / "__init__.py").read_text()))
    assert doc and "import" in doc.lower()


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rule is live: a function-level import of the data tools inside the engine is reported."""
    room = tmp_path / "engine"
    room.mkdir()
    (room / "x.py").write_text("def f():\n    from eartalk.core.data.dataset import read_manifest\n")
    (room / "y.py").write_text("from eartalk.core import media\n")
    found = violations(room, FORBIDDEN["engine"])
    assert any("x.py:2" in v for v in found) and any("y.py:1" in v for v in found)


def test_old_module_paths_still_import():
    import eartalk.core.engine.model as new
    import eartalk.core.model as old
    from eartalk.core.face import FaceAnalyzer
    from eartalk.core.media.face import FaceAnalyzer as moved

    assert old is new and FaceAnalyzer is moved
