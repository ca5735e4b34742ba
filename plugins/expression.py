"""``expression``: MediaPipe's blendshape scores in [0, 1], without the mouth group by default.

Columns are the blendshape names (``_neutral``, ``browDownLeft``, ..., ``noseSneerRight``; Left /
Right are the subject's sides), in MediaPipe's order or in the order given by option ``names``.

The mouth group (:data:`MOUTH_BLENDSHAPES`: ``jaw*``, ``mouth*``, ``cheekPuff``) is left out
unless option ``mouth`` is true or ``names`` lists some of them: in training those shapes would
teach the model lip motion from ground-truth blendshapes instead of from the audio (a shortcut
that is absent at inference). With the default, ``expression`` carries brows, eyes, cheek squint
and nose (24 of the 52 columns) and the mouth is driven by audio (and smiles by ``emotion``).
"""

from __future__ import annotations

import attrs
import torch

from eartalk.core.errors import ConfigError, InputError, did_you_mean
from eartalk.core.media.face import BLENDSHAPE_NAMES
from eartalk.core.types import FaceTrack
from eartalk.plugins.base import FaceOptions, FacePlugin, blendshape_columns

#: Blendshapes of the mouth and jaw (left out of ``expression`` unless ``mouth: true``).
MOUTH_BLENDSHAPES: tuple[str, ...] = tuple(
    n for n in BLENDSHAPE_NAMES if n.startswith(("jaw", "mouth")) or n == "cheekPuff"
)


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
        names: blendshape names to use, in this order (None: MediaPipe's order, without the mouth
            group unless ``mouth`` is true). Names given explicitly are used as given.
        mouth: with ``names`` unset, include the mouth group (:data:`MOUTH_BLENDSHAPES`); off by
            default so that lip motion is learned from audio.
    """

    names: tuple[str, ...] | None = attrs.field(default=None, converter=_to_tuple, validator=_names)
    mouth: bool = False


class Expression(FacePlugin):
    """Facial expression as MediaPipe blendshape scores."""

    name = "expression"
    description = "MediaPipe's blendshapes in [0, 1] (mouth group off by default, or a subset)"
    Options = ExpressionOptions

    def __init__(self, d_model: int, options: ExpressionOptions | None = None) -> None:
        options = options or ExpressionOptions()
        if options.names is not None:
            names = list(options.names)
        else:
            names = [n for n in BLENDSHAPE_NAMES if options.mouth or n not in MOUTH_BLENDSHAPES]
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
