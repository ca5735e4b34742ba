import pytest
import torch

from eartalk.core.registry import get_registry
from eartalk.core.types import Sample
from eartalk.metrics.control import ControlSkipped, binary_f1, control_error, control_fidelity


def test_errors_on_constructed_signals():
    commanded = torch.zeros(10, 6)
    commanded[:, 0] = 10.0
    generated = commanded.clone()
    generated[:, 0] += 5.0  # yaw off by 5 degrees
    generated[3] = float("nan")  # a frame without a face is ignored
    err = control_error("head_pose", commanded, generated)
    assert err["yaw_mae_deg"] == pytest.approx(5.0) and err["pitch_mae_deg"] == 0.0
    assert err["mae_deg"] == pytest.approx(5.0 / 3) and err["frames"] == 9

    blink_cmd = torch.tensor([[0.9, 0.9], [0.1, 0.1], [0.8, 0.2], [0.1, 0.1]])
    blink_gen = torch.tensor([[0.7, 0.6], [0.6, 0.1], [0.1, 0.2], [0.1, 0.1]])
    # closed: commanded {0L, 0R, 2L}, generated {0L, 0R, 1L}: tp 2, fp 1, fn 1 -> F1 = 4 / 6
    assert control_error("blink", blink_cmd, blink_gen)["f1"] == pytest.approx(4 / 6)
    assert binary_f1(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0

    gaze = torch.zeros(4, 4)
    moved = gaze.clone()
    moved[:, 0:2] = torch.tensor([0.3, 0.4])  # left eye off by 0.5, right exact
    assert control_error("gaze", gaze, moved)["error"] == pytest.approx(0.25)


@pytest.fixture(scope="module")
def clip_sample(real_tracks, default_clips):
    audio, track, frames = real_tracks.get(default_clips[0])
    n = frames.shape[0]
    return Sample(frames=frames, audio=audio[: n * 640], face=track.slice(0, n), metadata={"source": default_clips[0]})


@pytest.mark.parametrize("control", ["head_pose", "blink", "gaze", "expression"])
def test_real_clip_against_itself_is_near_zero(control, clip_sample, real_tracks, default_clips):
    plugin = get_registry().condition(control)(d_model=8)
    commanded = plugin.extract(clip_sample)
    errors = control_fidelity(plugin, commanded, clip_sample)
    assert errors["frames"] == clip_sample.num_frames
    if control == "blink":
        assert errors["f1"] == 1.0 and errors["mae"] < 1e-6
    else:
        key = {"head_pose": "mae_deg", "gaze": "error", "expression": "mae"}[control]
        assert errors[key] < 1e-5
    # and against another person's clip the error is clearly not zero
    _, other_track, other_frames = real_tracks.get(default_clips[2])
    other = Sample(frames=other_frames, face=other_track.slice(0, other_frames.shape[0]))
    other_errors = control_fidelity(plugin, commanded, other)
    if control == "head_pose":
        assert other_errors["mae_deg"] > 1.0
    elif control in ("gaze", "expression"):
        key = "error" if control == "gaze" else "mae"
        assert other_errors[key] > 1e-3


def test_emotion_without_classifier_is_skipped_with_reason(clip_sample):
    plugin = get_registry().condition("emotion")(d_model=8)
    with pytest.raises(ControlSkipped, match="no emotion classifier"):
        control_fidelity(plugin, torch.zeros(clip_sample.num_frames, 2), clip_sample)
