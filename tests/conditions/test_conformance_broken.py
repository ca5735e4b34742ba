"""Each conformance-kit failure, shown on a deliberately broken plugin: the message names the
check, what was expected and what came instead."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import nn

from eartalk.conditions.conformance import KitFailure, check_condition_plugin
from eartalk.conditions.testing import ToyCondition
from eartalk.core.errors import PluginError
from eartalk.core.protocol import ConditionPlugin
from eartalk.core.types import Sample


def sample_for(name: str, dim: int = 3):
    def make() -> Sample:
        gen = torch.Generator().manual_seed(0)
        return Sample(metadata={name: 0.5 + 0.5 * torch.rand(6, dim, generator=gen)}, num_frames=6)

    return make


class MissingSlots(ToyCondition):
    name = "missing_slots"

    def encode(self, signal):
        return self.proj(signal)  # (B, T, D): no slots axis


class WrongSlots(ToyCondition):
    name = "wrong_slots"

    def encode(self, signal):
        b, t, _ = signal.shape
        return self.proj(signal).reshape(b, t, 1, -1).expand(b, t, 2, -1)


class Float64Extract(ToyCondition):
    name = "float64_extract"

    def extract(self, sample):
        return super().extract(sample).double()


class ShortExtract(ToyCondition):
    name = "short_extract"

    def extract(self, sample):
        return super().extract(sample)[:-1]


class Detached(ToyCondition):
    name = "detached"

    def encode(self, signal):
        return super().encode(signal).detach()


class Constant(ToyCondition):
    """Trains (it has a parameter with gradient) but its tokens ignore the signal."""

    name = "constant"

    def __init__(self, d_model, options=None):
        super().__init__(d_model, options)
        self.bias = nn.Parameter(torch.randn(self.slots, d_model) * 0.1)

    def encode(self, signal):
        b, t, _ = signal.shape
        return self.bias.expand(b, t, -1, -1) + 0 * self.proj(signal).reshape(b, t, self.slots, -1)


class UnclampedLog(ToyCondition):
    """log() of the raw signal: finite on real rows, -inf on the zero rows of a batch with nothing present."""

    name = "unclamped_log"

    def encode(self, signal):
        return super().encode(torch.log(signal))


class LeakyToy(ToyCondition):
    name = "leaky_toy"

    def encode(self, signal):
        return super().encode(signal + torch.roll(signal, shifts=-1, dims=1))


class NoNullToy(ToyCondition):
    name = "no_null_toy"

    def forward(self, signal, present=None):
        return self.encode(torch.nan_to_num(signal))


class NotAttrsOptions(ToyCondition):
    name = "not_attrs_options"

    class Options:  # a plain class, not attrs
        pass


@attrs.frozen
class ModeOptions:
    mode: str = "good"
    dim: int = 3
    slots: int = 1


class RejectsItsOption(ToyCondition):
    name = "rejects_its_option"
    Options = ModeOptions

    def __init__(self, d_model, options=None):
        if options is not None and options.mode != "good":
            raise ValueError(f"mode {options.mode!r} is not supported")
        super().__init__(d_model, options)


CASES = [
    (MissingSlots, "declares_protocol", r"must return shape \(B, T, slots, d_model\) = \(2, 2, 1, 16\), got \(2, 2, 16\); "
                             r"the slots dimension is missing"),
    (WrongSlots, "declares_protocol", r"= \(2, 2, 1, 16\), got \(2, 2, 2, 16\)"),
    (Float64Extract, "extract", r"expected extract\(\) to return dtype torch.float32, got torch.float64"),
    (ShortExtract, "extract", r"expected shape \(T, signal_dim\) = \(6, 3\), got \(5, 3\)"),
    (Detached, "gradients", r"expected a non-zero gradient on the tokenizer's parameters \(proj.weight, proj.bias\), "
                            r"got none: is encode\(\) detached"),
    (Constant, "fine_tunes", r"expected the loss of telling 4 distinct rows apart .* got .*the tokens do not depend "
                             r"on the signal"),
    (UnclampedLog, "finite_gradients", r"expected finite gradients with nothing present, got non-finite gradients on "
                                       r"\['proj.weight'\]"),
    (LeakyToy, "frame_locality", r"changing row 3 changed the tokens of frames \[0, 1, 2\]"),
    (NoNullToy, "absent", r"expected the null token on frames with present=False"),
    (NotAttrsOptions, "declares_protocol", r"expected `Options` to be an attrs class"),
]


@pytest.mark.parametrize(("broken", "check", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_kit_failure_says_what_was_expected_and_what_came(broken, check, message, tmp_path) -> None:
    with pytest.raises(KitFailure, match=message) as info:
        check_condition_plugin(broken, sample_for(broken.name), tmp_dir=tmp_path)
    text = str(info.value)
    assert f"check {check!r}" in text and f"name {broken.name!r}" in text and broken.__qualname__ in text


def test_offending_option_is_named(tmp_path) -> None:
    with pytest.raises(KitFailure, match=r"options=ModeOptions\(mode='bad'.*raised ValueError: mode 'bad'"):
        check_condition_plugin(RejectsItsOption, sample_for("rejects_its_option"), options=ModeOptions(mode="bad"),
                               tmp_dir=tmp_path)


def test_missing_slots_is_a_protocol_error_before_forward_mixes_tokens() -> None:
    plugin = MissingSlots(16)
    with pytest.raises(PluginError, match="slots dimension is missing"):
        plugin(torch.rand(2, 3, 3))


def test_encode_sees_a_present_row_on_absent_frames_and_absent_fill_when_none_is() -> None:
    seen = []

    class Recorder(ToyCondition):
        name = "recorder"
        absent_fill = (0.5, 0.5, 0.5)

        def encode(self, signal):
            seen.append(signal.detach().clone())
            return super().encode(signal)

    plugin = Recorder(8)
    signal = torch.arange(12.0).reshape(1, 4, 3)
    signal[0, 0] = float("nan")
    present = torch.tensor([[True, True, False, True]])
    plugin(signal, present)
    first_present = signal[0, 1]
    torch.testing.assert_close(seen[-1][0, 0], first_present)  # NaN row
    torch.testing.assert_close(seen[-1][0, 2], first_present)  # masked row
    torch.testing.assert_close(seen[-1][0, 3], signal[0, 3])  # present rows as given
    plugin(torch.full((1, 2, 3), float("nan")))
    torch.testing.assert_close(seen[-1], torch.full((1, 2, 3), 0.5))


def test_a_conforming_plugin_with_ranges_passes(tmp_path) -> None:
    from eartalk.core.protocol import Column

    class Ranged(ToyCondition):
        name = "ranged"
        column_docs = (Column("*", "", (0, 1)),)

    check_condition_plugin(Ranged, sample_for("ranged"), tmp_dir=tmp_path)
    assert issubclass(Ranged, ConditionPlugin)
