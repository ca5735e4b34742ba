"""``head_pose``: yaw, pitch, roll (degrees) and translation of the head, per frame.

Source: the facial transformation matrix of MediaPipe's FaceLandmarker (canonical face -> camera,
camera looking down -z with x to the image right and y up). The rotation is decomposed as
``R = Ry(yaw) @ Rx(-pitch) @ Rz(-roll)``:

* ``yaw`` > 0: the subject turns toward the image right (viewer's right);
* ``pitch`` > 0: the subject looks up;
* ``roll`` > 0: the head tilts clockwise in the image;
* ``tx, ty, tz``: the translation column of the matrix (MediaPipe's canonical-face units, about
  cm; x right, y up, tz negative and larger in magnitude when the face is farther away).
"""

from __future__ import annotations

import math

import attrs
import torch

from eartalk.core.errors import InputError
from eartalk.core.protocol import Column
from eartalk.core.types import FaceTrack
from eartalk.plugins.base import FaceOptions, FacePlugin

COLUMNS = ("yaw", "pitch", "roll", "tx", "ty", "tz")


@attrs.frozen
class HeadPoseOptions(FaceOptions):
    """Options of ``head_pose``.

    Attributes:
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
        landmarker: ``face_landmarker.task`` for samples without a face track
            (default: ``$EARTALK_FACE_LANDMARKER``).
        neutral_translation: ``(tx, ty, tz)`` used for the translation when a value gives only
            angles (a label, or a mapping without ``tx``/``ty``/``tz``).
    """

    neutral_translation: tuple[float, float, float] = (0.0, 0.0, -30.0)


def matrix_to_pose(matrices: torch.Tensor) -> torch.Tensor:
    """``(T, 4, 4)`` transformation matrices -> ``(T, 6)`` yaw, pitch, roll (degrees), tx, ty, tz."""
    rotation = matrices[:, :3, :3].double()
    rotation = rotation / rotation.norm(dim=1, keepdim=True).clamp(min=1e-8)  # drop any scale
    forward = rotation[:, :, 2]  # where the face's +z (out of the face) points
    yaw = torch.atan2(forward[:, 0], forward[:, 2])
    pitch = torch.asin(forward[:, 1].clamp(-1.0, 1.0))
    # Undo yaw and pitch; what is left is a rotation about z, Rz(-roll).
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    zeros, ones = torch.zeros_like(yaw), torch.ones_like(yaw)
    ry = torch.stack([torch.stack([cy, zeros, sy], -1), torch.stack([zeros, ones, zeros], -1),
                      torch.stack([-sy, zeros, cy], -1)], -2)  # (T, 3, 3)
    rx = torch.stack([torch.stack([ones, zeros, zeros], -1), torch.stack([zeros, cp, sp], -1),
                      torch.stack([zeros, -sp, cp], -1)], -2)  # Rx(-pitch)
    residual = (ry @ rx).transpose(1, 2) @ rotation
    roll = torch.atan2(residual[:, 0, 1], residual[:, 1, 1])
    angles = torch.stack([yaw, pitch, roll], dim=1) * (180.0 / math.pi)
    return torch.cat([angles, matrices[:, :3, 3].double()], dim=1).float()  # (T, 6)


def pose_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`matrix_to_pose`: ``(T, 6)`` -> ``(T, 4, 4)``."""
    yaw, pitch, roll = (pose[:, :3].double() * (math.pi / 180.0)).unbind(dim=1)

    def rot(axis: int, angle: torch.Tensor) -> torch.Tensor:
        c, s = torch.cos(angle), torch.sin(angle)
        m = torch.eye(3, dtype=torch.float64).repeat(angle.shape[0], 1, 1)
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        m[:, i, i], m[:, j, j] = c, c
        m[:, i, j], m[:, j, i] = (-s, s) if axis != 1 else (s, -s)
        return m

    out = torch.eye(4, dtype=torch.float64).repeat(pose.shape[0], 1, 1)
    out[:, :3, :3] = rot(1, yaw) @ rot(0, -pitch) @ rot(2, -roll)
    out[:, :3, 3] = pose[:, 3:].double()
    return out.float()


class HeadPose(FacePlugin):
    """Head rotation (degrees) and translation from MediaPipe's facial transformation matrix."""

    name = "head_pose"
    description = "yaw, pitch, roll (degrees) and translation of the head (MediaPipe transform)"
    Options = HeadPoseOptions
    column_docs = (
        Column("yaw", "degrees", (-90, 90), "> 0: the subject turns toward the image right"),
        Column("pitch", "degrees", (-90, 90), "> 0: the subject looks up"),
        Column("roll", "degrees", (-90, 90), "> 0: the head tilts clockwise in the image"),
        Column("tx", "~cm", None, "translation, > 0 toward the image right"),
        Column("ty", "~cm", None, "translation, > 0 up"),
        Column("tz", "~cm", (None, 0), "distance: negative, larger in magnitude when farther (neutral -30)"),
    )
    labels = {"frontal": "zero angles at the neutral translation (also: neutral, center)"}
    value_examples = {"head_pose='{\"yaw\": [0, 10, 20]}'": "a mapping: columns left out take the neutral pose",
                      "head_pose=20,0,0,0,0,-30": "a constant: yaw 20 degrees, at the neutral translation"}

    def __init__(self, d_model: int, options: HeadPoseOptions | None = None) -> None:
        options = options or HeadPoseOptions()
        tz0 = options.neutral_translation[2]
        super().__init__(d_model, options, columns=COLUMNS,
                         input_scale=(1 / 30, 1 / 30, 1 / 30, 1 / 10, 1 / 10, 1 / 10),
                         input_offset=(0.0, 0.0, 0.0, 0.0, 0.0, tz0))
        self.neutral = (0.0, 0.0, 0.0, *options.neutral_translation)

    def from_track(self, track: FaceTrack) -> torch.Tensor:
        return matrix_to_pose(torch.nan_to_num(track.matrices))

    def parse_label(self, label: str) -> torch.Tensor:
        """``"frontal"``: zero angles at the neutral translation."""
        if label.strip().lower() in ("frontal", "neutral", "center", "centre"):
            return torch.tensor(self.neutral, dtype=torch.float32)
        raise InputError(f"condition 'head_pose': unknown label {label!r}; use 'frontal', a mapping of "
                         f"{', '.join(COLUMNS)}, numbers, a file or a driving video")
