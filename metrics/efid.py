"""E-FID: Fréchet distance between Deep3DFaceRecon expression coefficients of two video sets.

The coefficient network is Deep3DFaceRecon_pytorch's ``ReconNetWrapper``: a ResNet-50 trunk
(written here, torchvision-free, with torchvision's parameter names) and seven 1x1 convolution
heads giving 257 coefficients: identity 80, expression 64, texture 80, angles 3, lighting 27,
translation 2 + 1. E-FID uses the expression coefficients ``80:144``. Faces are aligned as the
reference does: a POS fit of the five image points to the template's five 3D points gives
translation ``t`` and scale ``s``; the image is scaled by ``102 / s`` and a 224x224 window
around ``t`` is cut with bicubic interpolation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eartalk.core.types import FaceTrack
from eartalk.metrics.align import five_points
from eartalk.metrics.frechet import FrechetDistance, frechet_distance
from eartalk.metrics.weights import WeightsSpec, resolve_weights

EXPRESSION = slice(80, 144)
HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, tx/ty, tz -> 257
TARGET_SIZE = 224
RESCALE = 102.0

LM3D_SPEC = WeightsSpec(
    "deep3d_lm3d",
    "similarity_Lm3D_all.mat",
    "EARTALK_DEEP3D_LM3D",
    "Deep3DFaceRecon_pytorch (https://github.com/sicxu/Deep3DFaceRecon_pytorch), BFM/similarity_Lm3D_all.mat",
    "MIT (code); BFM-derived data, research use (Basel Face Model licence)",
)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1, 3x3 with the stride, 1x1 x4), torchvision's layout and names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50(nn.Module):
    """ResNet-50 trunk without the classifier: ``(N, 3, H, W) -> (N, 2048, 1, 1)``."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if index == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)  # (N, 2048, 1, 1)


class ReconNet(nn.Module):
    """Deep3DFaceRecon coefficient network: ResNet-50 + seven 1x1 heads -> ``(N, 257)``.

    Input: ``(N, 3, 224, 224)`` RGB in [0, 1], aligned with :func:`align_deep3d`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNet50()
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, size, 1) for size in HEAD_SIZES])

    def forward(self, images: Tensor) -> Tensor:
        feats = self.backbone(images)  # (N, 2048, 1, 1)
        return torch.cat([head(feats) for head in self.final_layers], dim=1).flatten(1)  # (N, 257)


def load_recon_net(path: str | Path | None = None) -> tuple[ReconNet, Path]:
    """Load ``net_recon`` from a Deep3DFaceRecon checkpoint (``epoch_20.pth``)."""
    file = resolve_weights("deep3d", path)
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    state = checkpoint.get("net_recon", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = ReconNet()
    model.load_state_dict(state)
    return model.eval(), file


def load_lm3d(path: str | Path | None = None) -> np.ndarray:
    """Five 3D template points ``(5, 3)`` from ``similarity_Lm3D_all.mat`` (68 BFM landmarks)."""
    from scipy.io import loadmat

    file = resolve_weights(LM3D_SPEC, path)
    lm = np.asarray(loadmat(str(file))["lm"], dtype=np.float64)  # (68, 3)
    idx = np.array([31, 37, 40, 43, 46, 49, 55]) - 1
    five = np.stack([lm[idx[0]], lm[idx[[1, 2]]].mean(0), lm[idx[[3, 4]]].mean(0), lm[idx[5]], lm[idx[6]]])
    return five[[1, 2, 0, 3, 4]]  # eyes, nose, mouth corners


def pos_fit(points_2d: np.ndarray, points_3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Scaled orthographic fit (POS) of ``(5, 2)`` image points to ``(5, 3)`` model points: ``(t, s)``."""
    n = len(points_2d)
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3] = points_3d
    a[0::2, 3] = 1
    a[1::2, 4:7] = points_3d
    a[1::2, 7] = 1
    b = points_2d.reshape(-1)
    k = np.linalg.lstsq(a, b, rcond=None)[0]
    scale = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    return np.array([k[3], k[7]]), float(scale)


def align_deep3d(image: Tensor, points: np.ndarray, lm3d: np.ndarray) -> Tensor:
    """Deep3DFaceRecon alignment of one ``(3, H, W)`` uint8 image: ``(3, 224, 224)`` float in [0, 1]."""
    h0, w0 = image.shape[-2:]
    flipped = points.astype(np.float64).copy()
    flipped[:, 1] = h0 - 1 - flipped[:, 1]  # the reference fits with y pointing up
    t, s = pos_fit(flipped, lm3d)
    s = RESCALE / s
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - TARGET_SIZE / 2 + (t[0] - w0 / 2) * s)
    up = int(h / 2 - TARGET_SIZE / 2 + (h0 / 2 - t[1]) * s)
    # Sample the resized-then-cropped image directly: crop pixel (u, v) is resized pixel
    # (left + u, up + v), i.e. source position ((left + u + 0.5) / (w / w0) - 0.5, ...).
    u = torch.arange(TARGET_SIZE, dtype=torch.float64)
    src_x = (left + u + 0.5) * (w0 / w) - 0.5
    src_y = (up + u + 0.5) * (h0 / h) - 0.5
    gy, gx = torch.meshgrid(src_y, src_x, indexing="ij")
    grid = torch.stack([(2 * gx + 1) / w0 - 1, (2 * gy + 1) / h0 - 1], dim=-1).float()  # (224, 224, 2)
    out = F.grid_sample(image[None].float() / 255.0, grid[None], mode="bicubic", padding_mode="zeros", align_corners=False)
    return out[0].clamp(0, 1)


@torch.no_grad()
def expression_coefficients(model: ReconNet, frames: Tensor, track: FaceTrack, lm3d: np.ndarray,
                            stride: int = 1, batch_size: int = 16) -> Tensor:
    """Expression coefficients ``(N, 64)`` of the frames with a face (every ``stride``-th frame)."""
    h, w = frames.shape[-2:]
    points = five_points(track, h, w).numpy()  # (T, 5, 2)
    keep = [t for t in range(0, frames.shape[0], stride) if bool(track.present[t]) and np.isfinite(points[t]).all()]
    if not keep:
        return torch.zeros(0, EXPRESSION.stop - EXPRESSION.start)
    out = []
    for i in range(0, len(keep), batch_size):
        batch = torch.stack([align_deep3d(frames[t], points[t], lm3d) for t in keep[i:i + batch_size]])
        out.append(model(batch)[:, EXPRESSION])
    return torch.cat(out)


class ExpressionFID(FrechetDistance):
    """E-FID as a torchmetrics ``Metric``: ``update(expressions (N, 64), real)``, ``compute()``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(EXPRESSION.stop - EXPRESSION.start, what="Deep3DFaceRecon expressions", **kwargs)


def expression_fid(generated: Tensor, reference: Tensor) -> float:
    """Functional E-FID between ``(N, 64)`` expression coefficient sets."""
    return frechet_distance(generated, reference, what="Deep3DFaceRecon expressions")
