"""eartalk-brightness: the mean brightness of each frame as a controllable condition.

It shows everything a condition plugin needs: a unique ``name``, attrs ``Options``, ``extract``
(signal from a training sample), ``encode`` (frame-local trainable tokenizer), and registration
through the ``register_conditions`` hook under the entry-point group ``eartalk``.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from eartalk.core.hookspecs import hookimpl
from eartalk.core.protocol import ConditionPlugin
from eartalk.core.types import Sample


@attrs.frozen
class BrightnessOptions:
    """Options of the brightness condition.

    Attributes:
        slots: FCIC slots per frame.
        hidden: width of the tokenizer's hidden layer.
    """

    slots: int = 1
    hidden: int = 32


class Brightness(ConditionPlugin):
    """Mean luma of each frame in [0, 1]; at inference a constant or a per-frame curve."""

    name = "brightness"
    description = "mean frame brightness in [0, 1]"
    Options = BrightnessOptions
    requires = frozenset({"frames"})

    def __init__(self, d_model: int, options: BrightnessOptions | None = None) -> None:
        options = options or BrightnessOptions()
        super().__init__(d_model, options, slots=options.slots, signal_dim=1)
        self.columns = ["brightness"]
        self.net = nn.Sequential(nn.Linear(1, options.hidden), nn.SiLU(), nn.Linear(options.hidden, options.slots * d_model))

    def extract(self, sample: Sample) -> torch.Tensor:
        if sample.frames is None:
            return torch.full((sample.num_frames, 1), float("nan"))
        rgb = sample.frames.float() / 255.0  # (T, 3, H, W)
        luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
        return luma.mean(dim=(1, 2))[:, None]  # (T, 1)

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = signal.shape  # (B, T, 1)
        return self.net(signal).reshape(batch, frames, self.slots, self.d_model)


@hookimpl
def register_conditions() -> list[type[ConditionPlugin]]:
    return [Brightness]
