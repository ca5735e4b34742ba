"""emotion: MEAD labels from metadata, file naming or a user value; embedding tokenizer."""

from __future__ import annotations

import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.errors import ConfigError, InputError
from eartalk.core.types import Sample
from eartalk.plugins.emotion import EMOTIONS, Emotion, EmotionOptions, parse_mead_path


class TestEmotionConformance(ConditionPluginConformance):
    plugin_class = Emotion

    def make_sample(self) -> Sample:
        return Sample(metadata={"emotion": "surprised", "intensity": 3}, num_frames=6)


def test_labels_from_metadata_and_mead_paths():
    plugin = Emotion(16)
    row = plugin.extract(Sample(metadata={"emotion": "sad", "intensity": 3}, num_frames=4))
    assert row.tolist() == [[float(EMOTIONS.index("sad")), 3.0]] * 4
    mead = Sample(metadata={"source": "/data/MEAD/M003/video/front/happy/level_2/001.mp4"}, num_frames=2)
    assert plugin.extract(mead).tolist() == [[4.0, 2.0]] * 2
    assert plugin.extract(Sample(metadata={"emotion": "sadness"}, num_frames=1)).tolist() == [[6.0, 2.0]]
    assert plugin.extract(Sample(metadata={"emotion": "neutral", "intensity": 3}, num_frames=1)).tolist() == [[5.0, 1.0]]
    unknown = plugin.extract(Sample(metadata={"source": "/videos/interview.mp4"}, num_frames=3))
    assert unknown.shape == (3, 2) and unknown.isnan().all()
    assert parse_mead_path("W015/front/contempt/level_1/020.mp4") == (1, 1)
    assert parse_mead_path("happy_level_2.mp4") is None


def test_user_values():
    plugin = Emotion(16, EmotionOptions(default_intensity=1))
    assert plugin.values("happy", 2).tolist() == [[4.0, 1.0]] * 2
    assert plugin.values("angry:3", 1).tolist() == [[0.0, 3.0]]
    assert plugin.values({"emotion": "sad", "intensity": 3}, 1).tolist() == [[6.0, 3.0]]
    changing = plugin.values({"emotion": ["happy", "happy", "fear"], "intensity": 2}, 4)
    assert changing[:3].tolist() == [[4.0, 2.0], [4.0, 2.0], [3.0, 2.0]] and changing[3].isnan().all()
    with pytest.raises(InputError, match="unknown emotion 'bored'"):
        plugin.values("bored", 1)
    with pytest.raises(InputError, match="intensity"):
        plugin.values({"emotion": "sad", "intensity": 5}, 1)
    with pytest.raises(ConfigError, match="default_intensity"):
        EmotionOptions(default_intensity=4)


def test_driving_mead_clip_gives_its_label(tmp_path):
    clip = tmp_path / "M003" / "front" / "disgusted" / "level_3" / "001.mp4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"not read")
    assert Emotion(16).values(clip, 3).tolist() == [[2.0, 3.0]] * 3
    other = tmp_path / "talk.mp4"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="cannot tell the emotion"):
        Emotion(16).values(other, 3)


def test_each_emotion_and_intensity_has_its_own_token():
    plugin = Emotion(16).eval()
    rows = torch.tensor([[e, i] for e in range(8) for i in (1, 2, 3)], dtype=torch.float32)  # (24, 2)
    with torch.no_grad():
        tokens = plugin(rows[None])[0, :, 0]  # (24, D)
    distances = torch.cdist(tokens, tokens) + torch.eye(24) * 1e3
    assert float(distances.min()) > 1e-3
