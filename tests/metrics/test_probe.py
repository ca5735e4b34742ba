"""Synthetic probe: (slow) it learns to read every control from rendered frames of unseen
identities; its files round-trip, its error maths is right, and its metric plugins are proxies
that compare generated with reference readings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eartalk.core.errors import InputError, WeightsNotFoundError
from eartalk.metrics.base import Video, VideoSet
from eartalk.metrics.probe import (
    PROBE_FORMAT,
    PROBE_METRICS,
    ProbeBlink,
    ProbeHeadPose,
    ProbeMouth,
    ProbeOptions,
    ProbeTraining,
    SyntheticProbe,
    evaluate_probe,
    heldout_clips,
    load_probe,
    reading_errors,
    save_probe,
    train_probe,
)


@pytest.fixture(scope="module")
def random_probe() -> SyntheticProbe:
    """An untrained probe: its readings differ between different frames, which is all the plumbing tests need."""
    from eartalk.metrics.probe import prepare_frames

    torch.manual_seed(0)
    probe = SyntheticProbe()
    frames = heldout_clips(1, 1.0, seed=5)[0].frames
    with torch.no_grad():  # batch-norm statistics of real frames, so that readings vary with the frame
        for _ in range(20):
            probe(prepare_frames(frames))
    return probe.eval()


@pytest.fixture(scope="module")
def probe_file(random_probe, tmp_path_factory) -> Path:
    return save_probe(random_probe, tmp_path_factory.mktemp("probe") / "probe.pt", {"heldout_accuracy": {"x": 1.0}})


@pytest.mark.slow
def test_trained_probe_reads_every_control_of_unseen_identities_better_than_chance() -> None:
    # A small training (about 30 s on one core): the defaults (`eartalk probe`) take minutes.
    probe, log = train_probe(ProbeTraining(identities=48, frames_per_identity=20, epochs=6), progress=False)
    assert log["frames"] == 960 and log["steps"] == 6 * 30
    assert log["loss_last"] < 0.7 * log["loss_first"], log
    acc = evaluate_probe(probe, heldout_clips(3, 4.0))  # identities the probe never saw
    assert acc["identities"] == 3 and acc["frames"] == 300
    assert acc["yaw_mae_deg"] < 0.6 * acc["chance_yaw_mae_deg"], acc
    assert acc["mouth_corr"] > 0.7, acc
    assert 0.0 <= acc["blink_f1"] <= 1.0 and acc["emotion_accuracy_by_intensity"], acc  # need the full training


def test_evaluate_probe_reports_emotion_per_intensity(random_probe) -> None:
    clips = heldout_clips(2, 2.0, seed=31)
    acc = evaluate_probe(random_probe, clips)
    by, frames = acc["emotion_accuracy_by_intensity"], acc["emotion_frames_by_intensity"]
    intensities = np.concatenate([c.controls.emotion[:, 1] for c in clips]).round().astype(int)
    assert set(by) == set(frames) == {str(i) for i in np.unique(intensities)} <= {"1", "2", "3"}
    assert sum(frames.values()) == acc["frames"] == 100
    assert all(frames[str(i)] == int((intensities == i).sum()) for i in (1, 2, 3) if str(i) in frames)
    overall = sum(by[k] * frames[k] for k in by) / acc["frames"]
    assert overall == pytest.approx(acc["emotion_accuracy"], abs=1e-3)
    segments = sum(len({tuple(row) for row in c.controls.emotion.tolist()}) for c in clips)
    assert acc["emotion_segments"] == segments and 2 <= segments <= 4


def test_reading_errors_maths() -> None:
    t = 40
    rng = np.random.default_rng(0)
    truth = {"head_pose": rng.uniform(-20, 20, (t, 6)), "blink": (rng.random((t, 2)) > 0.8).astype(float),
             "gaze": rng.uniform(-1, 1, (t, 4)), "mouth": rng.random(t), "emotion": rng.integers(0, 8, t).astype(float)}
    perfect = {"head_pose": truth["head_pose"][:, :3], "blink": truth["blink"], "gaze": truth["gaze"],
               "mouth": truth["mouth"] * 0.5 + 0.1, "emotion": truth["emotion"].astype(int)}
    got = reading_errors(perfect, truth)
    assert got["yaw_mae_deg"] == 0 and got["blink_f1"] == 1.0 and got["gaze_error"] == 0
    assert got["mouth_corr"] == pytest.approx(1.0) and got["emotion_accuracy"] == 1.0
    off = {**perfect, "head_pose": perfect["head_pose"] + np.array([3.0, -2.0, 0.0]),
           "gaze": perfect["gaze"] + np.array([0.3, 0.4, 0.0, 0.0]), "mouth": -truth["mouth"],
           "blink": 1 - truth["blink"], "emotion": (truth["emotion"].astype(int) + 1) % 8}
    got = reading_errors(off, truth)
    assert got["yaw_mae_deg"] == pytest.approx(3.0) and got["pitch_mae_deg"] == pytest.approx(2.0)
    assert got["gaze_error"] == pytest.approx(0.25)  # 0.5 on the left eye, 0 on the right
    assert got["mouth_corr"] == pytest.approx(-1.0) and got["blink_f1"] == 0.0 and got["emotion_accuracy"] == 0.0


def test_probe_file_round_trip_and_clear_errors(random_probe, probe_file: Path, tmp_path: Path) -> None:
    probe = random_probe
    loaded, info, file = load_probe(probe_file)
    assert file == probe_file and info == {"heldout_accuracy": {"x": 1.0}}
    assert torch.load(probe_file, weights_only=True)["format"] == PROBE_FORMAT == "eartalk-synth-probe/2"
    frames = heldout_clips(1, 0.4, seed=77)[0].frames
    assert np.allclose(loaded.read(frames)["head_pose"], probe.read(frames)["head_pose"], atol=1e-5)
    with pytest.raises(WeightsNotFoundError, match="eartalk probe --out"):
        load_probe(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an eartalk synthetic probe"):
        load_probe(tmp_path / "other.pt")
    torch.save({"format": "eartalk-synth-probe/1", "width": 16, "state_dict": {}, "info": {}}, tmp_path / "old.pt")
    with pytest.raises(InputError, match=r"older probe layout \(eartalk-synth-probe/1.*retrain it with `eartalk probe --out PATH`"):
        load_probe(tmp_path / "old.pt")
    with pytest.raises(InputError, match=r"\(T, 3, H, W\)"):
        probe.read(frames[0])


def test_probe_metrics_are_registered_proxies_that_see_errors(probe_file: Path, monkeypatch) -> None:
    from eartalk.metrics import register_commands, register_metrics
    from eartalk.metrics.probe import ProbeCommand

    assert set(PROBE_METRICS) <= set(register_metrics()) and ProbeCommand in register_commands()
    assert all(m.fidelity == "proxy" and not m.name.startswith(("sync", "fid", "fvd")) for m in PROBE_METRICS)
    clip = heldout_clips(1, 1.0, seed=99)[0]
    truth = VideoSet("truth", [Video(clip.frames, source="a.mp4")])
    same = VideoSet("same", [Video(clip.frames.clone(), source="a.mp4")])
    static = VideoSet("static", [Video(clip.frames[:1].expand(clip.frames.shape[0], -1, -1, -1).clone(), source="a.mp4")])
    options = ProbeOptions(weights=str(probe_file))
    yaw = ProbeHeadPose(options)
    assert yaw.compute(same, truth).value == pytest.approx(0.0, abs=1e-4)
    still = yaw.compute(static, truth)
    assert still.value > 1e-3 and still.fidelity == "proxy"  # other frames read differently
    assert ProbeMouth(options).compute(static, truth).value == pytest.approx(0.0, abs=1e-6)
    assert ProbeMouth(options).compute(same, truth).value == pytest.approx(1.0)
    monkeypatch.delenv("EARTALK_PROBE_WEIGHTS", raising=False)
    monkeypatch.setenv("EARTALK_WEIGHTS_DIR", str(probe_file.parent / "nowhere"))
    monkeypatch.setenv("TORCH_HOME", str(probe_file.parent / "nowhere"))
    skipped = ProbeBlink().compute(same, truth)
    assert skipped.value is None and "eartalk probe --out" in skipped.skipped


def test_probe_command_defaults_are_the_training_defaults(probe_file: Path, capsys) -> None:
    """`eartalk probe --out FILE` without size flags (the class-attribute defaults once crashed it)."""
    import argparse

    from eartalk.metrics.probe import ProbeCommand, ProbeTraining

    parser = argparse.ArgumentParser()
    command = ProbeCommand()
    command.add_arguments(parser)
    args = parser.parse_args(["--out", str(probe_file), "--heldout", "1", "--json"])
    d = ProbeTraining()
    assert (args.identities, args.frames, args.epochs) == (d.identities, d.frames_per_identity, d.epochs)
    assert command.run(args) == 0  # an existing file is only measured
    assert '"heldout_accuracy"' in capsys.readouterr().out
