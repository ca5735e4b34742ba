"""The synthetic talking head: its ground truth must agree with what the renderer draws."""

from __future__ import annotations

import time

import attrs
import numpy as np
import pytest
import torch

from eartalk.core.data.synth import (
    EMOTIONS,
    MOUTH_INNER,
    SCLERA,
    Controls,
    Identity,
    render_frames,
    synthesize_clip,
    synthesize_speech,
)
from eartalk.core.types import SAMPLES_PER_FRAME

R = 96
LIPS, BROWS, IRIS = (0.0, 0.8, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 1.0)


@pytest.fixture()
def identity() -> Identity:
    """An identity with unique part colours, so parts can be found by colour."""
    base = Identity.sample(np.random.default_rng(0))
    return attrs.evolve(
        base, skin=(0.8, 0.6, 0.5), hair=(0.1, 0.1, 0.1), lips=LIPS, brows=BROWS, iris=IRIS,
        background=(0.2, 0.5, 0.2), background_bottom=(0.2, 0.5, 0.2), clothes=(0.3, 0.3, 0.6),
        hair_volume=0.3, eye_size=1.0,
    )


def mask(frames: torch.Tensor, colour: tuple[float, float, float], tol: float = 40.0) -> np.ndarray:
    """(T, H, W) bool: pixels within ``tol`` (0-255 units) of ``colour``."""
    target = torch.tensor(colour)[None, :, None, None] * 255
    return ((frames.float() - target).norm(dim=1) < tol).numpy()


def centroid(m: np.ndarray) -> np.ndarray:
    """(T, 2) x, y centroid of each frame's mask."""
    ys, xs = np.mgrid[: m.shape[1], : m.shape[2]]
    n = m.sum(axis=(1, 2)).clip(min=1)
    return np.stack([(m * xs).sum(axis=(1, 2)) / n, (m * ys).sum(axis=(1, 2)) / n], axis=1)


def test_silence_means_closed_mouth_and_quiet_audio() -> None:
    rng = np.random.default_rng(3)
    identity = Identity.sample(rng)
    frames = 150
    audio, mouth, vad, syllables = synthesize_speech(frames, identity, rng)
    assert audio.shape == (frames * SAMPLES_PER_FRAME,) and audio.dtype == np.float32
    assert mouth.shape == (frames, 2) and vad.shape == (frames, 1)
    silent, speaking = vad[:, 0] == 0, vad[:, 0] == 1
    assert silent.sum() >= 5 and speaking.sum() >= 50  # pauses and speech both occur
    rms = np.sqrt((audio.reshape(frames, -1) ** 2).mean(axis=1))
    np.testing.assert_array_equal(mouth[silent, 0], 0.0)  # silence -> mouth closed
    np.testing.assert_allclose(mouth[silent, 1], 0.5)  # rest width
    assert rms[silent].max() < 1e-3 < np.median(rms[mouth[:, 0] > 0.3])
    assert np.all((mouth >= 0) & (mouth <= 1))
    assert {s["vowel"] for s in syllables} <= set("aeiou")


def test_vowels_have_their_formants() -> None:
    """Open /a/ (F1 800 Hz) has more energy near 800 Hz than close /i/ (F1 300 Hz), and vice versa."""
    rng = np.random.default_rng(5)
    identity = attrs.evolve(Identity.sample(rng), f0=110.0)
    audio, _, _, syllables = synthesize_speech(500, identity, rng)
    ratios: dict[str, list[float]] = {"a": [], "i": []}
    for syl in syllables:
        if syl["vowel"] in ratios and syl["stop"] - syl["start"] > 0.15:
            a, b = int(syl["start"] * 16000) + 800, int(syl["stop"] * 16000) - 800
            spectrum = np.abs(np.fft.rfft(audio[a:b] * np.hanning(b - a))) ** 2
            freqs = np.fft.rfftfreq(b - a, 1 / 16000)
            high = spectrum[(freqs > 650) & (freqs < 950)].sum()
            low = spectrum[(freqs > 200) & (freqs < 400)].sum()
            ratios[syl["vowel"]].append(high / low)
    assert ratios["a"] and ratios["i"]
    assert min(ratios["a"]) > max(ratios["i"])


def test_mouth_area_grows_with_opening(identity: Identity) -> None:
    controls = Controls.neutral(5)
    controls.mouth[:, 0] = [0.0, 0.25, 0.5, 0.75, 1.0]
    frames, _ = render_frames(identity, controls, R)
    inner = mask(frames, MOUTH_INNER, tol=30).sum(axis=(1, 2))
    assert inner[0] == 0
    assert np.all(np.diff(inner) > 0), inner
    lips = mask(frames, LIPS).sum(axis=(1, 2))
    assert lips[0] > 10  # a closed mouth still shows its lips
    # Wider mouth (same opening) -> wider lip mask.
    controls = Controls.neutral(2)
    controls.mouth[:] = [[0.5, 0.0], [0.5, 1.0]]
    frames, _ = render_frames(identity, controls, R)
    widths = [np.ptp(np.nonzero(m.any(axis=0))[0]) for m in mask(frames, LIPS)]
    assert widths[1] > widths[0] * 1.3


def test_blink_closes_only_that_eye(identity: Identity) -> None:
    controls = Controls.neutral(4)
    controls.blink[:, 0] = [0.0, 0.3, 0.6, 1.0]  # subject's left eye = image right
    frames, keypoints = render_frames(identity, controls, R)
    eyes = mask(frames, SCLERA) | mask(frames, IRIS, tol=60)  # (mouth closed: no teeth)
    right_half = eyes[:, :, R // 2 :].sum(axis=(1, 2))  # subject's left eye
    left_half = eyes[:, :, : R // 2].sum(axis=(1, 2))
    assert np.all(np.diff(right_half) < 0) and right_half[-1] <= 2, right_half
    assert np.ptp(left_half) <= 2 and left_half[0] > 20
    assert keypoints[0, 1, 0] > 0.5 > keypoints[0, 2, 0]  # left eye keypoint is on the image right


def test_head_pose_moves_features_as_documented(identity: Identity) -> None:
    controls = Controls.neutral(7)
    controls.head_pose[:, 0] = [-20, 0, 20, 0, 0, 0, 0]  # yaw
    controls.head_pose[:, 1] = [0, 0, 0, -15, 15, 0, 0]  # pitch
    controls.head_pose[:, 2] = [0, 0, 0, 0, 0, -15, 15]  # roll
    frames, keypoints = render_frames(identity, controls, R)
    c = centroid(mask(frames, SCLERA))
    assert c[0, 0] < c[1, 0] - 3 < c[2, 0] - 6  # yaw positive: face turns to image right
    assert c[4, 1] < c[3, 1] - 3  # pitch positive: looks up, features move up
    mouth_c = centroid(mask(frames, LIPS))
    assert mouth_c[0, 0] < mouth_c[1, 0] < mouth_c[2, 0]
    # Roll positive = clockwise: the eye on the image right goes down, the other one up.
    right_eye, left_eye = keypoints[6, 1], keypoints[6, 2]
    assert right_eye[1] > left_eye[1] + 0.02
    assert keypoints[5, 1, 1] < keypoints[5, 2, 1] - 0.02
    # Translation: tx moves right, ty moves up, tz closer makes the face bigger.
    controls = Controls.neutral(3)
    controls.head_pose[1, 3] = 3.0
    controls.head_pose[2, 5] = -24.0
    frames, keypoints = render_frames(identity, controls, R)
    assert keypoints[1, 0, 0] > keypoints[0, 0, 0] + 0.05
    spread = np.abs(keypoints[:, 1, 0] - keypoints[:, 2, 0])
    assert spread[2] > spread[0] * 1.15


def test_gaze_moves_the_iris(identity: Identity) -> None:
    controls = Controls.neutral(4)
    controls.gaze[:] = [[-1, 0, -1, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, -1, 0, -1]]
    frames, _ = render_frames(identity, controls, R)
    c = centroid(mask(frames, IRIS, tol=60))
    assert c[1, 0] > c[0, 0] + 2  # x positive = image right
    assert c[2, 1] < c[3, 1] - 1  # y positive = up


def test_emotion_moves_corners_and_brows(identity: Identity) -> None:
    controls = Controls.neutral(4)
    names = ["happy", "sad", "surprised", "angry"]
    controls.emotion[:] = [[EMOTIONS.index(n), 3] for n in names]
    frames, _ = render_frames(identity, controls, R)
    lips = mask(frames, LIPS)

    def corner_lift(m: np.ndarray) -> float:
        cols = np.nonzero(m.any(axis=0))[0]
        ys = np.arange(m.shape[0])[:, None]
        col_y = (m * ys).sum(axis=0) / m.sum(axis=0).clip(min=1)
        edge = np.concatenate([cols[:3], cols[-3:]])
        middle = cols[len(cols) // 2 - 1 : len(cols) // 2 + 2]
        return float(col_y[middle].mean() - col_y[edge].mean())  # > 0: corners above the centre

    assert corner_lift(lips[0]) > 1.0 > -1.0 > corner_lift(lips[1])
    brows_y = centroid(mask(frames, BROWS))[:, 1]
    assert brows_y[2] < brows_y[3] - 2  # surprised brows are higher than angry ones
    # Intensity scales the effect.
    controls = Controls.neutral(2)
    controls.emotion[:] = [[EMOTIONS.index("happy"), 1], [EMOTIONS.index("happy"), 3]]
    frames, _ = render_frames(identity, controls, R)
    weak, strong = (corner_lift(m) for m in mask(frames, LIPS))
    assert strong > weak > 0


def test_clip_ground_truth_is_consistent_and_fast() -> None:
    render_frames(Identity.sample(np.random.default_rng(0)), Controls.neutral(2), 32)  # torch warm-up
    start = time.process_time()  # CPU time of this process (all threads): robust to a busy machine
    clip = synthesize_clip(seed=11, seconds=10.0, resolution=128)
    elapsed = time.process_time() - start
    assert elapsed < 6.0, f"10 s at 128x128 took {elapsed:.1f} s of CPU"
    T = 250
    assert clip.frames.shape == (T, 3, 128, 128) and clip.frames.dtype == torch.uint8
    assert clip.audio.shape == (T * SAMPLES_PER_FRAME,)
    signals = clip.signals()
    assert {k: v.shape for k, v in signals.items()} == {
        "head_pose": (T, 6), "blink": (T, 2), "gaze": (T, 4), "emotion": (T, 2), "voice_activity": (T, 1)
    }
    assert clip.metadata["emotion"] in EMOTIONS and clip.metadata["intensity"] in (1, 2, 3)
    assert np.all(signals["emotion"][:, 0] == EMOTIONS.index(clip.metadata["emotion"]))
    assert 0 < signals["blink"].max() <= 1 and np.abs(signals["gaze"]).max() <= 1
    assert np.abs(signals["head_pose"][:, :3]).max() < 30
    # Silent frames show a closed mouth: no mouth-interior pixels in them.
    inner = mask(clip.frames, MOUTH_INNER, tol=30).sum(axis=(1, 2))
    silent = clip.voice_activity[:, 0] == 0
    assert inner[silent].max() == 0 and inner[clip.controls.mouth[:, 0] > 0.5].min() > 0
    # Same seed, same clip.
    again = synthesize_clip(seed=11, seconds=0.4, resolution=32)
    assert torch.equal(again.frames, synthesize_clip(seed=11, seconds=0.4, resolution=32).frames)


def test_emotion_segments() -> None:
    clip = synthesize_clip(seed=2, seconds=2.0, resolution=32, emotion_segments=3)
    parts = clip.metadata["emotion_segments"]
    assert [(p["start"], p["stop"]) for p in parts] == [(0, 17), (17, 33), (33, 50)]
    for p in parts:
        rows = clip.controls.emotion[p["start"] : p["stop"]]
        assert np.all(rows[:, 0] == EMOTIONS.index(p["emotion"])) and np.all(rows[:, 1] == p["intensity"])


def test_motion_hz_moves_the_head_faster_and_keeps_the_person() -> None:
    """Faster head motion for short training clips: more pose change within a second, same identity and voice."""
    calm = [synthesize_clip(seed=s, seconds=1.0, resolution=32) for s in range(12)]
    fast = [synthesize_clip(seed=s, seconds=1.0, resolution=32, motion_hz=1.5) for s in range(12)]

    def spread(clip):  # mean |yaw_i - yaw_j| within the clip
        yaw = clip.controls.head_pose[:, 0]
        return np.abs(yaw[:, None] - yaw[None]).mean()

    assert np.mean([spread(c) for c in fast]) > 1.5 * np.mean([spread(c) for c in calm])
    for a, b in zip(calm, fast, strict=True):
        assert a.metadata["identity"] == b.metadata["identity"]
        assert torch.equal(a.audio, b.audio)
