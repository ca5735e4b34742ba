"""``eartalk evaluate`` end to end on short real clips re-encoded small with media.write_video."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from eartalk.core.cli import main
from eartalk.metrics.syncnet import SyncNet

FRAMES = 50


def _write_small(src, dst, frames: int = FRAMES, size: int = 128):
    from eartalk.core.media.io import read_video, write_video

    clip = read_video(src, fps=25, max_frames=frames)
    small = F.interpolate(clip.frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_video(dst, small.round().clamp(0, 255).to(torch.uint8), fps=25, audio=clip.audio)
    return dst


@pytest.fixture(scope="module")
def small_sets(real_dir, tmp_path_factory, default_clips):
    root = tmp_path_factory.mktemp("evaluate")
    video = real_dir / "video"
    _write_small(video / f"{default_clips[0]}.mp4", root / "reference" / "clip.mp4")
    _write_small(video / f"{default_clips[0]}.mp4", root / "good" / "clip.mp4")  # same person, same motion
    _write_small(video / f"{default_clips[1]}.mp4", root / "other" / "clip.mp4")  # another person
    return root


def test_evaluate_reports_values_skips_and_avg_rank(small_sets, landmarker_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.delenv("EARTALK_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("EARTALK_SYNCNET_WEIGHTS", raising=False)
    out = tmp_path / "report.json"
    code = main([
        "evaluate", "--generated", str(small_sets / "good"), str(small_sets / "other"),
        "--reference", str(small_sets / "reference"),
        "--metrics", "psnr,sync_c,lipsync_proxy,m_lmd,control_head_pose",
        "--landmarker", str(landmarker_path), "--out", str(out),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    good, other = report["results"]["good"], report["results"]["other"]
    # the metric whose weights are missing is reported as skipped, naming the file
    assert good["sync_c"]["value"] is None and "syncnet_v2.model" in good["sync_c"]["skipped"]
    # the others have values, fidelity and protocol
    assert good["psnr"]["value"] > other["psnr"]["value"] + 5
    assert good["psnr"]["fidelity"] == "reference" and good["psnr"]["protocol"]["fps"] == 25.0
    assert good["psnr"]["protocol"]["num_frames"] == FRAMES
    assert good["m_lmd"]["value"] < other["m_lmd"]["value"] and good["m_lmd"]["fidelity"] == "proxy"
    assert good["control_head_pose"]["value"] < 1.0 < other["control_head_pose"]["value"]
    lip = good["lipsync_proxy"]
    assert lip["fidelity"] == "proxy" and isinstance(lip["lag_frames"], int) and "confidence" in lip
    assert lip["protocol"]["mode"] == "regressor fitted on the reference set"
    ranks = report["avg_rank"]
    assert ranks["methods"] == ["good", "other"] and "sync_c" not in ranks["metrics"]
    assert ranks["avg_rank"]["good"] < ranks["avg_rank"]["other"]
    printed = capsys.readouterr().out
    assert "skipped" in printed and "Avg-R" in printed


def test_evaluate_with_user_weights_is_unverified(small_sets, tmp_path, seeded):
    weights = tmp_path / "my_syncnet.model"
    torch.save(SyncNet().state_dict(), weights)
    out = tmp_path / "report.json"
    code = main([
        "evaluate", "--generated", str(small_sets / "good"), "--metrics", "sync_c,sync_d,psnr",
        "--weights", f"syncnet={weights}", "--sync-mode", "frame", "--max-frames", "16", "--out", str(out), "--json",
    ])
    assert code == 0
    results = json.loads(out.read_text())["results"]["good"]
    for name in ("sync_c", "sync_d"):
        assert results[name]["fidelity"] == "unverified-weights"
        assert len(results[name]["protocol"]["weights_sha256"]) == 64
        assert results[name]["protocol"]["crop"] == "whole frame resized to 224x224"
    assert results["sync_d"]["value"] > 0
    assert "reference" in results["psnr"]["skipped"]  # no --reference given
    assert "avg_rank" not in json.loads(out.read_text())


def test_evaluate_bad_input_is_a_clean_error(tmp_path, capsys):
    code = main(["evaluate", "--generated", str(tmp_path / "missing"), "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
