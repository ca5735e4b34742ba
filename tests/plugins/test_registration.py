"""The seven built-in condition plugins are registered through the register_conditions hook."""

from __future__ import annotations

from eartalk.conditions import ConditionSpec, ConditionStack
from eartalk.core.registry import build_registry

BUILTINS = ("audio", "voice_activity", "head_pose", "blink", "gaze", "expression", "emotion")


def test_builtins_come_from_the_hook():
    registry = build_registry(entry_points=False)
    names = registry.names("condition")
    for name in BUILTINS:
        assert name in names
        info = registry.info("condition", name)
        assert info.distribution == "eartalk"
        assert info.module == f"eartalk.plugins.{name}"  # one module per plugin


def test_all_builtins_in_one_stack():
    registry = build_registry(entry_points=False)
    stack = ConditionStack.from_specs([ConditionSpec(name) for name in BUILTINS], d_model=16, registry=registry)
    assert stack.names == list(BUILTINS)
    assert stack.num_slots == 2 + 1 + 1 + 1 + 1 + 1 + 1  # audio has two slots
    tokens = stack.null_tokens(batch=1, frames=3)
    assert tokens.shape == (1, 3, 8, 16)
