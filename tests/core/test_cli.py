"""The `eartalk` command line: plugins listing, config show/validate, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eartalk.core.cli import main
from eartalk.core.registry import get_registry

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "configs"

SPARKLE = '''
import torch
from torch import nn
from eartalk.core.hookspecs import hookimpl
from eartalk.core.protocol import ConditionPlugin

class Sparkle(ConditionPlugin):
    name = "sparkle"
    def __init__(self, d_model, options=None):
        super().__init__(d_model, options, slots=2, signal_dim=1)
        self.proj = nn.Linear(1, 2 * d_model)
    def extract(self, sample):
        return torch.ones(sample.num_frames, 1)
    def encode(self, signal):
        b, t, _ = signal.shape
        return self.proj(signal).reshape(b, t, 2, self.d_model)

@hookimpl
def register_conditions():
    return [Sparkle]
'''


@pytest.fixture()
def fresh_registry():
    get_registry.cache_clear()
    yield
    get_registry.cache_clear()


def test_plugins_json_lists_builtins(capsys, fresh_registry) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    kinds = {(r["kind"], r["name"]) for r in rows}
    assert {("command", "plugins"), ("command", "config"), ("recipe", "train"), ("recipe", "vae")} <= kinds
    for row in rows:
        assert {"name", "kind", "distribution", "version"} <= set(row)
        if row["kind"] == "condition":
            assert row["slots"] >= 1


def test_entry_point_plugin_in_cli_and_stack(make_dist, capsys, fresh_registry) -> None:
    make_dist("eartalk-sparkle", "eartalk_sparkle", SPARKLE, version="2.0.1")
    assert main(["plugins", "--json", "--kind", "condition"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sparkle"]["distribution"] == "eartalk-sparkle" and rows["sparkle"]["version"] == "2.0.1"
    assert rows["sparkle"]["slots"] == 2

    from eartalk.conditions import ConditionSpec, ConditionStack

    stack = ConditionStack.from_specs([ConditionSpec("sparkle")], d_model=8)
    assert stack.num_slots == 2 and type(stack.plugin("sparkle")).__module__ == "eartalk_sparkle"


def shipped_yamls() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    names = {p.name for p in shipped_yamls()}
    assert {"eartalk_tiny_train.yaml", "vae_tiny_train.yaml", "eartalk_base_train.yaml"} <= names


@pytest.mark.parametrize("path", shipped_yamls(), ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path: Path, capsys) -> None:
    assert main(["config", "validate", str(path)]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


def test_misspelled_key_names_key_and_file(tmp_path: Path, capsys) -> None:
    text = (CONFIGS / "eartalk_tiny_train.yaml").read_text().replace("batch_size:", "batch_sise:")
    bad = tmp_path / "typo.yaml"
    bad.write_text(text)
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "data.batch_sise" in err and "did you mean 'batch_size'" in err


def test_overrides_are_type_checked_and_shown(capsys) -> None:
    path = str(CONFIGS / "eartalk_tiny_train.yaml")
    assert main(["config", "show", path, "trainer.max_steps=7", "model.arch.window=3"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "window: 3" in out and out.startswith("recipe: train")
    assert main(["config", "validate", path, "trainer.max_steps=seven"]) == 2
    assert "expected int" in capsys.readouterr().err
    assert main(["config", "validate", path, "trainer.max_stesp=7"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err
    assert main(["config", "validate", path, "model.arch.windw=3"]) == 2
    assert "windw" in capsys.readouterr().err


def test_unknown_condition_and_preset_in_config(tmp_path: Path, capsys) -> None:
    text = (CONFIGS / "eartalk_tiny_train.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("- name: gaze", "- name: gase"))
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown condition plugin 'gase'" in err and "did you mean 'gaze'" in err
    bad.write_text(text.replace("preset: tiny", "preset: tinny"))
    assert main(["config", "validate", str(bad)]) == 2
    assert "did you mean 'tiny'" in capsys.readouterr().err


def test_console_script_prints_valid_json() -> None:
    exe = shutil.which("eartalk", path=str(Path(sys.executable).parent)) or shutil.which("eartalk")
    assert exe, "the eartalk console script is installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run([exe, "plugins", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
    bad = subprocess.run([exe, "config", "validate", "/nonexistent.yaml"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
