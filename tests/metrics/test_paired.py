import math

import pytest
import torch

from eartalk.metrics.image import make_psnr, make_ssim, paired_frames
from eartalk.metrics.landmarks import MEDIAPIPE_68, MOUTH, LandmarkDistance, landmark_distance


def test_lmd_centres_each_set_and_reduces():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(4, 20, 2, generator=gen) * 100
    moved = real + torch.tensor([7.0, -3.0])  # translation only: centring removes it
    assert torch.allclose(landmark_distance(moved, real), torch.zeros(4), atol=1e-5)
    bumped = real.clone()
    bumped[:, 0, 0] += 20.0  # one point moves by 20 px; the centroid moves by 1 px
    per_point_mean = landmark_distance(bumped, real, "mean")
    per_point_sum = landmark_distance(bumped, real, "sum")
    expected_sum = 19.0 + 19 * 1.0
    assert per_point_sum[0].item() == pytest.approx(expected_sum, rel=1e-5)
    assert per_point_mean[0].item() == pytest.approx(expected_sum / 20, rel=1e-5)
    metric = LandmarkDistance()
    bumped[1] = float("nan")  # a frame without a face is ignored
    metric.update(bumped, real)
    assert float(metric.compute()) == pytest.approx(expected_sum / 20, rel=1e-5)
    assert len(MEDIAPIPE_68) == 68 and MOUTH == MEDIAPIPE_68[48:] and len(set(MEDIAPIPE_68)) == 68


def test_psnr_and_ssim_on_paired_frames():
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (3, 3, 40, 40), generator=gen, dtype=torch.uint8)
    noisy = (real.float() + torch.randn(3, 3, 40, 40, generator=gen) * 8).clamp(0, 255).to(torch.uint8)
    fake, ref = paired_frames(noisy, real)
    mse = ((fake - ref) ** 2).mean(dim=(1, 2, 3))
    psnr = make_psnr()
    psnr.update(fake, ref)
    assert float(psnr.compute()) == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-4)
    ssim = make_ssim()
    ssim.update(ref, ref)
    assert float(ssim.compute()) == pytest.approx(1.0, abs=1e-5)
    values = []
    for noise in (8, 40):
        degraded = (real.float() + torch.randn(3, 3, 40, 40, generator=gen) * noise).clamp(0, 255).to(torch.uint8)
        ssim = make_ssim()
        ssim.update(*paired_frames(degraded, real))
        values.append(float(ssim.compute()))
    assert 1.0 - 1e-3 > values[0] > values[1]  # more noise, lower SSIM
    assert (ssim.kernel_size, ssim.sigma, ssim.gaussian_kernel) == (11, 1.5, True)
    big_ref = torch.nn.functional.interpolate(real.float(), size=(80, 80)).to(torch.uint8)
    assert paired_frames(noisy, big_ref)[1].shape == (3, 3, 40, 40)
    assert not math.isnan(float(mse.mean()))
