"""``blink``: per-eye closure in [0, 1] (``left``, ``right``; left = the subject's left eye).

Source: MediaPipe's ``eyeBlinkLeft`` / ``eyeBlinkRight`` blendshapes (checked on real clips: the
``Left`` score follows the eye on the image right, i.e. the subject's left). MediaPipe's scores
reach about 0.6-0.8 on fully closed eyes and stay below about 0.25 on open eyes; the optional
``gain`` stretches them (clipped to [0, 1]).
"""

from __future__ import annotations

import attrs
import torch

from eartalk.core.errors import InputError
from eartalk.core.protocol import Column
from eartalk.core.types import FaceTrack
from eartalk.plugins.base import FaceOptions, FacePlugin, blendshape_columns

COLUMNS = ("left", "right")
BLENDSHAPES = ("eyeBlinkLeft", "eyeBlinkRight")
LABELS = {"open": (0.0, 0.0), "closed": (1.0, 1.0), "wink_left": (1.0, 0.0), "wink_right": (0.0, 1.0)}


@attrs.frozen
class BlinkOptions(FaceOptions):
    """Options of ``blink``.

    Attributes:
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
        landmarker: ``face_landmarker.task`` for samples without a face track
            (default: ``$EARTALK_FACE_LANDMARKER``).
        gain: multiply MediaPipe's scores by this before clipping to [0, 1] (1 = raw scores).
    """

    gain: float = 1.0


class Blink(FacePlugin):
    """Eye closure per eye from MediaPipe's blink blendshapes."""

    name = "blink"
    description = "per-eye closure in [0, 1] (MediaPipe eyeBlinkLeft/Right)"
    Options = BlinkOptions
    neutral = (0.0, 0.0)
    column_docs = (
        Column("left", "closure", (0, 1), "the subject's left eye (image right); 0 open, 1 closed"),
        Column("right", "closure", (0, 1), "the subject's right eye (image left); 0 open, 1 closed"),
    )
    labels = {"open": "both eyes open (0, 0)", "closed": "both eyes closed (1, 1)",
              "wink_left": "left eye closed (1, 0)", "wink_right": "right eye closed (0, 1)"}
    value_examples = {"blink='{\"left\": 1}'": "a mapping: the eye left out stays open"}

    def __init__(self, d_model: int, options: BlinkOptions | None = None) -> None:
        options = options or BlinkOptions()
        super().__init__(d_model, options, columns=COLUMNS, input_scale=(2.0, 2.0), input_offset=(0.5, 0.5))

    def from_track(self, track: FaceTrack) -> torch.Tensor:
        return (blendshape_columns(track, BLENDSHAPES) * self.options.gain).clamp(0.0, 1.0)

    def parse_label(self, label: str) -> torch.Tensor:
        """``"open"``, ``"closed"``, ``"wink_left"`` or ``"wink_right"``."""
        key = label.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in LABELS:
            raise InputError(f"condition 'blink': unknown label {label!r}; use one of {sorted(LABELS)}, "
                             "numbers for (left, right), a file or a driving video")
        return torch.tensor(LABELS[key])
