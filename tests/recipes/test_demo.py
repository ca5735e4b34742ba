"""`eartalk demo`: the commanded edits are where the README says, the truth it shows is the
renderer's truth of those controls, and (slow) a tiny run writes the video and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eartalk.core.data.synth import EMOTIONS
from eartalk.recipes.demo import demo_controls, render_truth


@pytest.fixture(scope="module")
def heldout_item(tmp_path_factory) -> dict:
    from eartalk.core.data.dataset import TalkingHeadDataset
    from eartalk.core.data.synth import synthesize_dataset

    root = synthesize_dataset(tmp_path_factory.mktemp("demo") / "holdout", clips=1, seconds=12.0, resolution=64, seed=11)
    return TalkingHeadDataset(root, clip_frames=300, extras=("mouth",))[0]


def test_demo_edits_turn_the_head_blink_and_switch_emotion(heldout_item: dict) -> None:
    own = heldout_item["signals"]
    cmd = demo_controls(own, 300)
    assert torch.equal(cmd["head_pose"][:125], own["head_pose"][:125]), "nothing changes before 5 s"
    assert (cmd["head_pose"][135:250, 0] == 25.0).all() and (cmd["head_pose"][135:250, 1:3] == 0).all()
    assert torch.equal(cmd["head_pose"][260:], own["head_pose"][260:]), "the clip's own motion resumes"
    assert cmd["blink"][177].min() == 1.0 and torch.equal(cmd["blink"][:175], own["blink"][:175])
    assert (cmd["emotion"][250:, 0] == EMOTIONS.index("happy")).all() and (cmd["emotion"][250:, 1] == 3).all()
    assert torch.equal(cmd["emotion"][:250], own["emotion"][:250])
    assert torch.equal(own["head_pose"], heldout_item["signals"]["head_pose"]) and not torch.equal(cmd["head_pose"], own["head_pose"])
    short = demo_controls(own, 100)  # a clip shorter than 5 s: no edit applies
    assert all(torch.equal(short[n], own[n][:100]) for n in short)


def test_rendered_truth_is_the_renderers_truth(heldout_item: dict) -> None:
    from eartalk.core.types import to_uint8

    own = {n: s[:60] for n, s in heldout_item["signals"].items()}
    truth = render_truth(heldout_item["meta"]["metadata"], own, heldout_item["extras"]["mouth"][:60], 64)
    assert torch.equal(truth, to_uint8(heldout_item["frames"][:60])), "own controls re-render the stored frames exactly"
    edited = render_truth(heldout_item["meta"]["metadata"], demo_controls(heldout_item["signals"], 300),
                          heldout_item["extras"]["mouth"][:300], 64)
    diff = (edited.float() - to_uint8(heldout_item["frames"]).float()).abs().flatten(1).mean(1)
    assert diff[:125].max() == 0 and diff[140:250].mean() > 5, "the truth shows the head turn"


@pytest.mark.slow
def test_tiny_demo_writes_video_and_summary(tmp_path: Path) -> None:
    from eartalk.core.media.io import read_video
    from eartalk.recipes.demo import run_demo
    from eartalk.recipes.study import REPORT_KEYS

    summary = run_demo(tmp_path / "demo", clips=8, vae_steps=20, steps=20, frames=260, progress=False,
                       probe_identities=8, probe_epochs=1)
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for key in (*REPORT_KEYS, "video", "checkpoints"):
        assert key in saved, key
    assert Path(saved["video"]).is_file() and all(Path(p).is_file() for p in saved["checkpoints"].values())
    frames = read_video(saved["video"], max_frames=2).frames
    assert frames.shape[-1] == 2 * frames.shape[-2], "truth and generated side by side"
    assert summary["fps"] > 0 and saved["budget"]["steps"] == 20


def test_demo_cli_passes_vae_focus(monkeypatch, tmp_path: Path) -> None:
    """``eartalk demo --vae-focus W`` and ``--ema-decay D`` reach the demo (default focus: the plain L1, 0)."""
    import argparse
    import inspect

    import eartalk.recipes.demo as demo
    from eartalk.recipes.commands import DemoCommand

    default_ema = inspect.signature(demo.run_demo).parameters["ema_decay"].default
    seen = []
    parser = argparse.ArgumentParser()
    command = DemoCommand()
    command.add_arguments(parser)  # defaults from run_demo's signature, before it is replaced
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.append(kw) or {})
    command.run(parser.parse_args(["--out", str(tmp_path), "--vae-focus", "10", "--ema-decay", "0.99"]))
    command.run(parser.parse_args(["--out", str(tmp_path)]))
    assert [kw["vae_focus"] for kw in seen] == [10.0, 0.0]
    assert [kw["ema_decay"] for kw in seen] == [0.99, default_ema]
    monkeypatch.undo()
    from eartalk.core.errors import ConfigError

    monkeypatch.setattr("eartalk.metrics.probe.get_or_train_probe", lambda *a, **k: pytest.fail("started before refusing"))

    for bad in (1.0, -0.5, float("nan")):  # refused before the probe or anything else is trained
        with pytest.raises(ConfigError, match=r"--ema-decay must be in \[0, 1\)"):
            demo.run_demo(tmp_path / "bad", ema_decay=bad)
    assert not (tmp_path / "bad").exists()
