"""Condition stacks: slot layout, null tokens, dropout and building by name."""

from __future__ import annotations

import types

import pytest
import torch

from eartalk.conditions import ConditionSpec, ConditionStack, ControlTimeline, DropoutSpec
from eartalk.conditions.testing import ToyAudio, ToyCondition
from eartalk.core.errors import ConfigError
from eartalk.core.hookspecs import hookimpl
from eartalk.core.registry import build_registry


def toy_registry():
    module = types.ModuleType("toys")
    module.register_conditions = hookimpl(lambda: [ToyCondition, ToyAudio])
    return build_registry(entry_points=False, extra=[module])


def test_layout_follows_config_order(toy_stack) -> None:
    assert [(s.name, s.offset, s.slots, s.type_id) for s in toy_stack.layout] == [("toy", 0, 1, 0), ("toy_audio", 1, 2, 1)]
    assert toy_stack.num_slots == 3
    assert toy_stack.slot_type_ids().tolist() == [0, 1, 1]
    signals = {"toy": torch.randn(2, 5, 3), "toy_audio": torch.randn(2, 5, 4)}
    tokens = toy_stack(signals)
    assert tokens.shape == (2, 5, 3, 16)
    direct = toy_stack.plugins["toy_audio"](signals["toy_audio"]) + toy_stack.type_embedding[1]
    torch.testing.assert_close(tokens[:, :, 1:], direct)


def test_missing_signal_is_null_and_all_null_stack(toy_stack) -> None:
    tokens = toy_stack({"toy": torch.randn(1, 4, 3)})
    null_audio = toy_stack.plugins["toy_audio"].null_token + toy_stack.type_embedding[1]
    torch.testing.assert_close(tokens[0, :, 1:], null_audio.expand(4, -1, -1))
    null = toy_stack.null_tokens(2, 3)
    assert null.shape == (2, 3, 3, 16)
    torch.testing.assert_close(null[1, 2, 1:], null_audio)


def test_span_of_absent_frames_changes_only_those_frames(toy_stack) -> None:
    signal = {"toy": torch.randn(1, 8, 3)}
    present = torch.ones(1, 8, dtype=torch.bool)
    full = toy_stack(signal, {"toy": present})
    present[:, 3:6] = False
    gapped = toy_stack(signal, {"toy": present})
    torch.testing.assert_close(gapped[:, :3], full[:, :3])
    torch.testing.assert_close(gapped[:, 6:], full[:, 6:])
    null = toy_stack.plugins["toy"].null_token + toy_stack.type_embedding[0]
    torch.testing.assert_close(gapped[0, 3:6, :1], null.expand(3, -1, -1))


def test_dropout_whole_clips_and_spans() -> None:
    stack = ConditionStack(
        [ToyCondition(8), ToyAudio(8)],
        [DropoutSpec(clip=0.5, span=0.0), DropoutSpec(clip=0.0, span=1.0, span_min=3, span_max=5)],
    )
    gen = torch.Generator().manual_seed(0)
    present = {"toy": torch.ones(400, 20, dtype=torch.bool), "toy_audio": torch.ones(400, 20, dtype=torch.bool)}
    dropped = stack.drop(present, generator=gen)
    toy_rows = dropped["toy"].all(dim=1) | (~dropped["toy"]).all(dim=1)
    assert toy_rows.all(), "clip dropout removes whole clips only"
    rate = (~dropped["toy"][:, 0]).float().mean().item()
    assert 0.4 < rate < 0.6
    absent = (~dropped["toy_audio"]).sum(dim=1)
    assert ((absent >= 3) & (absent <= 5)).all(), "every clip loses exactly one span of 3-5 frames"
    for row in dropped["toy_audio"]:
        idx = torch.nonzero(~row).flatten()
        assert (idx.diff() == 1).all(), "the dropped frames form one contiguous span"
    assert present["toy"].all(), "the input masks are not modified"


def test_joint_dropout_trains_every_cfg_branch_at_its_rate() -> None:
    """The all-null stack and the audio-only (``keep``) stack each occur on their configured share of
    clips, on whole clips, on top of the per-plugin dropout (here off)."""
    off = DropoutSpec(clip=0.0, span=0.0)
    stack = ConditionStack([ToyCondition(8), ToyAudio(8)], [off, off])
    n = 20000  # binomial std of a 0.1 rate: 0.002; the tolerance is 5 std
    present = {"toy": torch.ones(n, 6, dtype=torch.bool), "toy_audio": torch.ones(n, 6, dtype=torch.bool)}
    for null_prob, keep_prob in ((0.1, 0.1), (0.25, 0.05)):
        out = stack.drop(present, torch.Generator().manual_seed(1), null_prob=null_prob, keep_prob=keep_prob, keep=("toy_audio",))
        toy, audio = out["toy"], out["toy_audio"]
        for mask in (toy, audio):
            assert (mask.all(1) | (~mask).all(1)).all(), "joint dropout acts on whole clips"
        all_null = (~toy[:, 0] & ~audio[:, 0]).float().mean().item()
        audio_only = (~toy[:, 0] & audio[:, 0]).float().mean().item()
        full = (toy[:, 0] & audio[:, 0]).float().mean().item()
        assert abs(all_null - null_prob) < 0.01, (null_prob, all_null)
        assert abs(audio_only - keep_prob) < 0.01, (keep_prob, audio_only)
        assert abs(full - (1 - null_prob - keep_prob)) < 0.012
        assert not (toy[:, 0] & ~audio[:, 0]).any(), "without per-plugin dropout no clip keeps toy alone"
    # no joint rates: no clip loses both (per-plugin dropout off), as before
    plain = stack.drop(present, torch.Generator().manual_seed(1))
    assert plain["toy"].all() and plain["toy_audio"].all()
    # keep names outside the stack are ignored: the keep branch is then all-null too
    out = stack.drop(present, torch.Generator().manual_seed(2), null_prob=0.1, keep_prob=0.1, keep=("audio",))
    rate = (~out["toy"][:, 0] & ~out["toy_audio"][:, 0]).float().mean().item()
    assert abs(rate - 0.2) < 0.012
    with pytest.raises(ValueError, match="null_prob"):
        stack.drop(present, null_prob=0.7, keep_prob=0.5)


def test_per_plugin_dropout_alone_almost_never_gives_the_null_stack() -> None:
    """Why the joint dropout exists: independent 0.1 clip dropout of 2 plugins gives the all-null
    stack on ~1 % of clips only (7 plugins: 1e-7)."""
    stack = ConditionStack([ToyCondition(8), ToyAudio(8)], [DropoutSpec(0.1, 0.0), DropoutSpec(0.1, 0.0)])
    present = {n: torch.ones(20000, 4, dtype=torch.bool) for n in ("toy", "toy_audio")}
    out = stack.drop(present, torch.Generator().manual_seed(0))
    rate = (~out["toy"][:, 0] & ~out["toy_audio"][:, 0]).float().mean().item()
    assert rate < 0.02
    out = stack.drop(present, torch.Generator().manual_seed(0), null_prob=0.1)
    rate = (~out["toy"][:, 0] & ~out["toy_audio"][:, 0]).float().mean().item()
    assert abs(rate - (0.1 + 0.9 * 0.01)) < 0.01


def test_dropout_spec_validates() -> None:
    with pytest.raises(ValueError):
        DropoutSpec(clip=1.5)
    with pytest.raises(ValueError):
        DropoutSpec(span_min=5, span_max=2)


def test_from_specs_by_name_with_strict_options() -> None:
    registry = toy_registry()
    stack = ConditionStack.from_specs(
        [ConditionSpec("toy_audio"), ConditionSpec("toy", options={"dim": 5, "slots": 2})], d_model=8, registry=registry
    )
    assert stack.names == ["toy_audio", "toy"]
    assert stack.plugins["toy"].signal_dim == 5 and stack.num_slots == 4
    with pytest.raises(ConfigError, match=r"(?s)run.yaml.*unknown key 'slot'.*did you mean 'slots'"):
        ConditionStack.from_specs([ConditionSpec("toy", options={"slot": 2})], 8, source="run.yaml", registry=registry)
    with pytest.raises(ConfigError, match=r"run.yaml: conditions.0.name: unknown condition plugin 'tyo'"):
        ConditionStack.from_specs([ConditionSpec("tyo")], 8, source="run.yaml", registry=registry)
    with pytest.raises(ConfigError, match="appears twice"):
        ConditionStack.from_specs([ConditionSpec("toy"), ConditionSpec("toy")], 8, registry=registry)


def test_timeline_edits_at_any_frame(toy_stack) -> None:
    timeline = ControlTimeline(toy_stack)
    timeline.set("toy", [1.0, 2.0, 3.0], start=2)
    timeline.set("toy_audio", torch.arange(12.0).reshape(3, 4), start=1)
    timeline.clear("toy", start=5, stop=7)
    values = timeline.span(0, 9)
    toy = values["toy"][0]
    assert toy[:2].isnan().all() and toy[5:7].isnan().all()
    assert toy[2].tolist() == [1.0, 2.0, 3.0] and toy[8].tolist() == [1.0, 2.0, 3.0]
    audio = values["toy_audio"][0]
    assert audio[0].isnan().all() and audio[4:].isnan().all(), "a per-frame array ends where it ends"
    assert audio[2].tolist() == [4.0, 5.0, 6.0, 7.0]
    tokens = toy_stack(values)
    null = toy_stack.plugins["toy"].null_token + toy_stack.type_embedding[0]
    torch.testing.assert_close(tokens[0, 5, :1], null)


def test_timeline_file_edit_without_stop_keeps_every_row(toy_stack, tmp_path) -> None:
    """An open-ended per-frame file (e.g. --control head_pose=pose.csv) runs for its own length."""
    import numpy as np

    ramp = np.arange(15, dtype=np.float32).reshape(5, 3)
    np.save(tmp_path / "ramp.npy", ramp)
    timeline = ControlTimeline(toy_stack)
    timeline.set("toy", tmp_path / "ramp.npy", start=1)
    toy = timeline.span(0, 8)["toy"][0]
    assert toy[0].isnan().all() and toy[6:].isnan().all()
    assert toy[1:6].tolist() == ramp.tolist()
    timeline.set("toy", tmp_path / "ramp.npy", start=2, stop=4)
    toy = timeline.span(0, 8)["toy"][0]
    assert toy[2:4].tolist() == ramp[:2].tolist() and toy[4:6].tolist() == ramp[3:5].tolist()
