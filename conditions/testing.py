"""Small condition plugins for tests and examples (not registered by default).

:class:`ToyCondition` is a minimal, complete plugin: a linear tokenizer of a ``dim``-wide signal
read from ``sample.metadata[<name>]`` (a ``(T, dim)`` array). Tests and the docs use it.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from eartalk.core.protocol import ConditionPlugin
from eartalk.core.types import Sample


@attrs.frozen
class ToyOptions:
    """Options of :class:`ToyCondition`."""

    dim: int = 3
    slots: int = 1


class ToyCondition(ConditionPlugin):
    """A linear tokenizer of a small per-frame vector taken from ``sample.metadata["toy"]``."""

    name = "toy"
    description = "test plugin: a linear tokenizer of metadata['toy']"
    Options = ToyOptions
    requires = frozenset({"metadata"})

    def __init__(self, d_model: int, options: ToyOptions | None = None) -> None:
        options = options or ToyOptions()
        super().__init__(d_model, options, slots=options.slots, signal_dim=options.dim)
        self.proj = nn.Linear(options.dim, options.slots * d_model)

    def extract(self, sample: Sample) -> torch.Tensor:
        values = sample.metadata.get(self.name)
        if values is None:
            return torch.full((sample.num_frames, self.signal_dim), float("nan"))
        return torch.as_tensor(values, dtype=torch.float32).reshape(sample.num_frames, self.signal_dim)

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = signal.shape  # (B, T, dim)
        return self.proj(signal).reshape(batch, frames, self.slots, self.d_model)


@attrs.frozen
class ToyAudioOptions(ToyOptions):
    """Options of :class:`ToyAudio` (four values, two slots by default)."""

    dim: int = 4
    slots: int = 2


class ToyAudio(ToyCondition):
    """A second toy plugin (two slots) so stacks of several plugins can be tested."""

    name = "toy_audio"
    description = "test plugin: two slots from metadata['toy_audio']"
    Options = ToyAudioOptions

    def __init__(self, d_model: int, options: ToyAudioOptions | None = None) -> None:
        super().__init__(d_model, options or ToyAudioOptions())
