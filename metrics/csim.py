"""CSIM: ArcFace cosine similarity between the reference face and every generated frame.

The network is insightface's ``iresnet`` (arcface_torch) with its parameter names, so the
published ``backbone.pth`` files load as they are. Faces are aligned to the 112x112 ArcFace
template with a similarity transform of the five points (MediaPipe 468, 473, 1, 61, 291) and
normalised to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from eartalk.core.types import FaceTrack, to_model_range
from eartalk.metrics.align import ARCFACE_TEMPLATE, five_points, similarity_transform, warp_affine
from eartalk.metrics.weights import resolve_weights

IRESNET_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """ArcFace's pre-activation basic block: BN, 3x3, BN, PReLU, 3x3 (stride), BN, + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """ArcFace ``iresnet``: ``(N, 3, 112, 112)`` in [-1, 1] -> ``(N, 512)`` identity embedding."""

    def __init__(self, arch: str = "r100", num_features: int = 512) -> None:
        super().__init__()
        if arch not in IRESNET_LAYERS:
            raise ValueError(f"unknown ArcFace arch {arch!r}; known: {', '.join(IRESNET_LAYERS)}")
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), IRESNET_LAYERS[arch], strict=True)):
            stage = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            inplanes = planes
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512, 7, 7)
        x = self.dropout(self.bn2(x).flatten(1))
        return self.features(self.fc(x))


def load_arcface(path: str | Path | None = None, arch: str = "r100") -> tuple[IResNet, Path]:
    """Load an arcface_torch ``backbone.pth`` state dict into :class:`IResNet`."""
    file = resolve_weights("arcface", path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = IResNet(arch)
    model.load_state_dict(state)
    return model.eval(), file


def align_arcface(image: Tensor, points: np.ndarray) -> Tensor:
    """``(3, H, W)`` uint8 + ``(5, 2)`` pixel points -> ``(3, 112, 112)`` float in [-1, 1]."""
    matrix = similarity_transform(points, ARCFACE_TEMPLATE)
    face = warp_affine(image.float(), matrix, 112)
    return to_model_range(face)


@torch.no_grad()
def identity_embeddings(model: IResNet, frames: Tensor, track: FaceTrack, stride: int = 1, batch_size: int = 32) -> Tensor:
    """L2-normalised ArcFace embeddings ``(N, 512)`` of the frames with a face."""
    h, w = frames.shape[-2:]
    points = five_points(track, h, w).numpy()
    keep = [t for t in range(0, frames.shape[0], stride) if bool(track.present[t]) and np.isfinite(points[t]).all()]
    out = [torch.zeros(0, 512)]
    for i in range(0, len(keep), batch_size):
        batch = torch.stack([align_arcface(frames[t], points[t]) for t in keep[i:i + batch_size]])
        out.append(F.normalize(model(batch), dim=-1))
    return torch.cat(out)


def cosine_similarity_to(reference: Tensor, embeddings: Tensor) -> float:
    """Mean cosine between one ``(D,)`` reference embedding and ``(N, D)`` embeddings (functional CSIM)."""
    if embeddings.shape[0] == 0:
        raise ValueError("CSIM: no generated frame with a face")
    return float(F.cosine_similarity(embeddings, reference[None].expand_as(embeddings), dim=-1).mean())


class IdentitySimilarity(Metric):
    """Mean cosine similarity between reference and generated embeddings (CSIM)."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, reference: Tensor, embeddings: Tensor) -> None:
        """``reference (D,)`` identity of the source, ``embeddings (N, D)`` of generated frames."""
        if embeddings.dim() != 2 or reference.shape != embeddings.shape[1:]:
            raise ValueError(f"CSIM: expected reference (D,) and embeddings (N, D), got {tuple(reference.shape)}, {tuple(embeddings.shape)}")
        sims = F.cosine_similarity(embeddings.double(), reference.double()[None].expand_as(embeddings), dim=-1)
        self.total += sims.sum()
        self.count += sims.shape[0]

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            raise ValueError("CSIM: no frame was scored")
        return self.total / self.count
