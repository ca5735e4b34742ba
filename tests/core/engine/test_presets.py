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


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_built_model_has_the_sizes_the_arch_promises(name):
    """The derived sizes are what the built model really produces (on the meta device): frames of
    side R encode to N tokens of width c, the backbone returns N contexts of width d per frame, and
    the model has the preset's layer counts (base: NOVA's 16 + 32 layers at width 1024)."""
    import torch

    arch = get_arch(name)
    with torch.device("meta"):
        stack = ConditionStack([ToyCondition(arch.width)])
    model = build_model(arch, stack, device="meta")
    frames = torch.empty(1, 2, 3, arch.resolution, arch.resolution, device="meta")
    tokens = model.encode_tokens(frames)
    assert tuple(tokens.shape) == (1, 2, arch.num_tokens, arch.token_dim)
    assert tuple(model.vae.encode(frames).shape) == (1, 2, arch.latent_channels, arch.latent_size, arch.latent_size)
    cond = torch.empty(1, 2, stack.num_slots, arch.width, device="meta")
    z = model.backbone(tokens[:, 0], cond, tokens)
    assert tuple(z.shape) == (1, 2, arch.num_tokens, arch.width)
    assert len(model.backbone.blocks) == arch.depth and len(model.decoder.blocks) == arch.decoder_depth
    assert model.backbone.blocks[0].attn.qkv.in_features == arch.width
    if name == "base":
        assert (arch.width, arch.heads, arch.depth, arch.decoder_depth) == (1024, 16, 16, 32)


def test_training_switch_defaults_and_validation():
    arch = get_arch("tiny")
    assert (arch.drop_null_prob, arch.drop_keep_prob, arch.drop_keep) == (0.1, 0.1, ("audio",))
    assert arch.sink_attention and arch.adaln_identity and arch.rollout_mode == "stream"
    assert get_arch("tiny", drop_keep=["audio", "head_pose"]).drop_keep == ("audio", "head_pose")
    for bad, match in (
        ({"drop_null_prob": 0.7, "drop_keep_prob": 0.5}, "drop_null_prob \\+ drop_keep_prob"),
        ({"rollout_prob": 1.5}, "rollout_prob must be in"),
        ({"rollout_mode": "batch"}, "rollout_mode"),
        ({"context_noise_per": "step"}, "context_noise_per"),
        ({"rollout_steps": 0}, "rollout_steps"),
        ({"context_noise": -1.0}, "context_noise must be"),
    ):
        with pytest.raises(ConfigError, match=match):
            get_arch("tiny", **bad)


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


def test_separate_guidance_scales_round_trip_and_stay_hashable():
    arch = get_arch("tiny", sampling={"cfg_separate": {"brightness": "2.5"}})
    assert arch.sampling.cfg_separate == {"brightness": 2.5} and arch.sampling.guided
    assert arch_from_dict(arch_to_dict(arch)) == arch, "a checkpoint keeps the scales"
    assert arch != get_arch("tiny") and hash(arch) == hash(get_arch("tiny"))  # hashable (memory estimate caches archs)
    assert not get_arch("tiny", sampling={"cfg": 1.0, "cfg_separate": {"brightness": 1.0}}).sampling.guided
    with pytest.raises(ConfigError, match="must map control names to guidance scales"):
        get_arch("tiny", sampling={"cfg_separate": ["brightness"]})
