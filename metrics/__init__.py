"""Built-in metrics, registered through the same hooks as third-party plugins."""

from __future__ import annotations

from eartalk.core.hookspecs import hookimpl


@hookimpl
def register_metrics() -> list[type]:
    return []
