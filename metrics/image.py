"""Paired frame metrics: PSNR, SSIM (Gaussian 11x11, sigma 1.5) and LPIPS (local TorchScript).

Generated frame ``t`` of video ``i`` is compared with reference frame ``t`` of reference video
``i`` (up to the shorter length); a reference of another size is resized (bilinear) to the
generated frames' size first.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from eartalk.metrics.weights import load_torchscript, resolve_weights


def paired_frames(generated: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Trim to a common length and size; returns float ``(T, 3, H, W)`` pairs in [0, 1]."""
    n = min(generated.shape[0], reference.shape[0])
    fake = generated[:n].float() / 255.0
    real = reference[:n].float() / 255.0
    if real.shape[-2:] != fake.shape[-2:]:
        real = F.interpolate(real, size=fake.shape[-2:], mode="bilinear", align_corners=False)
    return fake, real


def make_psnr() -> PeakSignalNoiseRatio:
    """PSNR over [0, 1] frames, averaged over frames (torchmetrics ``reduction='elementwise_mean'``, per-image dims)."""
    return PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))


def make_ssim() -> StructuralSimilarityIndexMeasure:
    """SSIM with a Gaussian 11x11 window, sigma 1.5 (torchmetrics defaults, not skimage's)."""
    return StructuralSimilarityIndexMeasure(gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0)


def load_lpips(path: str | Path | None = None) -> tuple[torch.jit.ScriptModule, Path]:
    """A TorchScript LPIPS network ``f(x, y)`` on [-1, 1] images returning per-image distances."""
    file = resolve_weights("lpips", path)
    return load_torchscript(file), file


@torch.no_grad()
def lpips_distance(net: torch.jit.ScriptModule, fake: Tensor, real: Tensor, batch_size: int = 16) -> Tensor:
    """Per-frame LPIPS ``(T,)`` of ``(T, 3, H, W)`` pairs in [0, 1]."""
    out = []
    for i in range(0, fake.shape[0], batch_size):
        d = net(fake[i:i + batch_size] * 2 - 1, real[i:i + batch_size] * 2 - 1)
        out.append(d.reshape(d.shape[0], -1).mean(1))
    return torch.cat(out)
