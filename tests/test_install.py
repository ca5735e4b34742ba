"""A regular (non-editable) install gives the same `eartalk` package, importable outside the tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """Build a wheel of the repo offline and unpack it into a target folder."""
    tmp = tmp_path_factory.mktemp("install")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheels"), str(REPO)], cwd=tmp)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp / "wheels").glob("eartalk-*.whl"))
    site = tmp / "site"
    installed = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], cwd=tmp)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return site


def test_regular_install_imports_outside_the_source_tree(wheel_site: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(wheel_site)}
    code = (
        "import eartalk, eartalk.core, eartalk.conditions, eartalk.plugins, eartalk.metrics, eartalk.recipes, json;"
        "from importlib.resources import files;"
        "print(json.dumps({'file': eartalk.__file__, 'core': eartalk.core.__file__,"
        " 'configs': sorted(p.name for p in files('eartalk.recipes').joinpath('configs').iterdir())}))"
    )
    result = run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    import json

    info = json.loads(result.stdout)
    assert info["file"].startswith(str(wheel_site)), info
    assert info["core"].startswith(str(wheel_site / "eartalk" / "core"))
    assert "eartalk_tiny_train.yaml" in info["configs"]
    top_level = {p.name for p in wheel_site.iterdir()}
    assert "core" not in top_level and "metrics" not in top_level, "folders install under eartalk/, never top-level"
    assert not (wheel_site / "eartalk" / "tests").exists(), "tests are not shipped"


def test_regular_install_cli_matches_editable(wheel_site: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(wheel_site)}
    regular = run([sys.executable, "-m", "eartalk", "plugins", "--json"], cwd=tmp_path, env=env)
    editable = run([sys.executable, "-m", "eartalk", "plugins", "--json"], cwd=tmp_path)
    assert regular.returncode == 0 and editable.returncode == 0, regular.stderr + editable.stderr
    import json

    def names(out: str) -> set[tuple[str, str]]:
        return {(r["kind"], r["name"]) for r in json.loads(out)}

    assert names(regular.stdout) == names(editable.stdout)
