"""Strict config: unknown keys, types, overrides, resolved config."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from eartalk.core.config import apply_overrides, load_config, save_resolved, structure
from eartalk.core.errors import ConfigError


@attrs.frozen
class Optim:
    lr: float = 1e-3
    steps: int = 10
    amsgrad: bool = False


@attrs.frozen
class Item:
    name: str
    weight: float = 1.0


@attrs.frozen
class Run:
    optim: Optim = Optim()
    items: list[Item] = attrs.field(factory=list)
    out_dir: Path = Path("runs")
    note: str | None = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 0.1\n  stesp: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Run)
    message = str(info.value)
    assert str(path) in message and "optim.stesp" in message and "did you mean 'steps'" in message


def test_nested_list_errors_have_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "items:\n  - name: a\n  - nmae: b\n")
    with pytest.raises(ConfigError, match=r"items\.1\.nmae") as info:
        load_config(path, Run)
    assert "missing required key 'items.1.name'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("optim:\n  steps: 1.5\n", "expected int"), ("optim:\n  steps: ten\n", "expected int"),
     ("optim:\n  amsgrad: 1\n", "expected bool"), ("optim:\n  lr: fast\n", "expected float"),
     ("optim:\n  steps: true\n", "expected int")],
)
def test_types_are_checked(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text), Run)


def test_overrides_are_dotted_typed_and_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "items:\n  - name: a\n")
    run = load_config(path, Run, ["optim.lr=3e-4", "items.0.weight=2", "note=hello", "out_dir=/tmp/x"])
    assert run.optim.lr == pytest.approx(3e-4) and run.items[0].weight == 2.0
    assert run.note == "hello" and run.out_dir == Path("/tmp/x")
    with pytest.raises(ConfigError, match="unknown key 'lrr'.*did you mean 'lr'"):
        load_config(path, Run, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(path, Run, ["optim.steps=abc"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(path, Run, ["items.3.weight=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"], Run)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", Run)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "optim: [\n"), Run)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"), Run)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    run = structure({"optim": {"steps": 3}, "items": [{"name": "x"}]}, Run)
    saved = save_resolved(run, tmp_path / "out")
    assert saved.parent == tmp_path / "out"
    assert load_config(saved, Run) == run
