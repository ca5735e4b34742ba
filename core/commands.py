"""CLI subcommands. Each is a :class:`Command` registered through ``register_commands``;
the CLI builds its parser from the registry, so a subcommand is declared in one place only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, ClassVar

from eartalk.core.hookspecs import hookimpl


class Command:
    """A subcommand of ``eartalk``.

    Attributes:
        name: the subcommand word (``eartalk NAME ...``).
        help: one line shown by ``eartalk --help``.
    """

    kind: ClassVar[str] = "command"
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    required_methods: ClassVar[tuple[str, ...]] = ("run",)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare this command's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the process exit code."""
        raise NotImplementedError


def print_json(data: Any) -> None:
    """Print JSON on stdout (machine-readable output of ``--json`` flags)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class PluginsCommand(Command):
    name = "plugins"
    help = "list installed plugins (conditions, metrics, recipes, commands)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--kind", choices=["condition", "metric", "recipe", "command"], help="only this kind")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.registry import get_registry

        registry = get_registry()
        rows = []
        for info in registry.infos(args.kind):
            row: dict[str, Any] = {
                "name": info.name,
                "kind": info.kind,
                "distribution": info.distribution,
                "version": info.version,
                "module": info.module,
            }
            if info.kind == "condition":
                plugin = info.cls(d_model=8)
                row["slots"] = plugin.slots
                row["signal_dim"] = plugin.signal_dim
                row["lookahead_frames"] = plugin.lookahead_frames
            description = getattr(info.cls, "description", "") or getattr(info.cls, "help", "")
            row["description"] = description
            rows.append(row)
        if args.json:
            print_json(rows)
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title="eartalk plugins")
        for col in ("kind", "name", "slots", "distribution", "version", "description"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["kind"], row["name"], str(row.get("slots", "")), row["distribution"], row["version"], row["description"])
        Console().print(table)
        return 0


def load_recipe_config(path: str | Path, overrides: list[str]) -> tuple[type, Any]:
    """Load a recipe YAML: its ``recipe:`` key picks the schema; plugin options are checked too."""
    from eartalk.core.config import apply_overrides, load_yaml, structure
    from eartalk.core.errors import ConfigError
    from eartalk.core.registry import get_registry

    data = load_yaml(path)
    recipe_name = data.pop("recipe", None)
    if not isinstance(recipe_name, str):
        names = ", ".join(get_registry().names("recipe"))
        raise ConfigError(f"{path}: needs a top-level key `recipe:` naming one of: {names}")
    try:
        recipe_cls = get_registry().recipe(recipe_name)
    except KeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    data = apply_overrides(data, overrides, recipe_cls.Config)
    config = structure(data, recipe_cls.Config, source=str(path))
    recipe_cls.validate(config, source=str(path))
    return recipe_cls, config


class ConfigCommand(Command):
    name = "config"
    help = "show or validate a recipe config (with key=value overrides)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        for action, text in (("show", "print the resolved config"), ("validate", "check a config and exit")):
            p = sub.add_parser(action, help=text)
            p.add_argument("file", help="recipe YAML file")
            p.add_argument("overrides", nargs="*", help="dotted key=value overrides")

    def run(self, args: argparse.Namespace) -> int:
        from eartalk.core.config import to_yaml

        recipe_cls, config = load_recipe_config(args.file, args.overrides)
        if args.action == "show":
            sys.stdout.write(f"recipe: {recipe_cls.name}\n" + to_yaml(config))
        else:
            print(f"{args.file}: valid {recipe_cls.name} config")
        return 0


@hookimpl
def register_commands() -> list[type[Command]]:
    return [PluginsCommand, ConfigCommand]
