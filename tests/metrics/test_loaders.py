"""Each loader loads weights that the test builds with the same architecture class and saves."""

import warnings

import numpy as np
import pytest
import torch
from scipy.io import savemat
from torch import nn

from eartalk.core.errors import ConfigError
from eartalk.core.types import FaceTrack
from eartalk.metrics.csim import IResNet, align_arcface, cosine_similarity_to, identity_embeddings, load_arcface
from eartalk.metrics.efid import (
    ReconNet,
    align_deep3d,
    expression_coefficients,
    expression_fid,
    load_lm3d,
    load_recon_net,
    pos_fit,
)
from eartalk.metrics.fid import build_fid, fid_from_frames
from eartalk.metrics.fvd import FrechetVideoDistance, fvd, load_i3d, video_clips


def _save_scripted(module: nn.Module, path) -> None:
    """Script and save a stand-in (TorchScript is how the reference detectors are published)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        torch.jit.save(torch.jit.script(module), str(path))


def _randomise_bn(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)


class TinyI3D(nn.Module):
    """Stand-in with the I3D TorchScript call signature: (N, 3, T, H, W) -> (N, 400)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 4, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool3d(x, (1, 2, 2)).flatten(1)  # (N, 12)
        out = self.proj(pooled)
        return out if return_features else out.softmax(-1)


class TinyInception(nn.Module):
    """Stand-in with the NVlabs Inception TorchScript signature: uint8 (N, 3, H, W) -> (N, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16, 16)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(x.float() / 255.0, (4, 4)).flatten(1)
        return self.proj(pooled)


def _videos(n: int, frames: int, seed: int, brightness: float = 0.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [((torch.rand(frames, 3, 32, 32, generator=gen) * 200 + brightness).clamp(0, 255)).to(torch.uint8)
            for _ in range(n)]


def test_i3d_torchscript_loader_and_fvd(tmp_path, seeded):
    path = tmp_path / "i3d_torchscript.pt"
    _save_scripted(TinyI3D(), path)
    detector, file = load_i3d(path)
    assert file == path
    clips = video_clips(_videos(1, 40, 0)[0])
    assert clips.shape == (2, 3, 16, 224, 224) and clips.min() >= -1 and clips.max() <= 1
    real = _videos(4, 16, 1)
    with pytest.warns(UserWarning, match="rank-deficient"):
        same = fvd(detector, real, real)
    assert same == pytest.approx(0.0, abs=1e-6)
    with pytest.warns(UserWarning):
        different = fvd(detector, _videos(4, 16, 2, brightness=60), real)
    assert different > 1e-3
    metric = FrechetVideoDistance(detector)
    with pytest.raises(ValueError, match="expected clips"):
        metric.update(torch.zeros(1, 3, 8, 224, 224), real=True)


def test_fid_with_torchscript_extractor(tmp_path, seeded):
    path = tmp_path / "inception-2015-12-05.pt"
    _save_scripted(TinyInception(), path)
    metric, file = build_fid(path)
    assert file == path
    real = _videos(2, 20, 3)
    assert fid_from_frames(metric, real, real) == pytest.approx(0.0, abs=1e-3)
    assert fid_from_frames(metric, _videos(2, 20, 4, brightness=80), real) > 1e-3


def test_fid_state_dict_path_goes_through_torchmetrics_weights_option(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"not": torch.zeros(1)}, path)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="torch-fidelity"):
            build_fid(path)
    else:  # torchmetrics itself loads the file; a wrong state dict is refused there
        with pytest.raises(Exception):  # noqa: B017
            build_fid(path)


def _track_from_points(points: np.ndarray, height: int, width: int) -> FaceTrack:
    """A one-frame FaceTrack whose five MediaPipe points are at ``points`` (pixels)."""
    lm = torch.full((1, 478, 3), 0.5)
    for idx, (x, y) in zip((468, 473, 1, 61, 291), points, strict=True):
        lm[0, idx, 0] = x / width
        lm[0, idx, 1] = y / height
    return FaceTrack(lm, torch.zeros(1, 52), torch.eye(4)[None], torch.ones(1, dtype=torch.bool))


FIVE = np.array([[80.0, 90.0], [140.0, 90.0], [110.0, 125.0], [88.0, 160.0], [132.0, 160.0]])


def test_deep3d_net_recon_loader_alignment_and_efid(tmp_path, seeded):
    model = ReconNet().eval()
    _randomise_bn(model)
    ckpt = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": model.state_dict(), "epoch": 20}, ckpt)
    lm = np.random.default_rng(0).normal(size=(68, 3)) * 50
    mat = tmp_path / "similarity_Lm3D_all.mat"
    savemat(str(mat), {"lm": lm})
    loaded, file = load_recon_net(ckpt)
    assert file == ckpt
    lm3d = load_lm3d(mat)
    assert lm3d.shape == (5, 3)
    # POS recovers a known scaled orthographic projection
    t_true, s_true = np.array([12.0, -4.0]), 1.7
    t, s = pos_fit(lm3d[:, :2] * s_true + t_true, lm3d)
    assert s == pytest.approx(s_true, rel=1e-6) and np.allclose(t, t_true)
    frames = torch.randint(0, 255, (2, 3, 240, 220), dtype=torch.uint8)
    aligned = align_deep3d(frames[0], FIVE, lm3d)
    assert aligned.shape == (3, 224, 224) and 0 <= float(aligned.min()) and float(aligned.max()) <= 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(aligned[None]), model(aligned[None]))
        assert model(aligned[None]).shape == (1, 257)
    track = _track_from_points(FIVE, 240, 220)
    track = FaceTrack(track.landmarks.repeat(2, 1, 1), torch.zeros(2, 52), torch.eye(4).repeat(2, 1, 1), torch.ones(2, dtype=torch.bool))
    exp = expression_coefficients(loaded, frames, track, lm3d)
    assert exp.shape == (2, 64)
    with pytest.warns(UserWarning):
        assert expression_fid(exp.repeat(3, 1) + torch.randn(6, 64) * 1e-3, exp.repeat(3, 1)) < 1e-2


def test_arcface_loader_alignment_and_csim(tmp_path, seeded):
    model = IResNet("r18").eval()
    _randomise_bn(model)
    path = tmp_path / "arcface_r18.pth"
    torch.save(model.state_dict(), path)
    loaded, file = load_arcface(path, arch="r18")
    image = torch.randint(0, 255, (3, 200, 200), dtype=torch.uint8)
    face = align_arcface(image, FIVE)
    assert face.shape == (3, 112, 112) and float(face.min()) >= -1 and float(face.max()) <= 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(face[None]), model(face[None]))
    track = _track_from_points(FIVE, 200, 200)
    emb = identity_embeddings(loaded, image[None], track)
    assert emb.shape == (1, 512)
    assert cosine_similarity_to(emb[0], emb) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(RuntimeError):
        load_arcface(path, arch="r34")  # wrong architecture: state dict does not fit
