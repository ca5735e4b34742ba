"""eartalk-head-scale: the face's apparent size (landmark extent in crop widths) as a control.

Written from docs/plugins.md alone: a face plugin (``requires = {"face"}``) reading
``sample.face.landmarks`` (x, y normalised to the crop, NaN rows where no face), with options
declared through ``option``/``choice``/``in_range``.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from eartalk.core.errors import InputError
from eartalk.core.hookspecs import hookimpl
from eartalk.core.protocol import Column, ConditionPlugin, choice, in_range, option
from eartalk.core.types import Sample

LABELS = {"small": 0.35, "medium": 0.5, "large": 0.65}


@attrs.frozen
class HeadScaleOptions:
    """Options of ``head_scale``."""

    slots: int = option(1, help="FCIC slots per frame", validator=in_range(1, integer=True))
    hidden: int = option(32, help="hidden width of the tokenizer MLP", validator=in_range(1, integer=True))
    measure: str = option("width", help="landmark extent measured", validator=choice("width", "height"))
    gain: float = option(1.0, help="multiplies the measured scale", validator=in_range(0, 10, low_open=True))


class HeadScale(ConditionPlugin):
    """Apparent face size: the landmarks' extent along x (width) or y (height), in crop units."""

    name = "head_scale"
    description = "apparent face size: landmark extent in crop widths (MediaPipe)"
    Options = HeadScaleOptions
    requires = frozenset({"face"})
    column_docs = (Column("scale", "crop widths", (0, 1), "extent of the face landmarks; larger = closer"),)
    labels = {k: f"scale {v}" for k, v in LABELS.items()}
    absent_fill = (0.5,)

    def __init__(self, d_model: int, options: HeadScaleOptions | None = None) -> None:
        super().__init__(d_model, options, slots=(options or HeadScaleOptions()).slots, signal_dim=1)
        self.columns = ["scale"]
        self.net = nn.Sequential(nn.Linear(1, self.options.hidden), nn.GELU(),
                                 nn.Linear(self.options.hidden, self.slots * d_model))

    def extract(self, sample: Sample) -> torch.Tensor:
        out = torch.full((sample.num_frames, 1), float("nan"))
        track = sample.face
        if track is None:  # the dataset computes the track for face plugins; outside it, say absent
            return out
        axis = 0 if self.options.measure == "width" else 1
        coord = track.landmarks[..., axis].float()  # (T', 478)
        scale = (coord.amax(dim=1) - coord.amin(dim=1)) * self.options.gain  # (T',)
        scale[~track.present] = float("nan")
        count = min(sample.num_frames, scale.shape[0])
        out[:count, 0] = scale[:count]
        return out

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = signal.shape  # (B, T, 1)
        return self.net((signal - 0.5) * 4.0).reshape(batch, frames, self.slots, self.d_model)

    def parse_label(self, label: str) -> torch.Tensor:
        key = label.strip().lower()
        if key not in LABELS:
            raise InputError(f"condition 'head_scale': unknown label {label!r}; use one of {sorted(LABELS)} "
                             "or a number (crop widths, about 0.3-0.7)")
        return torch.tensor([LABELS[key]])


@hookimpl
def register_conditions() -> list[type[ConditionPlugin]]:
    return [HeadScale]
