"""The conformance kit passes on a correct plugin and catches broken ones."""

from __future__ import annotations

import pytest
import torch

from eartalk.conditions.conformance import ConditionPluginConformance, check_condition_plugin
from eartalk.conditions.testing import ToyAudio, ToyCondition
from eartalk.core.types import Sample


def toy_sample() -> Sample:
    gen = torch.Generator().manual_seed(0)
    return Sample(metadata={"toy": torch.rand(6, 3, generator=gen)}, num_frames=6)


class TestToyConformance(ConditionPluginConformance):
    plugin_class = ToyCondition

    def make_sample(self) -> Sample:
        return toy_sample()


class LeakyToy(ToyCondition):
    """Broken: frame t's tokens depend on frame t+1 (not frame-local)."""

    name = "leaky_toy"

    def encode(self, signal: torch.Tensor) -> torch.Tensor:
        shifted = torch.roll(signal, shifts=-1, dims=1)
        return super().encode(signal + shifted)


class NoNullToy(ToyCondition):
    """Broken: ignores presence (absent frames do not get the null token)."""

    name = "no_null_toy"

    def forward(self, signal, present=None):
        return self.encode(torch.nan_to_num(signal))


def test_kit_passes_on_correct_plugins(tmp_path) -> None:
    check_condition_plugin(ToyCondition, toy_sample, tmp_dir=tmp_path)
    check_condition_plugin(
        ToyAudio, lambda: Sample(metadata={"toy_audio": torch.rand(5, 4)}, num_frames=5), tmp_dir=tmp_path
    )


@pytest.mark.parametrize("broken", [LeakyToy, NoNullToy])
def test_kit_catches_broken_plugins(broken, tmp_path) -> None:
    def sample() -> Sample:
        return Sample(metadata={broken.name: torch.rand(6, 3)}, num_frames=6)

    with pytest.raises(AssertionError):
        check_condition_plugin(broken, sample, tmp_dir=tmp_path)
