"""All eartalk hook specifications.

A plugin is a module (named by an entry point of group ``eartalk``) that implements some of
these hooks with :data:`hookimpl`. Built-in plugins use exactly the same hooks.

Example::

    from eartalk.core.hookspecs import hookimpl

    @hookimpl
    def register_conditions():
        return [MyCondition]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from eartalk.core.commands import Command
    from eartalk.core.protocol import ConditionPlugin
    from eartalk.metrics.base import MetricPlugin
    from eartalk.recipes.base import Recipe

PROJECT = "eartalk"
ENTRY_POINT_GROUP = "eartalk"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_conditions() -> list[type[ConditionPlugin]]:
    """Return condition plugin classes (FCIC control signals).

    Each class subclasses :class:`eartalk.conditions.base.ConditionPlugin` and has a unique
    ``name`` that configs use to put it in a condition stack.
    """


@hookspec
def register_metrics() -> list[type[MetricPlugin]]:
    """Return metric plugin classes (:class:`eartalk.metrics.base.MetricPlugin` subclasses)."""


@hookspec
def register_recipes() -> list[type[Recipe]]:
    """Return recipe classes (:class:`eartalk.recipes.base.Recipe` subclasses).

    A recipe owns a config schema (selected by the ``recipe:`` key of a YAML file) and a
    ``run`` method, usually building pieces and handing them to a Lightning ``Trainer``.
    """


@hookspec
def register_commands() -> list[type[Command]]:
    """Return CLI subcommand classes (:class:`eartalk.core.commands.Command` subclasses)."""
