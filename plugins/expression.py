"""``expression``: MediaPipe's 52 blendshape scores in [0, 1], or a configured subset.

Columns are the blendshape names (``_neutral``, ``browDownLeft``, ..., ``noseSneerRight``; Left /
Right are the subject's sides), in MediaPipe's order or in the order given by option ``names``.
"""

from __future__ import annotations

import attrs
import torch

from eartalk.core.errors import ConfigError, InputError, did_you_mean
from eartalk.core.media.face import BLENDSHAPE_NAMES
from eartalk.core.types import FaceTrack
from eartalk.plugins.base import FaceOptions, FacePlugin, blendshape_columns


def _names(instance: object, attribute: attrs.Attribute, value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if not value:
        raise ConfigError("expression option 'names' is empty; leave it out to use all 52 blendshapes")
    unknown = [n for n in value if n not in BLENDSHAPE_NAMES]
    if unknown:
        hints = "".join(did_you_mean(n, BLENDSHAPE_NAMES) for n in unknown)
        raise ConfigError(f"expression option 'names': unknown blendshape(s) {unknown}{hints}; "
                          f"known: {', '.join(BLENDSHAPE_NAMES)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"expression option 'names' lists a blendshape twice: {list(value)}")


def _to_tuple(value: object) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)  # type: ignore[arg-type]


@attrs.frozen
class ExpressionOptions(FaceOptions):
    """Options of ``expression``.

    Attributes:
        slots: FCIC slots per frame.
        hidden: hidden width of the tokenizer MLP.
        landmarker: ``face_landmarker.task`` for samples without a face track
            (default: ``$EARTALK_FACE_LANDMARKER``).
        names: blendshape names to use, in this order (None: all 52 in MediaPipe's order).
    """

    names: tuple[str, ...] | None = attrs.field(default=None, converter=_to_tuple, validator=_names)


class Expression(FacePlugin):
    """Facial expression as MediaPipe blendshape scores."""

    name = "expression"
    description = "MediaPipe's 52 blendshapes (or a subset) in [0, 1]"
    Options = ExpressionOptions

    def __init__(self, d_model: int, options: ExpressionOptions | None = None) -> None:
        options = options or ExpressionOptions()
        names = list(options.names or BLENDSHAPE_NAMES)
        super().__init__(d_model, options, columns=names, input_scale=(2.0,) * len(names),
                         input_offset=(0.25,) * len(names))
        self.neutral = tuple(1.0 if n == "_neutral" else 0.0 for n in names)

    def from_track(self, track: FaceTrack) -> torch.Tensor:
        return blendshape_columns(track, self.columns)

    def parse_label(self, label: str) -> torch.Tensor:
        """``"neutral"``: every blendshape at its neutral value (0; ``_neutral`` 1)."""
        if label.strip().lower() == "neutral":
            return torch.tensor(self.neutral, dtype=torch.float32)
        raise InputError(f"condition 'expression': unknown label {label!r}; use 'neutral', a mapping of "
                         "blendshape names to values (others stay neutral), a file or a driving video")
