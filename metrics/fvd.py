"""FVD: Fréchet distance between I3D (Kinetics-400) features of 16-frame clips.

Protocol of the StyleGAN-V port: clips of 16 consecutive frames, resized to 224x224 and scaled to
[-1, 1], laid out ``(N, 3, 16, 224, 224)``; the TorchScript detector ``i3d_torchscript.pt`` is
called as ``detector(x, rescale=False, resize=False, return_features=True)`` (we resize and
rescale ourselves) and returns 400-d features. Distance in float64 with ``scipy.linalg.sqrtm``;
a warning is issued below 400 clips.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from eartalk.core.types import to_model_range
from eartalk.metrics.frechet import FrechetDistance, frechet_distance
from eartalk.metrics.weights import load_torchscript, resolve_weights

CLIP_FRAMES = 16
SIZE = 224
NUM_FEATURES = 400


def load_i3d(path: str | Path | None = None) -> tuple[torch.jit.ScriptModule, Path]:
    """Load the I3D TorchScript detector."""
    file = resolve_weights("i3d", path)
    return load_torchscript(file), file


def video_clips(frames: Tensor, clip_frames: int = CLIP_FRAMES, stride: int | None = None) -> Tensor:
    """Cut ``(T, 3, H, W)`` uint8 frames into ``(N, 3, clip_frames, 224, 224)`` clips in [-1, 1]."""
    stride = stride or clip_frames
    starts = list(range(0, frames.shape[0] - clip_frames + 1, stride))
    if not starts:
        return torch.zeros(0, 3, clip_frames, SIZE, SIZE)
    clips = []
    for s in starts:
        x = frames[s:s + clip_frames].float()  # (16, 3, H, W)
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        clips.append(to_model_range(x).permute(1, 0, 2, 3))  # (3, 16, 224, 224)
    return torch.stack(clips)


@torch.no_grad()
def i3d_features(detector: torch.jit.ScriptModule, clips: Tensor, batch_size: int = 4) -> Tensor:
    """``(N, 3, 16, 224, 224)`` clips in [-1, 1] -> ``(N, 400)`` features."""
    out = [torch.zeros(0, NUM_FEATURES)]
    for i in range(0, clips.shape[0], batch_size):
        out.append(detector(clips[i:i + batch_size], rescale=False, resize=False, return_features=True).float())
    return torch.cat(out)


class FrechetVideoDistance(FrechetDistance):
    """FVD as a torchmetrics ``Metric``: ``update(clips (N, 3, 16, 224, 224) in [-1, 1], real)``."""

    def __init__(self, detector: torch.jit.ScriptModule, **kwargs) -> None:
        super().__init__(NUM_FEATURES, what="I3D clips", **kwargs)
        self.detector = detector

    def update(self, clips: Tensor, real: bool) -> None:  # type: ignore[override]
        if clips.dim() != 5 or tuple(clips.shape[1:]) != (3, CLIP_FRAMES, SIZE, SIZE):
            raise ValueError(f"FVD: expected clips (N, 3, {CLIP_FRAMES}, {SIZE}, {SIZE}), got {tuple(clips.shape)}")
        self.update_features(i3d_features(self.detector, clips), real)


def fvd(detector: torch.jit.ScriptModule, generated: list[Tensor], reference: list[Tensor]) -> float:
    """Functional FVD between lists of ``(T, 3, H, W)`` uint8 videos."""
    fake = torch.cat([i3d_features(detector, video_clips(v)) for v in generated])
    real = torch.cat([i3d_features(detector, video_clips(v)) for v in reference])
    return frechet_distance(fake, real, what="I3D clips")
