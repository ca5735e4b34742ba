"""Landmark distances (LMD) on MediaPipe landmarks.

The literature's LMD uses dlib's 68 points (ATVGnet): M-LMD over the mouth (48-67), F-LMD over
all 68. We use the 68-point-like subset of MediaPipe's mesh below (jaw 17, brows 10, nose 9, eyes
12, outer lip 12, inner lip 8, in dlib order); its last 20 points play the role of dlib 48-67.
Per frame, each landmark set is centred on its own mean (removing translation); the distance
between generated and reference points is measured in pixels of the generated frame, averaged
(``reduction="mean"``) or summed (``"sum"``) over points, then averaged over frames. Values are
therefore not numerically comparable with dlib-based papers; compare methods with each other.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from eartalk.core.types import FaceTrack

MEDIAPIPE_68 = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # jaw
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,  # brows
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lip
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lip
)
MOUTH = MEDIAPIPE_68[48:]


def landmark_points(track: FaceTrack, height: int, width: int, subset: tuple[int, ...]) -> Tensor:
    """``(T, P, 2)`` pixel coordinates of ``subset`` (NaN where no face)."""
    pts = track.landmarks[:, list(subset), :2].double().clone()
    pts[..., 0] *= width
    pts[..., 1] *= height
    return pts


def landmark_distance(fake: Tensor, real: Tensor, reduction: str = "mean") -> Tensor:
    """Per-frame LMD ``(T,)`` between ``(T, P, 2)`` point sets, each centred on its own mean."""
    if fake.shape != real.shape:
        raise ValueError(f"LMD: point sets differ in shape {tuple(fake.shape)} vs {tuple(real.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"LMD: reduction must be 'mean' or 'sum', got {reduction!r}")
    fake = fake - fake.mean(dim=1, keepdim=True)
    real = real - real.mean(dim=1, keepdim=True)
    dist = torch.linalg.vector_norm(fake - real, dim=-1)  # (T, P)
    return dist.mean(1) if reduction == "mean" else dist.sum(1)


class LandmarkDistance(Metric):
    """LMD as a torchmetrics ``Metric``: ``update(fake (T, P, 2), real (T, P, 2))``; NaN frames ignored."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, reduction: str = "mean", **kwargs) -> None:
        super().__init__(**kwargs)
        self.reduction = reduction
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, fake: Tensor, real: Tensor) -> None:
        per_frame = landmark_distance(fake.double(), real.double(), self.reduction)
        ok = torch.isfinite(per_frame)
        self.total += per_frame[ok].sum()
        self.count += int(ok.sum())

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            raise ValueError("LMD: no frame with a face in both videos")
        return self.total / self.count
