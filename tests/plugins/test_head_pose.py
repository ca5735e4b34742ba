"""head_pose: angles and translation from MediaPipe's transformation matrix, sign conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.types import Sample
from eartalk.plugins.head_pose import HeadPose, HeadPoseOptions, matrix_to_pose, pose_to_matrix


class TestHeadPoseConformance(ConditionPluginConformance):
    plugin_class = HeadPose

    @pytest.fixture(autouse=True)
    def _real(self, motion_sample):
        self._face = motion_sample.face

    def make_sample(self) -> Sample:
        return Sample(face=self._face.slice(0, 8))


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])


def test_yaw_varies_over_a_moving_clip(motion_sample):
    pose = HeadPose(16).extract(motion_sample)  # (T, 6)
    assert pose.shape == (motion_sample.num_frames, 6)
    assert torch.isfinite(pose).all()
    yaw = pose[:, 0]
    assert float(yaw.max() - yaw.min()) > 12.0  # the subject turns his head
    assert float(pose[:, :3].abs().max()) < 60.0  # plausible angles
    assert bool((pose[:, 5] < -10).all())  # face in front of the camera


def test_sign_conventions_match_the_image(motion_sample, blink_sample):
    """Yaw follows the nose moving to the image right, roll the eye line tilting clockwise."""
    pose = HeadPose(16).extract(motion_sample).numpy()
    lm = motion_sample.face.landmarks.numpy()  # (T, 478, 3), crop coordinates
    nose_offset = lm[:, 1, 0] - (lm[:, 234, 0] + lm[:, 454, 0]) / 2  # nose tip vs cheek midpoint
    assert _corr(pose[:, 0], nose_offset) > 0.8
    # Eye line from the image-left eye corner (33) to the image-right one (263): its angle grows
    # when the head tilts clockwise in the image (image y points down).
    eye_line = np.degrees(np.arctan2(lm[:, 263, 1] - lm[:, 33, 1], lm[:, 263, 0] - lm[:, 33, 0]))
    assert _corr(pose[:, 2], eye_line) > 0.8
    # Pitch (on the clip that nods more): the protruding nose tip rises above the eye line when
    # looking up (image y points down), measured in eye widths.
    pose = HeadPose(16).extract(blink_sample).numpy()
    lm = blink_sample.face.landmarks.numpy()
    eyes_y = (lm[:, 33, 1] + lm[:, 263, 1]) / 2
    nose_up = (eyes_y - lm[:, 1, 1]) / np.abs(lm[:, 263, 0] - lm[:, 33, 0])
    assert _corr(pose[:, 1], nose_up) > 0.7


def test_matrix_decomposition_round_trip():
    pose = torch.tensor([[10.0, -20.0, 30.0, 1.0, 2.0, -30.0], [-40.0, 5.0, -15.0, 0.0, 0.0, -25.0]])
    torch.testing.assert_close(matrix_to_pose(pose_to_matrix(pose)), pose, atol=1e-4, rtol=0)
    # A face turned to the image right: its +z axis points toward +x.
    turned = pose_to_matrix(torch.tensor([[25.0, 0.0, 0.0, 0.0, 0.0, -30.0]]))
    assert float(turned[0, 0, 2]) > 0.4


def test_absent_faces_and_values():
    plugin = HeadPose(16, HeadPoseOptions(neutral_translation=(0.0, 1.0, -40.0)))
    assert plugin.extract(Sample(num_frames=3)).isnan().all()  # no face, no frames -> absent
    frontal = plugin.values("frontal", 4)
    torch.testing.assert_close(frontal, torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -40.0]).expand(4, -1))
    turning = plugin.values({"yaw": [0.0, 10.0, 20.0]}, 3)
    assert turning[:, 0].tolist() == [0.0, 10.0, 20.0] and turning[:, 5].tolist() == [-40.0] * 3
    with pytest.raises(Exception, match="unknown label"):
        plugin.values("sideways", 2)


def test_values_from_a_driving_video(real_dir, landmarker_path, monkeypatch):
    """A driving video is decoded, face-tracked and re-extracted; past its end the pose is absent."""
    from eartalk.core.media.face import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(landmarker_path))
    path = real_dir / "video" / "V-Express__RD_Radio10_0_clip_0.mp4"  # 51 frames at 25 fps
    pose = HeadPose(16).values(path, 60)
    assert pose.shape == (60, 6)
    assert torch.isfinite(pose[:51]).all() and pose[51:].isnan().all()
    assert float(pose[:51, :3].abs().max()) < 30.0  # a frontal speaker
