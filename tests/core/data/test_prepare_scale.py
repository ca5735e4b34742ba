"""``prepare --shard I/N`` + ``merge`` equal one unsharded run; damaged videos, changed options and earlier drops are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eartalk.core.cli import main
from eartalk.core.data.dataset import clip_dir, read_manifest, read_skipped
from eartalk.core.data.prepare import merge_datasets, prepare_dataset, shard_inputs
from eartalk.core.errors import InputError

VIDEOS = ["V-Express__RD_Radio10_0_clip_0.mp4", "video-retalking__3.mp4", "LivePortrait__d11.mp4"]
OPTIONS = dict(resolution=32, max_seconds=1.2, chunk_seconds=1.0, min_seconds=0.5, conditions=["voice_activity"],
               progress=False)


def _clips(root: Path) -> dict[str, tuple[dict, dict[str, bytes]]]:
    out = {}
    for entry in read_manifest(root):
        arrays = {p.name: p.read_bytes() for p in sorted(clip_dir(root, entry).iterdir())}
        out[entry["id"]] = ({k: v for k, v in entry.items() if k != "shard"}, arrays)
    return out


@pytest.mark.slow  # three prepare runs with MediaPipe: ~20 s
def test_two_shards_merged_equal_one_run(tmp_path: Path, real_dir: Path, landmarker_path: Path, capsys) -> None:
    videos = [str(real_dir / "video" / v) for v in VIDEOS]
    whole = prepare_dataset(videos, tmp_path / "whole", landmarker=landmarker_path, **OPTIONS)
    assert len(whole.prepared) == 3  # one 1 s clip per video; each 0.2 s tail is dropped
    for i in (0, 1):
        code = main(["prepare", *videos, "--out", str(tmp_path / f"part{i}"), "--shard", f"{i}/2", "--resolution", "32",
                     "--max-seconds", "1.2", "--chunk-seconds", "1", "--min-seconds", "0.5",
                     "--conditions", "voice_activity", "--landmarker", str(landmarker_path), "--json"])
        assert code == 0
    capsys.readouterr()
    sizes = [len(read_manifest(tmp_path / f"part{i}")) for i in (0, 1)]
    assert sizes == [2, 1]  # inputs 0, 2 and input 1
    assert main(["merge", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out", str(tmp_path / "merged"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clips"] == 3
    assert _clips(tmp_path / "merged") == _clips(tmp_path / "whole")
    # The merged dataset is read like any other (DataModule path).
    from eartalk.core.data.dataset import TalkingHeadDataset

    assert len(TalkingHeadDataset(tmp_path / "merged", clip_frames=10)) == len(TalkingHeadDataset(tmp_path / "whole", clip_frames=10))
    with pytest.raises(InputError, match="not empty"):
        merge_datasets([tmp_path / "part0"], tmp_path / "merged")


def test_shard_split_is_a_partition() -> None:
    items = [Path(f"v{i}.mp4") for i in range(7)]
    parts = [shard_inputs(items, i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(items)
    with pytest.raises(InputError, match="0 <= I < N"):
        shard_inputs(items, 3, 3)


def _remux_truncated(src: Path, dst: Path, fmt: str, keep: float) -> Path:
    import av

    full = dst.with_name("full" + dst.suffix)
    with av.open(str(src)) as i, av.open(str(full), "w", format=fmt, options={"movflags": "faststart"} if fmt == "mp4" else {}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            o.mux(packet)
    data = full.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.mark.parametrize(("fmt", "suffix"), [("mp4", ".mp4"), ("matroska", ".mkv")])
def test_video_failing_mid_decode_is_kept_to_its_last_good_frame_and_reported(
    tmp_path: Path, real_dir: Path, landmarker_path: Path, fmt: str, suffix: str
) -> None:
    bad = _remux_truncated(real_dir / "video" / "video-retalking__4.mp4", tmp_path / f"cut{suffix}", fmt, 0.3)
    report = prepare_dataset([bad], tmp_path / "ds", resolution=32, chunk_seconds=20, landmarker=landmarker_path,
                             conditions=["voice_activity"], progress=False)
    assert report.exit_code == 0 and len(report.prepared) == 1
    (entry,) = read_manifest(tmp_path / "ds")
    (skipped,) = read_skipped(tmp_path / "ds")
    assert skipped["frames_kept"] == entry["num_frames"] < skipped["frames_total"]
    assert 160 <= skipped["frames_total"] <= 170  # 6.6 s at 25 fps, from the header
    assert f"kept {entry['num_frames']} of {skipped['frames_total']} frames" in skipped["reason"]


def test_rerun_with_other_options_refuses_and_earlier_drops_keep_their_reason(
    tmp_path: Path, real_dir: Path, landmarker_path: Path, capsys
) -> None:
    video = str(real_dir / "video" / VIDEOS[0])
    out = tmp_path / "ds"
    first = prepare_dataset([video], out, landmarker=landmarker_path, **OPTIONS)
    assert any("shorter than --min-seconds" in s["reason"] for s in first.skipped)
    again = prepare_dataset([video], out, landmarker=landmarker_path, **OPTIONS)
    (row,) = again.skipped
    assert "already prepared (1 clip(s)" in row["reason"] and "shorter than --min-seconds" in row["reason"]
    assert "shorter than --min-seconds" in read_skipped(out)[0]["reason"]
    with pytest.raises(InputError, match=r"min_seconds: dataset 0\.5, now 0\.2"):
        prepare_dataset([video], out, landmarker=landmarker_path, **{**OPTIONS, "min_seconds": 0.2})
    code = main(["prepare", video, "--out", str(out), "--resolution", "32", "--max-seconds", "1.2",
                 "--chunk-seconds", "1", "--conditions", "voice_activity", "--landmarker", str(landmarker_path)])
    assert code == 2 and "prepared with other options" in capsys.readouterr().err
