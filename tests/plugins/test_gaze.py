"""gaze: per-eye 2D gaze from the eyeLook blendshapes or the iris landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.config import structure
from eartalk.core.errors import ConfigError
from eartalk.core.types import Sample
from eartalk.plugins.gaze import Gaze, GazeOptions


class TestGazeConformance(ConditionPluginConformance):
    plugin_class = Gaze

    @pytest.fixture(autouse=True)
    def _real(self, motion_sample):
        self._face = motion_sample.face

    def make_sample(self) -> Sample:
        return Sample(face=self._face.slice(0, 8))


class TestIrisGazeConformance(TestGazeConformance):
    options = GazeOptions(source="iris")


def test_blendshape_and_iris_gaze_agree_on_direction(motion_sample):
    """Two independent measurements (blendshape scores, iris position) move together horizontally."""
    from_scores = Gaze(16).extract(motion_sample).numpy()  # (T, 4)
    from_iris = Gaze(16, GazeOptions(source="iris")).extract(motion_sample).numpy()
    for signal in (from_scores, from_iris):
        assert signal.shape == (motion_sample.num_frames, 4)
        assert np.abs(signal).max() <= 1.0
    for column in (0, 2):  # left_x, right_x
        assert np.corrcoef(from_scores[:, column], from_iris[:, column])[0, 1] > 0.7
    # Both eyes look the same way.
    assert np.corrcoef(from_scores[:, 0], from_scores[:, 2])[0, 1] > 0.8


def test_labels_and_options():
    plugin = Gaze(16)
    assert plugin.values("camera", 1).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    right = plugin.values("right", 1)[0]
    assert float(right[0]) > 0 and float(right[2]) > 0 and float(right[1]) == 0
    assert float(plugin.values("up", 1)[0, 1]) > 0
    torch.testing.assert_close(plugin.values({"left_x": 0.3}, 1), torch.tensor([[0.3, 0.0, 0.0, 0.0]]))
    with pytest.raises(ConfigError, match="source"):
        structure({"source": "pupils"}, GazeOptions)
    with pytest.raises(Exception, match="unknown label"):
        plugin.values("sideways", 1)
    assert torch.isnan(plugin.extract(Sample(num_frames=2))).all()
