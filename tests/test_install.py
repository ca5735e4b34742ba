"""A regular (non-editable) install gives the same `eartalk` package, importable outside the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SKIP_ANYWHERE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")
_SKIP_AT_ROOT = {"runs", "data", "outputs"}  # run outputs at the repo root only: core/data is a package


def SKIP(folder: str, names: list[str]) -> set[str]:
    skipped = set(_SKIP_ANYWHERE(folder, names))
    if Path(folder).resolve() == REPO:
        skipped |= _SKIP_AT_ROOT & set(names)
    return skipped


def clean_copy(src: Path, dst: Path) -> Path:
    """Build from a copy: pip builds in-tree, and stale build/ output must not reach the wheel."""
    shutil.copytree(src, dst, ignore=SKIP)
    return dst


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """Build a wheel of the repo offline and unpack it into a target folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = clean_copy(REPO, tmp / "src")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheels"), str(src)], cwd=tmp)
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


def test_example_plugin_package_installs_and_passes_the_kit(tmp_path: Path) -> None:
    """The documented third-party package, pip-installed: listed by `eartalk plugins`, usable by
    name in a stack, and its own conformance tests pass against eartalk's kit."""
    example = clean_copy(REPO / "docs" / "examples" / "eartalk-brightness", tmp_path / "example")
    site = tmp_path / "site"
    installed = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                     "--target", str(site), str(example)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = run([sys.executable, "-m", "eartalk", "plugins", "--json", "--kind", "condition"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    import json

    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["brightness"]["distribution"] == "eartalk-brightness" and rows["brightness"]["slots"] == 1
    stack = run([sys.executable, "-c", "from eartalk.conditions import ConditionSpec, ConditionStack;"
                 "s = ConditionStack.from_specs([ConditionSpec('audio'), ConditionSpec('brightness')], 16);"
                 "print([(x.name, x.offset, x.slots) for x in s.layout])"], cwd=tmp_path, env=env)
    assert stack.returncode == 0, stack.stderr
    assert "('brightness'," in stack.stdout
    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example / "test_brightness.py")], cwd=tmp_path, env=env)
    assert tests.returncode == 0, tests.stdout[-2000:] + tests.stderr[-2000:]
    assert "passed" in tests.stdout
