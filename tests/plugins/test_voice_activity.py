"""voice_activity: energy detector with hysteresis, or a pyannote segmentation checkpoint."""

from __future__ import annotations

import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.errors import WeightsNotFoundError
from eartalk.core.types import SAMPLES_PER_FRAME, Sample
from eartalk.plugins.voice_activity import VoiceActivity, VoiceActivityOptions


class TestVoiceActivityConformance(ConditionPluginConformance):
    plugin_class = VoiceActivity

    def make_sample(self) -> Sample:
        gen = torch.Generator().manual_seed(0)
        return Sample(audio=torch.randn(8 * SAMPLES_PER_FRAME, generator=gen) * 0.1)


def _silence(frames: int) -> torch.Tensor:
    return torch.zeros(frames * SAMPLES_PER_FRAME)


def test_energy_detector_on_speech_between_silences(speech_16k):
    speech = speech_16k[: 100 * SAMPLES_PER_FRAME]
    audio = torch.cat([_silence(30), speech, _silence(30)])  # frames 30-129 are speech
    plugin = VoiceActivity(8)
    assert plugin.detector == "energy"
    speaking = plugin.extract(Sample(audio=audio))[:, 0]
    assert speaking.shape == (160,)
    assert set(speaking.unique().tolist()) <= {0.0, 1.0}
    assert float(speaking[:30].max()) == 0.0 and float(speaking[130:].max()) == 0.0
    assert 0.5 < float(speaking[30:130].mean()) <= 1.0


def test_hysteresis_bridges_short_pauses():
    tone = 0.1 * torch.sin(torch.arange(SAMPLES_PER_FRAME) * 0.3)  # about -23 dBFS
    frames = [tone] * 10 + [tone * 0.02] * 3 + [tone] * 10 + [tone * 0.001] * 10  # a 3-frame dip
    speaking = VoiceActivity(8, VoiceActivityOptions(hangover=4)).extract(Sample(audio=torch.cat(frames)))[:, 0]
    assert float(speaking[:23].min()) == 1.0  # the short dip stays "speaking"
    assert float(speaking[-5:].max()) == 0.0  # a long pause ends it
    no_hang = VoiceActivity(8, VoiceActivityOptions(hangover=0)).extract(Sample(audio=torch.cat(frames)))[:, 0]
    assert float(no_hang[10:13].max()) == 0.0


def test_live_detector_frame_by_frame_agrees_with_the_offline_one(speech_16k):
    """The live detector sees one frame at a time (its floor from the past only) and still finds
    the speech and the pauses around it; digital silence is 0 from the first frame."""
    audio = torch.cat([_silence(30), speech_16k[: 100 * SAMPLES_PER_FRAME], _silence(40)])
    plugin = VoiceActivity(8)
    offline = plugin.extract(Sample(audio=audio))[:, 0].numpy()
    live_detector = plugin.live_detector()
    live = [live_detector.push(frame) for frame in audio.reshape(-1, SAMPLES_PER_FRAME)]
    assert max(live[:30]) == 0.0 and max(live[-30:]) == 0.0
    assert (sum(a == b for a, b in zip(live, offline, strict=True)) / len(live)) >= 0.9
    speech_first = VoiceActivity(8).live_detector()  # no history yet: the fixed thresholds decide
    assert speech_first.push(torch.full((SAMPLES_PER_FRAME,), 0.1)) == 1.0  # -20 dBFS


def test_silence_and_missing_audio():
    plugin = VoiceActivity(8)
    assert plugin.extract(Sample(audio=_silence(12))).eq(0).all()
    assert plugin.extract(Sample(num_frames=3)).isnan().all()
    assert plugin.values("listening", 2).tolist() == [[0.0], [0.0]]
    assert plugin.values("speaking", 1).tolist() == [[1.0]]


@pytest.mark.parametrize("fixture", ["pyannote_checkpoint", "pyannote_powerset_checkpoint"])
def test_pyannote_segmentation_checkpoint(request, fixture, speech_16k):
    path, _ = request.getfixturevalue(fixture)
    plugin = VoiceActivity(8, VoiceActivityOptions(checkpoint=str(path)))
    assert plugin.detector == "pyannote"
    assert not any("segmentation" in name for name in plugin.state_dict())  # not part of the plugin's weights
    audio = torch.cat([speech_16k[: 60 * SAMPLES_PER_FRAME], _silence(20)])
    speaking = plugin.extract(Sample(audio=audio))[:, 0]
    assert speaking.shape == (80,)
    assert float(speaking.min()) >= 0.0 and float(speaking.max()) <= 1.0
    assert float(speaking[60:].max()) == 0.0  # digital silence is never speech


def test_missing_checkpoint(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere.bin"):
        VoiceActivity(8, VoiceActivityOptions(checkpoint=str(tmp_path / "nowhere.bin")))
