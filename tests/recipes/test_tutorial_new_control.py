"""The new-control walk-through (docs/tutorial-new-control.md, recipes/tutorial_new_control.py).

Fast: the pixel-level pieces (exposure, luma, the fine-tuning levels, the sweep, the 10 % rule)
and the clear error without the plugin. Slow: the documented command on reduced sizes, with the
example package pip-installed into a target folder; the fine-tuned model must follow the commanded
brightness (positive slope, clearly positive correlation) and clearly better than before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eartalk.core.errors import ConfigError
from eartalk.recipes import tutorial_new_control as tut

REPO = Path(__file__).resolve().parents[2]


def test_exposure_is_monotone_and_luma_follows() -> None:
    frames = torch.randint(20, 236, (1, 3, 16, 16), dtype=torch.uint8).expand(7, -1, -1, -1)
    levels = torch.linspace(-0.6, 0.6, 7)
    luma = tut.mean_luma(tut.apply_exposure(frames, levels))
    assert np.all(np.diff(luma) > 0.02), luma
    assert abs(luma[3] - tut.mean_luma(frames[:1])[0]) < 1e-3  # exposure 0 leaves the frame as it is


def test_finetune_levels_jump_within_a_clip_and_sweep_spans_the_range() -> None:
    curve = tut.exposure_curve(50, np.random.default_rng(0))
    assert curve.shape == (50,) and np.abs(curve).max() <= 0.6
    assert (np.diff(curve) != 0).sum() >= 3  # several jumps in 2 s
    assert (curve == 0).any() and (curve != 0).any()
    sweep = tut.sweep_exposure(31)
    assert sweep[0] == pytest.approx(-tut.EXPOSURE_RANGE) and sweep[15] == pytest.approx(tut.EXPOSURE_RANGE)
    assert sweep[-1] == pytest.approx(-tut.EXPOSURE_RANGE)


def test_ten_percent_rule_reads_the_direction_of_each_figure() -> None:
    before = {"l1_mean": 0.10, "blink_f1": 0.80, "drift_l1_late_over_early": 1.0}
    after = {"l1_mean": 0.105, "blink_f1": 0.70, "drift_l1_late_over_early": 1.2}
    verdict = tut.within_ten_percent(tut.forgetting(before, after))
    assert verdict == {"l1_mean": True, "blink_f1": False, "drift_l1_late_over_early": False}


def test_missing_plugin_and_bad_sizes_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eartalk.core import registry

    if "brightness" in registry.get_registry().names("condition"):
        pytest.skip("eartalk-brightness is installed in this environment")
    with pytest.raises(ConfigError, match="pip install ./docs/examples/eartalk-brightness"):
        tut.run_tutorial(tut.quick_config(tmp_path))
    with pytest.raises(ConfigError, match="finetune_steps"):
        tut.quick_config(tmp_path, finetune_steps=0)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        tut.main(["--out", str(tmp_path), "--set", "nonsense=1"])


@pytest.mark.heavy  # trains a VAE, a model and the fine-tune: ~10 min on a loaded 2-core machine
def test_walkthrough_finetuned_model_obeys_the_new_control(tmp_path: Path) -> None:
    src = shutil.copytree(REPO / "docs" / "examples" / "eartalk-brightness", tmp_path / "pkg",
                          ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(site), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    ran = subprocess.run([sys.executable, "-m", "eartalk.recipes.tutorial_new_control", "--out", str(out), "--quick",
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=1800, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["slope_after"] > 0, report["sweep"]["after"]["sweep"]["per_identity"]
    assert report["pearson_after"] > 0.25, report["sweep"]["after"]["sweep"]["per_identity"]
    assert report["pearson_after"] > report["pearson_before"] + 0.3
    assert set(report["old_controls_change"]) >= {"l1_mean", "drift_l1_late_over_early"}
