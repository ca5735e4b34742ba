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
        description: the paragraph at the top of ``eartalk NAME --help`` (default: ``help``).
    """

    kind: ClassVar[str] = "command"
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    description: ClassVar[str] = ""
    required_methods: ClassVar[tuple[str, ...]] = ("run",)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare this command's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; return the process exit code."""
        raise NotImplementedError


def print_json(data: Any) -> None:
    """Print JSON on stdout (machine-readable output of ``--json`` flags)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _plugin_rows(kind: str | None) -> list[dict[str, Any]]:
    """Rows of ``eartalk plugins``: built-ins first (in registration order), then third-party
    plugins by distribution."""
    from eartalk.core.registry import KINDS, get_registry

    infos = get_registry().infos(kind)
    order = {k: i for i, k in enumerate(KINDS)}
    infos = sorted(infos, key=lambda i: (order[i.kind], i.distribution != "eartalk", i.distribution))  # stable
    rows = []
    for info in infos:
        row: dict[str, Any] = {
            "name": info.name,
            "kind": info.kind,
            "distribution": info.distribution,
            "version": info.version,
            "module": info.module,
        }
        if info.kind == "condition":
            from eartalk.core.protocol import describe_plugin

            doc = describe_plugin(info.cls)
            row["slots"] = doc.slots
            row["signal_dim"] = doc.signal_dim
            row["lookahead_frames"] = doc.lookahead_frames
            row["requires"] = list(doc.requires)
            row["columns"] = doc.column_summary(limit=6 if doc.signal_dim <= 8 else 2)
        row["description"] = (getattr(info.cls, "help", "") if info.kind == "command" else "") or \
            getattr(info.cls, "description", "")
        rows.append(row)
    return rows


class PluginsCommand(Command):
    name = "plugins"
    help = "list installed plugins (conditions, metrics, recipes, commands); `plugins show NAME` for one"
    description = (
        "List installed plugins: built-ins first, then third-party packages (entry-point group `eartalk`). "
        "The default listing fits 80 columns; --wide adds versions, modules, slots and condition columns; "
        "`eartalk plugins show NAME` prints one plugin's columns, units, value forms and options."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", nargs="?", choices=["list", "show"], default="list",
                            help="list plugins, or show one plugin's full help")
        parser.add_argument("plugin", nargs="?", metavar="NAME", help="plugin to show (with `show`)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--kind", choices=["condition", "metric", "recipe", "command"], help="only this kind")
        parser.add_argument("--wide", action="store_true", help="all details (version, module, slots, columns)")
        parser.add_argument("--markdown", action="store_true",
                            help="print the built-in conditions' value table of docs/conditions.md")

    def run(self, args: argparse.Namespace) -> int:
        if args.action == "show":
            return self._show(args)
        if args.markdown:
            sys.stdout.write(conditions_markdown())
            return 0
        rows = _plugin_rows(args.kind)
        if args.json:
            print_json(rows)
            return 0
        from rich.console import Console
        from rich.table import Table

        console = Console()
        if args.wide:
            console = Console(width=None if console.is_terminal else 200)
            table = Table(title="eartalk plugins", title_justify="left")
            for col in ("kind", "name", "slots", "distribution", "version", "module", "columns", "description"):
                table.add_column(col, overflow="fold")
            for r in rows:
                table.add_row(r["kind"], r["name"], str(r.get("slots", "")), r["distribution"], r["version"],
                              r["module"], r.get("columns", ""), r["description"])
            console.print(table)
            return 0
        # Compact: one short section per kind, one line per plugin, fitting 80 columns.
        name_width = max((len(r["name"]) for r in rows), default=4)
        for kind in dict.fromkeys(r["kind"] for r in rows):
            table = Table(title=f"{kind}s", title_justify="left", title_style="bold", box=None, show_header=False,
                          pad_edge=False, expand=False)
            table.add_column("name", no_wrap=True, min_width=name_width)
            table.add_column("from", no_wrap=True, max_width=20, overflow="ellipsis", style="cyan")
            table.add_column("description", no_wrap=True, overflow="ellipsis")
            for r in rows:
                if r["kind"] == kind:
                    origin = "" if r["distribution"] == "eartalk" else r["distribution"]
                    table.add_row(r["name"], origin, r["description"])
            console.print(table)
        console.print("[dim]built-ins first; --wide: versions, modules, slots, columns; "
                      "`eartalk plugins show NAME`: one plugin[/dim]")
        return 0

    def _show(self, args: argparse.Namespace) -> int:
        from eartalk.core.errors import ConfigError, UnknownPluginError
        from eartalk.core.protocol import describe_options, describe_plugin
        from eartalk.core.registry import KINDS, get_registry

        if not args.plugin:
            raise ConfigError("eartalk plugins show NAME: give a plugin name (see `eartalk plugins`)")
        registry = get_registry()
        kinds = [args.kind] if args.kind else list(KINDS)
        found = [registry.info(k, args.plugin) for k in kinds if args.plugin in registry.names(k)]
        if not found:
            all_names = sorted({n for k in kinds for n in registry.names(k)})
            from eartalk.core.errors import did_you_mean

            raise UnknownPluginError(f"no plugin named {args.plugin!r}{did_you_mean(args.plugin, all_names)}; "
                                     f"installed: {', '.join(all_names)}")
        out: list[dict[str, Any]] = []
        for info in found:
            origin = "built-in" if info.distribution == "eartalk" else f"{info.distribution} {info.version}"
            if info.kind == "condition":
                doc = describe_plugin(info.cls)
                text = f"[condition, {origin}] " + doc.render()
                data = {"kind": info.kind, "distribution": info.distribution, **doc.to_dict()}
            else:
                description = getattr(info.cls, "description", "") or getattr(info.cls, "help", "")
                text = f"[{info.kind}, {origin}] {info.name}: {description}\n"
                data = {"kind": info.kind, "name": info.name, "distribution": info.distribution,
                        "description": description}
                options = describe_options(getattr(info.cls, "Options", None) or object)
                if options:
                    text += "  options:\n" + "".join(
                        f"    {o.name} (default {o.default!r}{'; ' + o.allowed if o.allowed else ''})"
                        f"{': ' + o.help if o.help else ''}\n" for o in options)
                    data["options"] = [attrs_asdict(o) for o in options]
            out.append(data)
            if not args.json:
                sys.stdout.write(text + "\n")
        if args.json:
            print_json(out if len(out) > 1 else out[0])
        return 0


def conditions_epilog(width: int = 78) -> str:
    """Help text listing every installed condition: its columns (units, ranges) and value forms.

    Used as the epilog of ``eartalk generate --help``; generated from the plugins' own
    description (:func:`eartalk.core.protocol.describe_plugin`), so third-party plugins appear too.
    """
    import textwrap

    from eartalk.core.protocol import describe_plugin

    lines = ["controls: --control NAME=VALUE[@START:STOP], repeatable. These are the installed conditions; a "
             "checkpoint takes those it was trained with. Every value form of one: `eartalk plugins show NAME`.", ""]
    for row in _plugin_rows("condition"):
        from eartalk.core.registry import get_registry

        doc = describe_plugin(get_registry().condition(row["name"]))
        origin = "" if row["distribution"] == "eartalk" else f" [{row['distribution']}]"
        lines.extend(textwrap.wrap(f"{doc.name}{origin}: {doc.description}", width, initial_indent="  ",
                                   subsequent_indent="      "))
        body = []
        if doc.signal_dim <= 8:
            body.append("columns: " + doc.column_summary())
        else:
            body.append(f"{doc.signal_dim} columns: " + doc.column_summary(limit=3))
        cls = get_registry().condition(row["name"])
        own = len(cls.labels) + len(cls.value_examples)
        labels = [f for f, _ in doc.forms[: len(cls.labels)]][:2]
        specific = [f for f, _ in doc.forms[len(cls.labels): own]][:2]
        generic = [f for f, _ in doc.forms[own:] if not f.endswith("=off")]
        examples = (labels + specific + generic)[:5]
        body.append("e.g. " + " | ".join(examples) + f" | {doc.name}=off (absent)")
        for text in body:
            lines.extend(textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="        "))
    lines += ["", "  START:STOP: frame indices (25 fps), STOP exclusive; either may be left out."]
    return "\n".join(lines)


def conditions_markdown(builtin_only: bool = True) -> str:
    """The table of condition values in docs/conditions.md (``eartalk plugins --markdown``):
    one row per column of every condition, with unit, range and meaning, then its labels."""
    from eartalk.core.protocol import describe_plugin
    from eartalk.core.registry import build_registry, get_registry

    registry = build_registry(entry_points=False) if builtin_only else get_registry()
    lines = ["| condition | columns (unit, range: meaning) | labels and other value forms |", "|---|---|---|"]
    for info in registry.infos("condition"):
        doc = describe_plugin(info.cls)
        cols = []
        shown = doc.columns if len(doc.columns) <= 8 else doc.columns[:1]
        for col in shown:
            extra = ", ".join(x for x in (col.unit, col.range_text()) if x)
            name = f"`{col.name}`" if len(doc.columns) <= 8 else \
                f"{len(doc.columns)} columns `{doc.columns[0].name}` ... `{doc.columns[-1].name}`"
            cols.append(name + (f" ({extra})" if extra else "") + (f": {col.meaning}" if col.meaning else ""))
        cls = info.cls
        own = doc.forms[: len(cls.labels) + len(cls.value_examples)]
        forms = [f"`{form.split('=', 1)[1]}`: {meaning}" for form, meaning in own]
        cell = "<br>".join(forms) or "-"
        lines.append(f"| `{doc.name}` | {'<br>'.join(cols)} | {cell.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def attrs_asdict(obj: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(obj)


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
    description = ("Show a recipe config with its defaults and overrides resolved (`config show`), or check it "
                   "(`config validate`): unknown keys, wrong types and bad plugin options are errors naming the "
                   "key and the file.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        for action, text in (("show", "print the resolved config (every default filled in)"),
                             ("validate", "check a config and exit (status 0 when valid)")):
            p = sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".",
                               formatter_class=parser.formatter_class)
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
