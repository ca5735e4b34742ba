"""Plugin manager factory: built-ins, entry points and every start-up failure."""

from __future__ import annotations

import types

import pytest

from eartalk.core.errors import PluginError, UnknownPluginError
from eartalk.core.hookspecs import hookimpl
from eartalk.core.registry import build_registry

GOOD = """
import attrs, torch
from torch import nn
from eartalk.core.hookspecs import hookimpl
from eartalk.core.protocol import ConditionPlugin

class Sparkle(ConditionPlugin):
    name = "{name}"
    description = "third-party test plugin"
    def __init__(self, d_model, options=None):
        super().__init__(d_model, options, slots=3, signal_dim=2)
        self.proj = nn.Linear(2, 3 * d_model)
    def extract(self, sample):
        return torch.zeros(sample.num_frames, 2)
    def encode(self, signal):
        b, t, _ = signal.shape
        return self.proj(signal).reshape(b, t, 3, self.d_model)

@hookimpl
def register_conditions():
    return [Sparkle]
"""


def module_with(**hooks) -> types.ModuleType:
    module = types.ModuleType("throwaway_plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    return module


def test_builtins_registered_through_hooks() -> None:
    registry = build_registry(entry_points=False)
    assert {"plugins", "config"} <= set(registry.names("command"))
    info = registry.info("command", "plugins")
    assert info.distribution == "eartalk"


def test_entry_point_plugin_is_found_with_its_distribution(make_dist) -> None:
    make_dist("eartalk-sparkle", "eartalk_sparkle", GOOD.format(name="sparkle"), version="0.4.2")
    registry = build_registry()
    info = registry.info("condition", "sparkle")
    assert (info.distribution, info.version) == ("eartalk-sparkle", "0.4.2")
    assert info.cls(d_model=4).slots == 3


def test_unknown_plugin_name_suggests_the_closest() -> None:
    registry = build_registry(entry_points=False, extra=[module_with(register_conditions=lambda: [])])
    with pytest.raises(UnknownPluginError, match="unknown condition plugin 'toyy'"):
        registry.condition("toyy")
    from eartalk.conditions import testing

    registry = build_registry(entry_points=False, extra=[module_with(register_conditions=lambda: [testing.ToyCondition])])
    with pytest.raises(UnknownPluginError, match="did you mean 'toy'"):
        registry.condition("toyy")


def test_misspelled_hook_fails_at_start_up(make_dist) -> None:
    make_dist("eartalk-typo", "eartalk_typo", GOOD.format(name="typo").replace("def register_conditions", "def register_condition"))
    with pytest.raises(PluginError, match=r"eartalk-typo.*register_condition"):
        build_registry()


def test_import_error_names_distribution_and_error(make_dist) -> None:
    make_dist("eartalk-broken", "eartalk_broken", "import definitely_not_a_module_xyz\n")
    with pytest.raises(PluginError) as info:
        build_registry()
    message = str(info.value)
    assert "eartalk-broken" in message and "ModuleNotFoundError" in message and "definitely_not_a_module_xyz" in message


def test_duplicate_names_name_both_distributions(make_dist) -> None:
    make_dist("eartalk-one", "eartalk_one", GOOD.format(name="twin"))
    make_dist("eartalk-two", "eartalk_two", GOOD.format(name="twin"))
    with pytest.raises(PluginError) as info:
        build_registry()
    message = str(info.value)
    assert "'twin'" in message and "eartalk-one" in message and "eartalk-two" in message


def test_class_violating_the_protocol_is_refused() -> None:
    class NotAPlugin:
        name = "nope"

    with pytest.raises(PluginError, match="not a subclass"):
        build_registry(entry_points=False, extra=[module_with(register_conditions=lambda: [NotAPlugin])])

    from eartalk.core.protocol import ConditionPlugin

    class NoEncode(ConditionPlugin):
        name = "no_encode"

    with pytest.raises(PluginError, match="does not implement"):
        build_registry(entry_points=False, extra=[module_with(register_conditions=lambda: [NoEncode])])

    class BadName(ConditionPlugin):
        name = "has space"

        def extract(self, sample):
            raise NotImplementedError

        def encode(self, signal):
            raise NotImplementedError

    with pytest.raises(PluginError, match="needs a class attribute `name`"):
        build_registry(entry_points=False, extra=[module_with(register_conditions=lambda: [BadName])])


def test_hook_that_raises_is_reported() -> None:
    def boom():
        raise RuntimeError("kaboom")

    with pytest.raises(PluginError, match="kaboom"):
        build_registry(entry_points=False, extra=[module_with(register_metrics=boom)])
