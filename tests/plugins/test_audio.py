"""audio: one windowed row per video frame, exact lookahead, streaming rows, pyannote backend."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.config import structure
from eartalk.core.errors import ConfigError, WeightsNotFoundError
from eartalk.core.types import SAMPLES_PER_FRAME, Sample
from eartalk.plugins.audio import AudioCondition, AudioOptions, AudioStream

SMALL_PYANNOTE = AudioOptions(backend="pyannote", context=1, lookahead=1, slots=1, hidden=32)


def noise_sample(frames: int = 8, seed: int = 0) -> Sample:
    gen = torch.Generator().manual_seed(seed)
    return Sample(audio=torch.randn(frames * SAMPLES_PER_FRAME, generator=gen) * 0.1)


class TestAudioConformance(ConditionPluginConformance):
    plugin_class = AudioCondition
    registered = True

    def make_sample(self) -> Sample:
        return noise_sample()


class TestPyannoteAudioConformance(ConditionPluginConformance):
    plugin_class = AudioCondition
    options = SMALL_PYANNOTE

    def make_sample(self) -> Sample:
        return noise_sample()


def test_one_row_per_video_frame(real_dir):
    from eartalk.core.media.io import read_video

    clip = read_video(real_dir / "video" / "V-Express__RD_Radio10_0_clip_0.mp4", max_frames=30)
    plugin = AudioCondition(16)
    rows = plugin.extract(Sample(frames=clip.frames, audio=clip.audio))
    assert rows.shape == (clip.num_frames, 7 * 4 * 80)  # context 4 + 1 + lookahead 2 frames, 4 mel frames each
    assert torch.isfinite(rows).all()
    assert plugin.lookahead_frames == 2
    # A short or long audio track still gives exactly one row per frame.
    short = Sample(audio=clip.audio[: 10 * SAMPLES_PER_FRAME + 17], num_frames=clip.num_frames)
    assert plugin.extract(short).shape[0] == clip.num_frames


@pytest.mark.parametrize("backend", ["logmel", "pyannote"])
def test_rows_see_exactly_the_window(backend):
    """Row t reads frames t-context .. t+lookahead and nothing else (the lookahead is the latency)."""
    options = AudioOptions(backend=backend, context=2, lookahead=2, slots=1, hidden=16)
    plugin = AudioCondition(8, options)
    base = noise_sample(frames=20)
    rows = plugin.extract(base)
    changed_audio = base.audio.clone()
    changed_audio[12 * SAMPLES_PER_FRAME : 13 * SAMPLES_PER_FRAME] = 0.0  # frame 12 goes silent
    changed = plugin.extract(Sample(audio=changed_audio))
    differs = (changed - rows).abs().amax(dim=1) > 1e-6  # (T,)
    # Rows 12-2 .. 12+2 hold frame 12. With log-mels, frame 13's first 25 ms window also reads the
    # last 15 ms of frame 12, which reaches row 15 through its past context. No row before 10
    # sees frame 12: a row never needs more than `lookahead` frames of future audio.
    expected = [10, 11, 12, 13, 14] + ([15] if backend == "logmel" else [])
    assert differs.nonzero().flatten().tolist() == expected


def test_silence_and_missing_audio():
    plugin = AudioCondition(8)
    silent = plugin.extract(Sample(audio=torch.zeros(5 * SAMPLES_PER_FRAME)))
    assert torch.equal(silent, plugin.pad_block().repeat(5, 7))  # silence = the padding rows
    assert plugin.extract(Sample(num_frames=4)).isnan().all()


@pytest.mark.parametrize("backend", ["logmel", "pyannote"])
def test_stream_rows_equal_offline_rows(speech_16k, backend):
    options = AudioOptions(backend=backend, n_mels=40, slots=1, hidden=16)
    plugin = AudioCondition(8, options)
    frames = 60
    audio = speech_16k[: frames * SAMPLES_PER_FRAME - 100]  # ends inside the last frame
    offline = plugin.extract(Sample(audio=audio, num_frames=frames))
    stream = AudioStream(plugin)
    rows, ready_after = [], []
    rng = np.random.default_rng(0)
    start = 0
    while start < audio.shape[0]:
        size = int(rng.integers(50, 1500))  # microphone chunks of any size
        rows += stream.push(audio[start : start + size])
        start += size
        ready_after.append((min(start, audio.shape[0]), len(rows)))
    for received, count in ready_after:  # a row waits for `lookahead` frames of future audio
        assert count == max(0, received // SAMPLES_PER_FRAME - options.lookahead)
    rows += stream.flush()
    assert len(rows) == frames
    torch.testing.assert_close(torch.stack(rows), offline, atol=1e-4, rtol=1e-4)


def test_values_from_an_audio_file(tmp_path, speech_16k):
    path = tmp_path / "speech.wav"
    sf.write(path, speech_16k[: 20 * SAMPLES_PER_FRAME].numpy(), 16000)
    plugin = AudioCondition(8)
    rows = plugin.values(path, 25)  # 5 frames longer than the file: silence rows there
    offline = plugin.extract(Sample(audio=speech_16k[: 20 * SAMPLES_PER_FRAME], num_frames=25))
    torch.testing.assert_close(rows, offline, atol=1e-4, rtol=1e-4)


def test_pyannote_encoder_from_a_local_checkpoint(pyannote_checkpoint):
    path, source = pyannote_checkpoint
    options = AudioOptions(backend="pyannote", checkpoint=str(path), context=1, lookahead=1, slots=1, hidden=16)
    plugin = AudioCondition(8, options)
    for name, tensor in source.sincnet.state_dict().items():
        torch.testing.assert_close(plugin.sincnet.state_dict()[name], tensor)
    # The encoder is trainable: gradients reach SincNet's filters.
    signal = plugin.extract(noise_sample(frames=4)).unsqueeze(0)  # (1, 4, 1920)
    plugin(signal).square().sum().backward()
    grads = [p.grad for p in plugin.sincnet.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_option_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="missing.ckpt"):
        AudioCondition(8, AudioOptions(backend="pyannote", checkpoint=str(tmp_path / "missing.ckpt")))
    not_a_checkpoint = tmp_path / "random.ckpt"
    torch.save({"weights": torch.zeros(2)}, not_a_checkpoint)
    with pytest.raises(ConfigError, match="not a pyannote.audio model checkpoint"):
        AudioCondition(8, AudioOptions(backend="pyannote", checkpoint=str(not_a_checkpoint)))
    with pytest.raises(ConfigError, match="backend"):
        structure({"backend": "wav2vec"}, AudioOptions)
    with pytest.raises(ConfigError, match="only used by backend 'pyannote'"):
        structure({"checkpoint": "x.ckpt"}, AudioOptions)
    with pytest.raises(ConfigError, match="lookahead"):
        structure({"lookahead": -1}, AudioOptions)
