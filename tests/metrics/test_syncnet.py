import numpy as np
import pytest
import torch

from eartalk.core.errors import WeightsNotFoundError
from eartalk.metrics.syncnet import (
    SyncNet,
    SyncScore,
    load_syncnet,
    mfcc,
    sync_curve,
    sync_scores,
    syncnet_inputs,
)


def shifted_embeddings(n: int, shift: int, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Video embeddings V and audio embeddings A with A[i + shift] = V[i] (audio late by `shift`)."""
    gen = torch.Generator().manual_seed(shift + 100)
    video = torch.randn(n, dim, generator=gen)
    audio = torch.randn(n, dim, generator=gen)
    for i in range(n):
        if 0 <= i + shift < n:
            audio[i + shift] = video[i]
    return video, audio


@pytest.mark.parametrize("shift", [4, -3, 0, 9])
def test_offset_and_sign_on_shifted_features(shift):
    video, audio = shifted_embeddings(80, shift)
    scores = sync_scores(video, audio, vshift=15)
    # offset = vshift - argmin: the audio shift that undoes the delay (negative when audio is late)
    assert scores["offset"] == -shift
    curve = sync_curve(video, audio, 15)
    assert scores["sync_d"] == pytest.approx(float(curve.min()))
    assert scores["sync_c"] == pytest.approx(float(curve.median() - curve.min()))
    assert scores["sync_c"] > 1.0  # the matching shift stands out from the median


def test_curve_pads_audio_with_zeros():
    video = torch.ones(5, 3)
    audio = torch.ones(5, 3)
    curve = sync_curve(video, audio, vshift=2)
    # shift -2: frames 0,1 see zero padding (distance sqrt(3)), frames 2..4 see ones (distance ~0)
    assert curve[0] == pytest.approx(2 * np.sqrt(3) / 5, rel=1e-4)
    assert curve[2] == pytest.approx(0.0, abs=1e-4)


def test_mfcc_rate_and_python_speech_features_match():
    audio = np.random.default_rng(0).normal(size=16000) * 3000
    ours = mfcc(audio)
    assert ours.shape == (99, 13)  # 100 frames/s: 1 s of audio -> 1 + ceil((16000 - 400) / 160)
    psf = pytest.importorskip("python_speech_features")
    np.testing.assert_allclose(ours, psf.mfcc(audio, 16000), rtol=1e-6, atol=1e-6)


def test_upstream_parameter_names_and_shapes():
    state = SyncNet().state_dict()
    assert state["netcnnaud.0.weight"].shape == (64, 1, 3, 3)
    assert state["netcnnaud.18.weight"].shape == (512, 256, 5, 4)
    assert state["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7)
    assert state["netcnnlip.18.weight"].shape == (512, 256, 1, 6, 6)
    assert state["netfcaud.3.weight"].shape == (1024, 512)
    assert state["netfclip.0.weight"].shape == (512, 512)


def test_loader_roundtrip_and_public_api(tmp_path, seeded):
    model = SyncNet().eval()
    # random weights and running stats so that loading is observable
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "syncnet_v2.model"
    torch.save({f"__S__.{k}": v for k, v in model.state_dict().items()}, path)
    loaded, file = load_syncnet(path)
    assert file == path
    frames = torch.randint(0, 255, (10, 3, 48, 48), dtype=torch.uint8)
    audio = torch.randn(10 * 640) * 0.1
    lips, auds = syncnet_inputs(frames, audio)
    assert lips.shape == (5, 3, 5, 224, 224) and auds.shape == (5, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_aud(auds), model.forward_aud(auds))
        torch.testing.assert_close(loaded.forward_lip(lips[:2]), model.forward_lip(lips[:2]))
    metric = SyncScore(loaded, vshift=3)
    metric.update(frames, audio)
    out = metric.compute()
    assert out["sync_d"] > 0 and out["sync_c"] >= 0 and abs(float(out["offset"])) <= 3


def test_missing_weights_error_names_file_project_licence(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        load_syncnet(tmp_path / "nowhere" / "syncnet_v2.model")
    text = str(info.value)
    assert "syncnet_v2.model" in text and "joonson/syncnet_python" in text
    assert "Licence" in text and "EARTALK_SYNCNET_WEIGHTS" in text
