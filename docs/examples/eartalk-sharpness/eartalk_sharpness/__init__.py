"""eartalk-sharpness: a metric plugin, registered through ``register_metrics``.

``sharpness`` is the variance of the Laplacian of each frame's luma (pixel values in [0, 1]),
averaged over the frames of every video of a set: blurry or smeared generations score lower. It
needs no reference set and no weights, so it is a ``proxy`` (not a paper metric).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from eartalk.core.hookspecs import hookimpl
from eartalk.core.protocol import in_range, option
from eartalk.metrics.base import MetricPlugin, MetricResult, VideoSet

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


@attrs.frozen
class SharpnessOptions:
    """Options of ``sharpness``."""

    frame_stride: int = option(1, help="use every n-th frame", validator=in_range(1, integer=True))


def frame_sharpness(frames: torch.Tensor) -> torch.Tensor:
    """``(T, 3, H, W)`` uint8 -> ``(T,)`` variance of the Laplacian of the luma in [0, 1]."""
    rgb = frames.float() / 255.0
    luma = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]  # (T, 1, H, W)
    response = F.conv2d(luma, LAPLACIAN[None, None])  # (T, 1, H-2, W-2)
    return response.flatten(1).var(dim=1)


class Sharpness(MetricPlugin):
    """Mean variance of the Laplacian over the frames of a generated set (higher = sharper)."""

    name = "sharpness"
    description = "frame sharpness: variance of the Laplacian of the luma (proxy, no weights)"
    fidelity = "proxy"
    higher_is_better = True
    Options = SharpnessOptions

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        per_video = [frame_sharpness(v.frames[:: self.options.frame_stride]).mean() for v in generated]
        value = torch.stack(per_video).mean() if per_video else torch.tensor(float("nan"))
        return self.result(float(value), protocol=generated.protocol(frame_stride=self.options.frame_stride))


@hookimpl
def register_metrics() -> list[type[MetricPlugin]]:
    return [Sharpness]
