"""``gaze``: 2D gaze direction per eye, ``left_x, left_y, right_x, right_y`` in [-1, 1].

x > 0: looking toward the image right; y > 0: looking up. ``left`` is the subject's left eye.

Sources (option ``source``):

* ``"blendshapes"`` (default): MediaPipe's eyeLook blendshapes. For the subject's left eye, looking
  out (``eyeLookOutLeft``) is toward the image right, looking in toward the image left; for the right
  eye it is the other way round. ``x = right-ward score - left-ward score``, ``y = up - down``.
* ``"iris"``: the iris centre (landmarks 468 / 473) relative to the eye corners and lids, divided
  by half the eye width and multiplied by ``iris_gain``, clipped to [-1, 1].
"""

from __future__ import annotations

import attrs
import torch

from eartalk.core.errors import InputError
from eartalk.core.protocol import Column, choice, option
from eartalk.core.types import FaceTrack
from eartalk.plugins.base import FaceOptions, FacePlugin, blendshape_columns

COLUMNS = ("left_x", "left_y", "right_x", "right_y")
SOURCES = ("blendshapes", "iris")
# (iris centre, outer corner, inner corner, upper lid, lower lid) of each eye in MediaPipe's mesh.
LEFT_EYE = (473, 263, 362, 386, 374)
RIGHT_EYE = (468, 33, 133, 159, 145)
LABELS = {"camera": (0.0, 0.0), "center": (0.0, 0.0), "centre": (0.0, 0.0), "left": (-0.7, 0.0),
          "right": (0.7, 0.0), "up": (0.0, 0.7), "down": (0.0, -0.7)}


@attrs.frozen
class GazeOptions(FaceOptions):
    """Options of ``gaze``.

    Attributes:
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
        landmarker: ``face_landmarker.task`` for samples without a face track
            (default: ``$EARTALK_FACE_LANDMARKER``).
        source: ``"blendshapes"`` (eyeLook scores) or ``"iris"`` (iris landmarks).
        iris_gain: scale of the iris offset (in half eye widths) before clipping, for ``"iris"``.
    """

    source: str = option("blendshapes", validator=choice(*SOURCES),
                         help='"blendshapes" (eyeLook scores) or "iris" (iris landmarks)')
    iris_gain: float = 2.5


def gaze_from_blendshapes(track: FaceTrack) -> torch.Tensor:
    """``(T, 4)`` gaze from the eyeLook blendshapes."""
    names = ("eyeLookOutLeft", "eyeLookInLeft", "eyeLookUpLeft", "eyeLookDownLeft",
             "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "eyeLookDownRight")
    s = blendshape_columns(track, names)  # (T, 8)
    return torch.stack([s[:, 0] - s[:, 1], s[:, 2] - s[:, 3], s[:, 4] - s[:, 5], s[:, 6] - s[:, 7]], dim=1)


def gaze_from_iris(track: FaceTrack, gain: float) -> torch.Tensor:
    """``(T, 4)`` gaze from the iris landmarks (image y points down, so it is negated)."""
    columns = []
    for iris, outer, inner, upper, lower in (LEFT_EYE, RIGHT_EYE):
        lm = track.landmarks[..., :2]  # (T, 478, 2)
        half_width = (lm[:, outer] - lm[:, inner]).norm(dim=-1).clamp(min=1e-6) / 2
        center_x = (lm[:, outer, 0] + lm[:, inner, 0]) / 2
        center_y = (lm[:, upper, 1] + lm[:, lower, 1]) / 2
        columns.append((lm[:, iris, 0] - center_x) / half_width)
        columns.append(-(lm[:, iris, 1] - center_y) / half_width)
    return (torch.stack(columns, dim=1) * gain).clamp(-1.0, 1.0)


class Gaze(FacePlugin):
    """Per-eye 2D gaze from MediaPipe's eyeLook blendshapes or iris landmarks."""

    name = "gaze"
    description = "per-eye 2D gaze in [-1, 1] (x right, y up)"
    Options = GazeOptions
    neutral = (0.0, 0.0, 0.0, 0.0)
    column_docs = (
        Column("left_x", "", (-1, 1), "subject's left eye, > 0 toward the image right"),
        Column("left_y", "", (-1, 1), "subject's left eye, > 0 up"),
        Column("right_x", "", (-1, 1), "subject's right eye, > 0 toward the image right"),
        Column("right_y", "", (-1, 1), "subject's right eye, > 0 up"),
    )
    labels = {"camera": "both eyes at the camera (0; also: center)", "left": "both eyes toward the image left (x -0.7)",
              "right": "both eyes toward the image right (x 0.7)", "up": "both eyes up (y 0.7)",
              "down": "both eyes down (y -0.7)"}

    def __init__(self, d_model: int, options: GazeOptions | None = None) -> None:
        options = options or GazeOptions()
        super().__init__(d_model, options, columns=COLUMNS, input_scale=(2.0,) * 4)

    def from_track(self, track: FaceTrack) -> torch.Tensor:
        if self.options.source == "iris":
            return gaze_from_iris(track, self.options.iris_gain)
        return gaze_from_blendshapes(track)

    def parse_label(self, label: str) -> torch.Tensor:
        """Both eyes toward ``"camera"`` (or ``"center"``), ``"left"``, ``"right"``, ``"up"``, ``"down"``
        (directions in the image)."""
        key = label.strip().lower()
        if key not in LABELS:
            raise InputError(f"condition 'gaze': unknown label {label!r}; use one of {sorted(LABELS)}, "
                             f"numbers for ({', '.join(COLUMNS)}), a file or a driving video")
        x, y = LABELS[key]
        return torch.tensor([x, y, x, y])
