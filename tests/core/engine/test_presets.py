"""Presets: parameter budgets (counted on the meta device), overrides, derived sizes."""

from __future__ import annotations

import pytest

from eartalk.conditions import ConditionStack
from eartalk.conditions.testing import ToyAudio, ToyCondition
from eartalk.core.engine.model import build_model
from eartalk.core.engine.presets import PRESETS, ModelArch, arch_from_dict, arch_to_dict, get_arch
from eartalk.core.errors import ConfigError


def meta_counts(name: str) -> dict[str, int]:
    arch = get_arch(name)
    import torch

    with torch.device("meta"):
        stack = ConditionStack([ToyCondition(arch.width), ToyAudio(arch.width)])
    model = build_model(arch, stack, device="meta")
    assert next(model.parameters()).device.type == "meta"
    return model.parameter_counts()


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("tiny", 0, 1_000_000), ("small", 10_000_000, 30_000_000), ("base", 500_000_000, 700_000_000)],
)
def test_backbone_plus_decoder_budget(name, low, high):
    counts = meta_counts(name)
    assert low <= counts["backbone_decoder"] <= high, counts
    assert counts["total"] == counts["vae"] + counts["backbone_decoder"] + counts["conditions"]


def test_base_is_novas_layout():
    arch = get_arch("base")
    assert (arch.width, arch.heads, arch.depth, arch.decoder_depth, arch.resolution) == (1024, 16, 16, 32, 256)
    assert arch.downsample == 8 and arch.num_tokens == 256 and arch.token_dim == 64


def test_tiny_sizes():
    arch = get_arch("tiny")
    assert arch.resolution == 64 and arch.latent_size == 8 and arch.num_tokens == 16 and arch.token_dim == 32
    assert arch.period > arch.window


def test_overrides_and_errors():
    arch = get_arch("small", window=12, period=24, sampling={"cfg": 3.5, "cfg_keep": ["audio"]})
    assert arch.window == 12 and arch.sampling.cfg == 3.5 and arch.sampling.cfg_keep == ("audio",)
    assert arch.sampling.steps == PRESETS["small"].sampling.steps
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        get_arch("tiny", windw=3)
    with pytest.raises(ConfigError, match="unknown model preset 'smal'"):
        get_arch("smal")
    with pytest.raises(ConfigError, match="period P must be > window W"):
        get_arch("tiny", window=8)
    with pytest.raises(ConfigError, match="divisible"):
        get_arch("tiny", resolution=60)
    with pytest.raises(ConfigError, match="unknown sampling option"):
        get_arch("tiny", sampling={"stepz": 3})


def test_arch_dict_round_trip():
    for arch in PRESETS.values():
        assert arch_from_dict(arch_to_dict(arch)) == arch
    data = arch_to_dict(PRESETS["tiny"])
    data["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        arch_from_dict(data)
    assert isinstance(arch_from_dict(arch_to_dict(ModelArch())), ModelArch)
