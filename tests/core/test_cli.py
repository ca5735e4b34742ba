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


# -- help generated from the plugins (newcomer polish) ---------------------------------------
def test_plugins_listing_is_compact_at_80_columns(capsys, monkeypatch, fresh_registry) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    names = get_registry().names("condition") + get_registry().names("metric")
    assert all(any(line.startswith(n + " ") for line in lines) for n in names), "one line per plugin, name first"
    assert len(lines) < len(get_registry().infos()) + 12, "no wrapped rows"
    assert main(["plugins", "--wide", "--kind", "condition"]) == 0
    wide = capsys.readouterr().out
    assert "eartalk.plugins.head_pose" in wide and "slots" in wide and "yaw (degrees" in wide


def test_plugins_show_describes_columns_units_values_and_options(capsys, fresh_registry) -> None:
    assert main(["plugins", "show", "head_pose"]) == 0
    out = capsys.readouterr().out
    for text in ("yaw (degrees, [-90, 90]): > 0: the subject turns toward the image right", "head_pose=frontal",
                 "head_pose=values.csv", "head_pose=driving.mp4", "head_pose=off", "neutral_translation (default"):
        assert text in out, text
    assert main(["plugins", "show", "emotion"]) == 0
    assert "emotion=sad:3" in capsys.readouterr().out
    assert main(["plugins", "show", "gaze", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    source = next(o for o in data["options"] if o["name"] == "source")
    assert source["allowed"] == "one of 'blendshapes', 'iris'" and source["default"] == "blendshapes"
    assert main(["plugins", "show", "head_pos"]) == 2
    assert "did you mean 'head_pose'" in capsys.readouterr().err


def test_third_party_plugin_gets_the_same_help_and_is_listed_after_builtins(make_dist, capsys, fresh_registry) -> None:
    make_dist("eartalk-sparkle", "eartalk_sparkle", SPARKLE.replace(
        '    name = "sparkle"\n',
        '    name = "sparkle"\n    description = "sparkles per frame"\n'
        '    labels = {"dazzling": "the most sparkle (1)"}\n'))
    assert main(["plugins", "--json", "--kind", "condition"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names[-1] == "sparkle" and names[0] == "audio", names
    assert main(["plugins", "show", "sparkle"]) == 0
    out = capsys.readouterr().out
    assert "[condition, eartalk-sparkle 1.2.3] sparkle: sparkles per frame" in out
    assert "sparkle=dazzling" in out and "sparkle=off" in out and "sparkle_0" in out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "sparkle [eartalk-sparkle]: sparkles per frame" in capsys.readouterr().out


def test_generate_help_lists_controls_and_defaults(capsys, monkeypatch, fresh_registry) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("repeat it for several controls", "yaw (degrees, [-90, 90])", "emotion=sad:3", "blink=open",
                 "head_pose=off (absent)", "(default: the checkpoint's; 4", "sampling seed (default: 0)",
                 "eartalk plugins show NAME"):
        assert text in out, text


def test_every_subcommand_has_a_description_and_defaults_show() -> None:
    from eartalk.core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, f"`eartalk {name}` has no description"
    demo = sub.choices["demo"].format_help()
    assert "(default: 200)" in " ".join(demo.split())


def test_plugin_option_error_names_file_key_and_allowed_values(tmp_path: Path, capsys) -> None:
    text = (CONFIGS / "eartalk_tiny_train.yaml").read_text()
    bad = tmp_path / "gaze.yaml"
    bad.write_text(text.replace("- name: gaze", "- name: gaze\n    options: {source: irs}", 1))
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "options of 'gaze'" in err
    assert "source: must be one of 'blendshapes', 'iris'; got 'irs' (did you mean 'iris'?)" in err
    assert "Attribute(" not in err and "<root>" not in err


def test_conditions_doc_table_is_in_sync_with_the_plugins() -> None:
    from eartalk.core.commands import conditions_markdown

    doc = (REPO / "docs" / "conditions.md").read_text()
    begin, end = "<!-- BEGIN generated by `eartalk plugins --markdown` -->\n", "<!-- END generated -->"
    assert begin in doc and end in doc
    shipped = doc.split(begin, 1)[1].split(end, 1)[0]
    assert shipped == conditions_markdown(), (
        "docs/conditions.md is out of date: replace the generated block with `eartalk plugins --markdown`")


NATIVE_LOG_LINES = ("Logging before InitGoogle", "Sets FaceBlendshapesGraph acceleration to xnnpack",
                    "Created TensorFlow Lite XNNPACK delegate", "Feedback manager requires a model with a single signature")


@pytest.mark.slow
def test_generate_stderr_is_quiet_and_reports_progress(tmp_path: Path, real_dir: Path, landmarker_path: Path) -> None:
    """A normal `eartalk generate` run: none of MediaPipe/TFLite's native log lines on stderr (they
    come back with -v), a progress line with frames and fps, the final fps, and what `blink=off` did."""
    from eartalk.core.config import structure
    from eartalk.core.data.synth import synthesize_dataset
    from eartalk.recipes.train import TrainConfig, TrainRecipe

    data = synthesize_dataset(tmp_path / "data", clips=2, seconds=1.0, resolution=64, seed=1)
    cfg = structure({"out_dir": str(tmp_path / "run"), "model": {"preset": "tiny", "vae_checkpoint": "random",
                                                                 "arch": {"window": 3, "period": 6}},
                     "conditions": [{"name": "audio"}, {"name": "blink"}],
                     "data": {"root": str(data), "clip_frames": 6, "batch_size": 2},
                     "trainer": {"max_steps": 2, "val_every_n_steps": 2, "checkpoint_every_n_steps": 2,
                                 "progress_bar": False, "accelerator": "cpu"}}, TrainConfig)
    ckpt = TrainRecipe().run(cfg)
    exe = shutil.which("eartalk", path=str(Path(sys.executable).parent)) or "eartalk"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
           "EARTALK_FACE_LANDMARKER": str(landmarker_path), "OMP_NUM_THREADS": "1"}
    args = [exe, "generate", "--checkpoint", str(ckpt), "--portrait", str(real_dir / "image" / "LivePortrait__s42.jpg"),
            "--audio", str(real_dir / "audio" / "dreamtalk__spanish1.wav"), "--frames", "30", "--steps", "1",
            "--denoise", "1", "--control", "blink=off@0:10", "--out", str(tmp_path / "out.mp4")]
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    for line in NATIVE_LOG_LINES:
        assert line not in quiet.stderr, f"native log line on stderr: {line}\n{quiet.stderr}"
    assert "generated 25/30 frames (" in quiet.stderr and "generated 30 frames in" in quiet.stderr
    assert "fps" in quiet.stderr and f"wrote {tmp_path / 'out.mp4'}" in quiet.stdout
    assert "blink=off on frames 0-9: absent (the learned null token)" in quiet.stderr
    verbose = subprocess.run([exe, "-v", *args[1:]], capture_output=True, text=True, env=env, timeout=600)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert any(line in verbose.stderr for line in NATIVE_LOG_LINES), "-v shows the native logs"


def test_synth_refuses_head_motion_slower_than_its_slowest_component(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--clips", "1", "--motion-hz", "0.05"]) == 2
    assert "--motion-hz > 0.05" in capsys.readouterr().err
    assert not (tmp_path / "s").exists(), "nothing written"
