"""The plugin's own tests: eartalk's conformance kit, as docs/plugins.md shows."""

import torch
from eartalk_head_scale import HeadScale, HeadScaleOptions

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.types import FaceTrack, Sample


def fake_track(frames: int = 6, width: float = 0.5) -> FaceTrack:
    grid = torch.rand(frames, 478, 3)
    landmarks = 0.5 + (grid - 0.5) * torch.tensor([width, width * 1.2, 0.1])
    present = torch.ones(frames, dtype=torch.bool)
    present[4] = False
    landmarks[4] = float("nan")
    return FaceTrack(landmarks=landmarks, blendshapes=torch.zeros(frames, 52),
                     matrices=torch.eye(4).repeat(frames, 1, 1), present=present)


class TestHeadScale(ConditionPluginConformance):
    plugin_class = HeadScale
    registered = True

    def make_sample(self) -> Sample:
        return Sample(face=fake_track())


class TestHeadScaleHeight(TestHeadScale):
    options = HeadScaleOptions(measure="height")


def test_scale_follows_the_landmarks() -> None:
    plugin = HeadScale(16)
    small, large = plugin.extract(Sample(face=fake_track(width=0.3))), plugin.extract(Sample(face=fake_track(width=0.6)))
    assert torch.isnan(small[4]).all() and (large[:4] > small[:4] + 0.2).all()
