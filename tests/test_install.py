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


# What a new user runs after the README's install (see test_fresh_venv_install_as_the_readme_says).
AFTER_INSTALL = (
    "import json, subprocess, sys, torch, torchaudio;"
    "from eartalk.core.registry import get_registry;"
    "from eartalk.conditions import ConditionSpec, ConditionStack;"
    "from eartalk.core.types import Sample;"
    "rows = json.loads(subprocess.run([sys.argv[1], 'plugins', '--json'], capture_output=True, text=True, check=True).stdout);"
    "stack = ConditionStack.from_specs([ConditionSpec('audio')], 16);"
    "sig = stack.plugin('audio').extract(Sample(audio=torch.randn(16000) * 0.1, num_frames=25));"
    "print(json.dumps({'plugins': sorted(r['name'] for r in rows), 'audio': list(sig.shape),"
    " 'finite': bool(torch.isfinite(sig).all()), 'torchaudio': torchaudio.__version__}))"
)


def check_after_install(python: Path, eartalk: Path, cwd: Path) -> dict:
    result = run([str(python), "-c", AFTER_INSTALL, str(eartalk)], cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    import json

    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"audio", "head_pose", "blink", "emotion"} <= set(info["plugins"]), info
    assert info["audio"][0] == 25 and info["finite"], "the audio plugin runs (torchaudio loads against this torch)"
    return info


@pytest.mark.slow
def test_after_install_checks_pass_in_this_environment(tmp_path: Path) -> None:
    """The post-install checks of the fresh-venv test, on the environment running the suite."""
    info = check_after_install(Path(sys.executable), Path(sys.executable).with_name("eartalk"), tmp_path)
    assert info["torchaudio"].split("+")[0] == "2.11.0"


@pytest.mark.slow
@pytest.mark.network
def test_fresh_venv_install_as_the_readme_says(tmp_path: Path) -> None:
    """README: `python3.11 -m venv .venv && pip install -e ".[dev]" -c constraints.txt`, in a new
    virtual environment from a clean copy of the tree, then `eartalk plugins` and the audio plugin.

    Downloads the pinned wheels from the package registry (several GB with torch's CUDA
    libraries; pip's cache makes reruns faster), so it runs in CI's slow run only.
    """
    src = clean_copy(REPO, tmp_path / "src")
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    installed = subprocess.run([str(pip), "install", "-e", ".[dev]", "-c", "constraints.txt"], cwd=src,
                               capture_output=True, text=True, timeout=3600)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    imports = run([str(python), "-c", "import torchaudio, pyannote.audio, mediapipe, lightning, torchmetrics, eartalk"], cwd=tmp_path)
    assert imports.returncode == 0, imports.stderr[-3000:]
    info = check_after_install(python, venv / "bin" / "eartalk", tmp_path)
    assert info["torchaudio"].split("+")[0] == "2.11.0", "the pinned torchaudio, not a newer one that breaks against torch"
