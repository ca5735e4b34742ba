"""expression: the 52 blendshapes or a configured subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.conditions.stack import ConditionSpec, build_plugins
from eartalk.core.errors import ConfigError, InputError
from eartalk.core.media.face import BLENDSHAPE_NAMES
from eartalk.core.types import FaceTrack, Sample
from eartalk.plugins.expression import MOUTH_BLENDSHAPES, Expression, ExpressionOptions


class TestExpressionConformance(ConditionPluginConformance):
    plugin_class = Expression

    @pytest.fixture(autouse=True)
    def _real(self, blink_sample):
        self._face = blink_sample.face

    def make_sample(self) -> Sample:
        return Sample(face=self._face.slice(0, 8))


class TestExpressionSubsetConformance(TestExpressionConformance):
    options = ExpressionOptions(names=("jawOpen", "mouthSmileLeft", "mouthSmileRight"))


def test_mouth_group_is_off_by_default_and_subset_by_name(blink_sample):
    default = Expression(16)
    assert "jawOpen" not in default.columns and not set(default.columns) & set(MOUTH_BLENDSHAPES)
    assert default.signal_dim == 52 - len(MOUTH_BLENDSHAPES) == 24
    full = Expression(16, ExpressionOptions(mouth=True))
    assert full.columns == list(BLENDSHAPE_NAMES) and full.signal_dim == 52
    signal = full.extract(blink_sample)
    torch.testing.assert_close(signal, blink_sample.face.blendshapes)
    subset = Expression(16, ExpressionOptions(names=("mouthSmileRight", "jawOpen")))
    picked = subset.extract(blink_sample)
    assert subset.columns == ["mouthSmileRight", "jawOpen"]
    torch.testing.assert_close(picked[:, 1], signal[:, BLENDSHAPE_NAMES.index("jawOpen")])


def test_default_expression_carries_no_mouth_information(blink_sample):
    """Scrambling the mouth/jaw blendshapes of a track leaves the default signal unchanged (no lip
    shortcut in training); with ``mouth: true`` the signal follows them."""
    face = blink_sample.face
    scrambled = face.blendshapes.clone()
    cols = [BLENDSHAPE_NAMES.index(n) for n in MOUTH_BLENDSHAPES]
    scrambled[:, cols] = torch.rand(scrambled.shape[0], len(cols), generator=torch.Generator().manual_seed(0))
    other = Sample(face=FaceTrack(face.landmarks, scrambled, face.matrices, face.present, list(face.blendshape_names)))
    default, with_mouth = Expression(16), Expression(16, ExpressionOptions(mouth=True))
    torch.testing.assert_close(default.extract(other), default.extract(blink_sample))
    assert not torch.allclose(with_mouth.extract(other), with_mouth.extract(blink_sample))
    # every blendshape outside the mouth group is still there
    assert set(default.columns) | set(MOUTH_BLENDSHAPES) == set(BLENDSHAPE_NAMES)


def test_jaw_open_follows_the_mouth(blink_sample):
    """jawOpen rises with the lip gap measured on the landmarks (a speaking clip)."""
    jaw = Expression(16, ExpressionOptions(names=("jawOpen",))).extract(blink_sample)[:, 0].numpy()
    lm = blink_sample.face.landmarks.numpy()
    gap = (lm[:, 14, 1] - lm[:, 13, 1]) / (lm[:, 152, 1] - lm[:, 10, 1])  # inner lips over face height
    assert np.corrcoef(jaw, gap)[0, 1] > 0.7


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"jawOpn.*did you mean 'jawOpen'"):
        build_plugins([ConditionSpec("expression", {"names": ["jawOpn"]})], d_model=8, source="cfg.yaml")
    with pytest.raises(ConfigError, match="empty"):
        ExpressionOptions(names=())


def test_partial_values_keep_other_blendshapes_neutral():
    plugin = Expression(16, ExpressionOptions(names=("_neutral", "jawOpen", "mouthSmileLeft")))
    torch.testing.assert_close(plugin.values({"jawOpen": 0.7}, 2), torch.tensor([[1.0, 0.7, 0.0]] * 2))
    assert plugin.values("neutral", 1).tolist() == [[1.0, 0.0, 0.0]]
    with pytest.raises(InputError, match="unknown value keys"):
        plugin.values({"smile": 1.0}, 1)
