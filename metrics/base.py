"""Base class of metric plugins and the data they are computed on.

A metric plugin turns a *generated* :class:`VideoSet` (and, when it needs one, the *reference*
set) into a :class:`MetricResult` carrying the value, its fidelity and the protocol used.
The numerical work lives in torchmetrics ``Metric`` subclasses and functional twins in the
sibling modules; plugins only adapt :class:`VideoSet` inputs to them, so a third-party metric is a
small subclass::

    class MeanBrightness(MetricPlugin):
        name = "brightness"
        fidelity = "proxy"
        higher_is_better = True

        def compute(self, generated, reference=None):
            value = torch.stack([v.frames.float().mean() for v in generated]).mean()
            return self.result(float(value), protocol=generated.protocol())
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from eartalk.core.protocol import NoOptions
from eartalk.core.types import FaceTrack

FIDELITIES = ("reference", "unverified-weights", "proxy")


@attrs.define
class Video:
    """One decoded video at 25 fps.

    Attributes:
        frames: ``(T, 3, H, W)`` uint8 RGB.
        audio: ``(S,)`` float32 16 kHz mono aligned with frame 0, or None.
        source: file it came from (or a label).
        face: MediaPipe face track, filled on first use by :meth:`VideoSet.face`.
    """

    frames: torch.Tensor
    audio: torch.Tensor | None = None
    source: str = ""
    face: FaceTrack | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@attrs.define
class VideoSet:
    """A named set of videos (one method's outputs, or the ground truth) plus a per-set cache.

    Attributes:
        name: label used in reports (usually the folder or file given on the command line).
        videos: the decoded videos.
        landmarker: path of ``face_landmarker.task`` (None: ``$EARTALK_FACE_LANDMARKER``).
        fps: frame rate of every video.
        cache: intermediate results shared by metrics (face tracks, SyncNet scores...).
    """

    name: str
    videos: list[Video]
    landmarker: str | Path | None = None
    fps: float = 25.0
    cache: dict[str, Any] = attrs.field(factory=dict)

    def __iter__(self) -> Iterator[Video]:
        return iter(self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def faces(self) -> list[FaceTrack]:
        """MediaPipe face tracks of every video (computed once, cached on the videos).

        Raises:
            WeightsNotFoundError: ``face_landmarker.task`` cannot be found.
        """
        missing = [v for v in self.videos if v.face is None]
        if missing:
            from eartalk.core.media.face import FaceAnalyzer

            with FaceAnalyzer(self.landmarker, num_faces=1) as analyzer:
                for video in missing:
                    video.face = analyzer.track(video.frames, fps=self.fps)
        return [v.face for v in self.videos]  # type: ignore[misc]

    def protocol(self, **extra: Any) -> dict[str, Any]:
        """The shared part of a result's protocol: fps, resolution, clip length, sample count."""
        sizes = sorted({f"{v.frames.shape[-1]}x{v.frames.shape[-2]}" for v in self.videos})
        lengths = [v.num_frames for v in self.videos]
        out: dict[str, Any] = {
            "fps": self.fps,
            "resolution": sizes[0] if len(sizes) == 1 else sizes,
            "num_videos": len(self.videos),
            "num_frames": int(sum(lengths)),
            "clip_length": (min(lengths), max(lengths)) if lengths else None,
        }
        out.update(extra)
        return out


@attrs.define
class MetricResult:
    """What a metric reports for one generated set.

    Attributes:
        metric: the plugin name.
        value: the number (None when skipped).
        fidelity: ``reference`` / ``unverified-weights`` / ``proxy``.
        higher_is_better: direction (used by Avg-R).
        protocol: fps, resolution, crop, clip length, number of samples, weights sha256...
        extra: further numbers (e.g. ``lag_frames`` and ``confidence`` of the lip-sync proxy).
        skipped: reason when the metric could not run (missing weights, no reference...).
    """

    metric: str
    value: float | None
    fidelity: str
    higher_is_better: bool
    protocol: dict[str, Any] = attrs.field(factory=dict)
    extra: dict[str, Any] = attrs.field(factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "fidelity": self.fidelity,
                               "higher_is_better": self.higher_is_better, "protocol": self.protocol}
        out.update(self.extra)
        if self.skipped:
            out["skipped"] = self.skipped
        return out


class MetricPlugin:
    """A metric registered through ``register_metrics``.

    Attributes:
        name: unique name used by ``eartalk evaluate --metrics``.
        description: one line for ``eartalk plugins``.
        fidelity: ``"reference"`` (paper definition; reported as ``unverified-weights`` unless the
            weights' hash is known), or ``"proxy"`` (an eartalk measurement with a different model,
            never reported under a paper metric's name).
        higher_is_better: direction, used by Avg-R ranking.
        requires: what :meth:`compute` needs: ``"reference"`` (a ground-truth set), ``"paired"``
            (reference videos frame-aligned with the generated ones), ``"audio"``, ``"face"``.
        Options: attrs class of the metric's options (weights path, mode...).
    """

    kind: ClassVar[str] = "metric"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    fidelity: ClassVar[str] = "reference"
    higher_is_better: ClassVar[bool] = False
    requires: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type] = NoOptions
    required_methods: ClassVar[tuple[str, ...]] = ("compute",)

    def __init__(self, options: object | None = None) -> None:
        self.options = options if options is not None else self.Options()
        if not attrs.has(type(self.options)):
            raise TypeError(f"metric {self.name!r}: options must be an attrs instance, got {self.options!r}")

    def compute(self, generated: VideoSet, reference: VideoSet | None = None) -> MetricResult:
        """Score ``generated`` (against ``reference`` when :attr:`requires` says so)."""
        raise NotImplementedError

    def result(self, value: float | None, *, fidelity: str | None = None, protocol: dict | None = None,
               **extra: Any) -> MetricResult:
        """Build this metric's :class:`MetricResult`."""
        return MetricResult(self.name, None if value is None else float(value), fidelity or self.fidelity,
                            self.higher_is_better, dict(protocol or {}), dict(extra))

    def skipped(self, reason: str) -> MetricResult:
        """A result saying why this metric did not run."""
        return MetricResult(self.name, None, self.fidelity, self.higher_is_better, skipped=reason)
