"""blink: per-eye closure from the blendshapes, checked against eye landmarks on a real clip."""

from __future__ import annotations

import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.errors import WeightsNotFoundError
from eartalk.core.media.face import ENV_VAR
from eartalk.core.types import Sample
from eartalk.plugins.blink import Blink, BlinkOptions

# Eye landmarks (outer corner, inner corner, two upper-lid, two lower-lid points) of MediaPipe's mesh.
RIGHT_EYE = (33, 133, 160, 158, 144, 153)
LEFT_EYE = (263, 362, 387, 385, 373, 380)


def eye_aspect_ratio(landmarks: torch.Tensor, eye: tuple[int, ...]) -> torch.Tensor:
    """``(T,)`` eye aspect ratio: lid distance over eye width (small when the eye is closed)."""
    outer, inner, up1, up2, low1, low2 = eye
    xy = landmarks[..., :2]
    dist = lambda a, b: (xy[:, a] - xy[:, b]).norm(dim=-1)  # noqa: E731
    return (dist(up1, low1) + dist(up2, low2)) / (2 * dist(outer, inner))


class TestBlinkConformance(ConditionPluginConformance):
    plugin_class = Blink

    @pytest.fixture(autouse=True)
    def _real(self, blink_sample):
        self._face = blink_sample.face

    def make_sample(self) -> Sample:
        return Sample(face=self._face.slice(0, 8))


def test_blink_high_where_eyes_close_low_where_open(blink_sample):
    signal = Blink(16).extract(blink_sample)  # (T, 2)
    assert signal.shape == (blink_sample.num_frames, 2)
    assert float(signal.min()) >= 0.0 and float(signal.max()) <= 1.0
    lm = blink_sample.face.landmarks
    ear = (eye_aspect_ratio(lm, RIGHT_EYE) + eye_aspect_ratio(lm, LEFT_EYE)) / 2  # (T,)
    typical = ear.median()
    closed = ear < 0.45 * typical
    opened = ear > 0.85 * typical
    assert int(closed.sum()) >= 3 and int(opened.sum()) >= 30
    mean = signal.mean(dim=1)
    assert float(mean[closed].min()) > 0.35
    assert float(mean[opened].max()) < 0.3
    assert float(mean[closed].mean()) > 3 * float(mean[opened].mean())


def test_labels_and_gain():
    plugin = Blink(16, BlinkOptions(gain=2.0))
    assert plugin.values("closed", 2).tolist() == [[1.0, 1.0]] * 2
    assert plugin.values("wink_left", 1).tolist() == [[1.0, 0.0]]
    assert plugin.values({"left": 0.5}, 1).tolist() == [[0.5, 0.0]]  # right eye stays open
    with pytest.raises(Exception, match="unknown label"):
        plugin.values("squint", 1)


def test_frames_without_track_run_the_face_pipeline(blink_sample, landmarker_path, monkeypatch):
    frames = blink_sample.frames[:4]  # (4, 3, 128, 128) face crops
    plugin = Blink(16, BlinkOptions(landmarker=str(landmarker_path)))
    sample = Sample(frames=frames)
    signal = plugin.extract(sample)
    assert sample.face is not None and sample.face.num_frames == 4  # the track is kept for other plugins
    assert torch.isfinite(signal).all()
    torch.testing.assert_close(signal, Blink(16).extract(Sample(face=sample.face)))
    # Without a landmarker configured, the error says how to get one.
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(WeightsNotFoundError, match="face_landmarker.task"):
        Blink(16).extract(Sample(frames=frames))
