"""`eartalk own-face`: the split is in time and on whole clips, the test part is what was held out,
bad inputs fail clearly, and (slow) a real video runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eartalk.core.errors import ConfigError, InputError
from eartalk.recipes import own_face


def write_clips(root: Path, starts: list[float], frames: int = 12) -> list[str]:
    """A prepared-style dataset whose clips carry ``start_seconds`` (written in the given order)."""
    from eartalk.core.data.dataset import DatasetWriter

    ids = []
    with DatasetWriter(root, 16) as writer:
        for k, start in enumerate(starts):
            clip_id = f"clip-{k}"
            value = int(start * 10)  # each clip's frames carry its start time, so the join order can be read back
            writer.add(clip_id, torch.full((frames, 3, 16, 16), value, dtype=torch.uint8), torch.zeros(frames * 640),
                       metadata={"start_seconds": start})
            ids.append(clip_id)
    return ids


def test_split_is_in_time_order_on_whole_clips_and_subset_holds_only_those(tmp_path: Path) -> None:
    from eartalk.core.data.dataset import load_clips

    write_clips(tmp_path / "prep", [2.0, 0.0, 3.0, 1.0])  # written out of order
    train, test = own_face.split_clips(tmp_path / "prep", 0.75)
    assert [r.entry["metadata"]["start_seconds"] for r in train] == [0.0, 1.0, 2.0]
    assert [r.entry["metadata"]["start_seconds"] for r in test] == [3.0]
    sub = own_face.subset_dataset(tmp_path / "prep", tmp_path / "train", train)
    _, readers = load_clips(sub)
    assert sorted(r.id for r in readers) == sorted(r.id for r in train)
    assert all(np.array_equal(np.asarray(a.frames), np.asarray(b.frames))
               for a, b in zip(sorted(readers, key=lambda r: r.id), sorted(train, key=lambda r: r.id), strict=True))
    own_face.subset_dataset(tmp_path / "prep", tmp_path / "train", test)  # rewritten, not appended to
    assert [r.id for r in load_clips(sub)[1]] == [test[0].id]
    joined = own_face.join_test(tmp_path / "prep", train, stack=None)
    assert joined["frames"].shape[0] == 36
    levels = joined["frames"][::12, 0, 0, 0]  # the first frame of each joined clip, in [-1, 1]
    assert torch.allclose((levels + 1) * 127.5, torch.tensor([0.0, 10.0, 20.0]), atol=0.01), "joined in time order"


def test_split_keeps_at_least_one_clip_on_each_side(tmp_path: Path) -> None:
    write_clips(tmp_path / "two", [0.0, 1.0])
    train, test = own_face.split_clips(tmp_path / "two", 0.9)
    assert len(train) == 1 and len(test) == 1
    write_clips(tmp_path / "one", [0.0])
    with pytest.raises(InputError, match="at least two clips"):
        own_face.split_clips(tmp_path / "one", 0.75)


def test_bad_settings_and_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_fraction"):
        own_face.OwnFaceConfig(video="x.mp4", train_fraction=1.0)
    with pytest.raises(ConfigError, match="'audio'"):
        own_face.OwnFaceConfig(video="x.mp4", conditions=("head_pose",))
    with pytest.raises(ConfigError, match="chunk_seconds"):
        own_face.OwnFaceConfig(video="x.mp4", chunk_seconds=0.1)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match="vae_checkpoint"):
        own_face.OwnFaceConfig(video="x.mp4", init_from=str(ckpt))
    with pytest.raises(InputError, match="init_from .*gone.ckpt does not exist"):
        own_face.OwnFaceConfig(video="x.mp4", init_from=str(tmp_path / "gone.ckpt"), vae_checkpoint=str(ckpt))
    missing = tmp_path / "nope.mp4"
    with pytest.raises(InputError, match="nope.mp4 not found"):  # before MediaPipe or anything else
        own_face.run_own_face(own_face.OwnFaceConfig(video=str(missing), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists(), "a bad input writes nothing"


def test_command_is_registered() -> None:
    from eartalk.recipes import register_commands

    assert own_face.OwnFaceCommand in register_commands() and own_face.OwnFaceCommand.name == "own-face"


@pytest.mark.slow  # prepares a real video, trains a tiny VAE and model: ~2-3 min on 2 cores
def test_own_face_runs_on_a_real_video(tmp_path: Path, real_dir: Path, landmarker_path: Path) -> None:
    video = real_dir / "video" / "SadTalker__WDA_KatieHill_000.mp4"
    cfg = own_face.quick_config(str(video), tmp_path / "run", landmarker=str(landmarker_path), progress=False, threads=1)
    report = own_face.run_own_face(cfg)
    assert json.loads((tmp_path / "run" / "report.json").read_text())["mouth_corr"] == pytest.approx(report["mouth_corr"])
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "mouth.png").is_file()
    assert report["train_frames"] == 150 and report["test_frames"] == 50  # 8 s: 6 clips train, 2 test
    assert report["face_found_generated"] > 0.5  # MediaPipe finds a face in most generated frames (0.84 measured)
    assert report["vae_psnr_db"] > 18  # the VAE trained on 6 s of this face reconstructs its unseen 2 s
    assert report["mouth_amplitude_ratio"] > 0.1  # the generated mouth moves
    assert report["mouth_corr_static"] == 0.0
    assert len(report["curves"]["generated"]) == 50
