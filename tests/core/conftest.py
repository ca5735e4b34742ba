"""Helpers to create throw-away plugin distributions on sys.path (a real ``.dist-info``)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture()
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``make_dist(dist_name, module_name, code)`` installs a module with an ``eartalk`` entry point."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    created: list[str] = []

    def make(dist_name: str, module_name: str, code: str, version: str = "1.2.3") -> Path:
        (root / f"{module_name}.py").write_text(textwrap.dedent(code))
        info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[eartalk]\n{module_name} = {module_name}\n")
        (info / "top_level.txt").write_text(module_name + "\n")
        created.append(module_name)
        importlib.invalidate_caches()
        return root

    yield make
    for name in created:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
