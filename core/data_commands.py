"""CLI subcommands (registered through ``register_commands``)."""

from __future__ import annotations

from eartalk.core.commands import Command
from eartalk.core.hookspecs import hookimpl


@hookimpl
def register_commands() -> list[type[Command]]:
    return []
