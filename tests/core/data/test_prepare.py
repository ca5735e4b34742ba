"""``eartalk prepare`` on real clips: chunking, resuming, bad files, interrupted runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eartalk.core.cli import main
from eartalk.core.data.dataset import TalkingHeadDataset, load_clips, read_manifest, read_skipped
from eartalk.core.data.prepare import SOURCES, VideoChunks, prepare_dataset
from eartalk.core.media.io import read_video
from eartalk.core.registry import get_registry

R = 64
SHORT = "V-Express__RD_Radio10_0_clip_0.mp4"  # 2.1 s, 29.97 fps
OTHER = "video-retalking__3.mp4"  # 5 s, cut to 2 s by --max-seconds


@pytest.fixture()
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "inputs" / "broken.mp4"
    path.parent.mkdir()
    path.write_bytes(b"\x00\x01garbage, not a video" * 50)
    return path


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    code = main(["prepare", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_prepare_resume_and_bad_file(tmp_path: Path, real_dir: Path, landmarker_path: Path, broken: Path, capsys) -> None:
    out = tmp_path / "ds"
    videos = [str(real_dir / "video" / SHORT), str(broken), str(real_dir / "video" / OTHER)]
    args = [*videos, "--out", str(out), "--resolution", str(R), "--landmarker", str(landmarker_path),
            "--max-seconds", "2", "--chunk-seconds", "1"]
    code, report = run_cli(capsys, *args)
    assert code == 0
    assert len(report["prepared"]) == 4  # two 1 s chunks of the first 2 s of each good video
    [bad] = report["skipped"]
    assert bad["source"] == str(broken) and "cannot read video file" in bad["reason"]
    assert read_skipped(out) == report["skipped"]

    info, readers = load_clips(out)
    assert info["resolution"] == R and sorted(r.id for r in readers) == sorted(report["prepared"])
    conditions = get_registry().names("condition")
    for reader in readers:
        entry = reader.entry
        assert entry["num_frames"] == 25 and reader.frames.shape == (25, 3, R, R)
        assert reader.audio.shape == (25 * 640,) and float(np.abs(reader.audio).max()) > 0.01
        assert entry["signals"] == conditions
        for name in conditions:
            assert reader.signal(name).shape[0] == 25
        face = reader.face()
        assert face is not None and bool(face.present.all())
        # Landmarks are in crop coordinates: the face fills the middle of the crop.
        centre = face.landmarks[..., :2].mean(dim=(0, 1))
        assert torch.all((centre > 0.35) & (centre < 0.65))
    # The second chunk's audio is the source audio from 1 s on.
    second = next(r for r in readers if r.entry["source"].endswith(SHORT) and r.entry["metadata"]["chunk"] == 1)
    reference = read_video(real_dir / "video" / SHORT, max_frames=50).audio
    np.testing.assert_allclose(np.asarray(second.audio)[1000:-1000], reference[16000 + 1000 : 32000 - 1000].numpy(), atol=2e-3)

    # Same command again: nothing decoded, both videos reported as already prepared.
    again = prepare_dataset(videos, out, resolution=R, landmarker=landmarker_path, max_seconds=2, chunk_seconds=1,
                            progress=False)
    assert again.prepared == [] and sorted(again.existing) == sorted(report["prepared"]) and again.exit_code == 0
    reasons = {row["source"]: row["reason"] for row in again.skipped}
    assert reasons[videos[0]].startswith("already prepared") and reasons[videos[2]].startswith("already prepared")
    assert "cannot read video file" in reasons[videos[1]]
    assert len(read_manifest(out)) == 4

    # A dataset item with a stack of built-in plugins uses the stored signals.
    from eartalk.conditions import ConditionStack

    stack = ConditionStack([get_registry().condition(n)(d_model=8) for n in ("audio", "blink", "head_pose")])
    item = TalkingHeadDataset(out, clip_frames=20, stack=stack)[0]
    assert all(bool(p.all()) for p in item["present"].values())
    assert item["signals"]["audio"].shape == (20, stack.plugin("audio").signal_dim)


def test_interrupted_prepare_redoes_the_unfinished_clip(tmp_path: Path, real_dir: Path, landmarker_path: Path) -> None:
    out = tmp_path / "ds"
    video = real_dir / "video" / SHORT
    options = dict(resolution=32, landmarker=landmarker_path, max_seconds=1.2, chunk_seconds=0.6,
                   conditions=["blink"], progress=False)
    first = prepare_dataset([video], out, **options)
    assert len(first.prepared) == 2
    # Crash while committing the second chunk: its folder exists, its manifest line is torn,
    # and the video was never marked done.
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(lines[0] + lines[1][:25])
    (out / SOURCES).write_text("")
    assert [r.id for r in load_clips(out)[1]] == [first.prepared[0]]
    resumed = prepare_dataset([video], out, **options)
    assert resumed.prepared == [first.prepared[1]] and resumed.existing == [first.prepared[0]]
    assert [r.id for r in load_clips(out)[1]] == first.prepared
    assert all(r.signal("blink").shape == (15, 2) for r in load_clips(out)[1])


def test_nothing_prepared_exits_nonzero(tmp_path: Path, landmarker_path: Path, broken: Path, capsys) -> None:
    code, report = run_cli(capsys, str(broken), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "ds"),
                           "--landmarker", str(landmarker_path))
    assert code == 1 and report["prepared"] == [] and report["existing"] == []
    reasons = [row["reason"] for row in report["skipped"]]
    assert "cannot read video file" in reasons[0] and "does not exist" in reasons[1]


def test_usage_errors_stop_before_any_work(tmp_path: Path, landmarker_path: Path, broken: Path, capsys) -> None:
    code = main(["prepare", str(broken), "--out", str(tmp_path / "ds"), "--landmarker", str(landmarker_path),
                 "--conditions", "blinkk"])
    assert code == 2 and "blinkk" in capsys.readouterr().err
    code = main(["prepare", str(broken), "--out", str(tmp_path / "ds"), "--landmarker", str(tmp_path / "nope.task")])
    assert code == 2 and "face_landmarker.task" in capsys.readouterr().err


def test_chunks_match_whole_file_decoding(real_dir: Path) -> None:
    """Streaming decode (bounded memory) gives the frames read_video gives, in order."""
    path = real_dir / "video" / SHORT
    chunks = list(VideoChunks(path, chunk_frames=20, max_frames=45))
    assert [(start, frames.shape[0]) for start, frames in chunks] == [(0, 20), (20, 20), (40, 5)]
    whole = read_video(path, max_frames=45, audio=False).frames
    assert torch.equal(torch.cat([f for _, f in chunks]), whole)
