"""Base class of recipes (Lightning entry points selected by a YAML's ``recipe:`` key)."""

from __future__ import annotations

from typing import Any, ClassVar

from eartalk.core.protocol import NoOptions


class Recipe:
    """A training or evaluation recipe.

    Attributes:
        name: the value of the ``recipe:`` key in its YAML files.
        Config: attrs class of the recipe's config (everything but ``recipe:``).
    """

    kind: ClassVar[str] = "recipe"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    required_methods: ClassVar[tuple[str, ...]] = ("run",)

    @classmethod
    def validate(cls, config: Any, source: str) -> None:
        """Checks beyond the schema (plugin names, plugin options). Raise ConfigError."""

    def run(self, config: Any, overrides: list[str] | None = None) -> Any:
        raise NotImplementedError
