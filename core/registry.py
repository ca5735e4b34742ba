"""Plugin manager factory and the registry of conditions, metrics, recipes and commands.

Nothing is built at import time: :func:`build_registry` registers the built-in modules through
the same hooks a third-party package uses, then loads entry points of group ``eartalk``, and
validates everything. :func:`get_registry` caches one registry per process.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import inspect
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import attrs
import pluggy

from eartalk.core import hookspecs
from eartalk.core.errors import PluginError, UnknownPluginError, did_you_mean

#: Modules that provide the built-in plugins, registered exactly like third-party ones.
BUILTIN_MODULES: tuple[str, ...] = (
    "eartalk.core.commands",
    "eartalk.core.engine.commands",
    "eartalk.core.data.commands",
    "eartalk.plugins",
    "eartalk.metrics",
    "eartalk.recipes",
)

KINDS = ("condition", "metric", "recipe", "command")
_HOOK_OF_KIND = {
    "condition": "register_conditions",
    "metric": "register_metrics",
    "recipe": "register_recipes",
    "command": "register_commands",
}


@attrs.frozen
class PluginInfo:
    """One registered plugin class and where it came from."""

    name: str
    kind: str
    cls: type
    distribution: str
    version: str
    module: str


def _base_class(kind: str) -> type:
    if kind == "condition":
        from eartalk.core.protocol import ConditionPlugin

        return ConditionPlugin
    if kind == "metric":
        from eartalk.metrics.base import MetricPlugin

        return MetricPlugin
    if kind == "recipe":
        from eartalk.recipes.base import Recipe

        return Recipe
    from eartalk.core.commands import Command

    return Command


def check_protocol(cls: Any, kind: str, origin: str) -> None:
    """Raise :class:`PluginError` unless ``cls`` satisfies the protocol of ``kind``."""
    base = _base_class(kind)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise PluginError(f"{origin}: {cls!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or not name.replace("-", "_").isidentifier():
        raise PluginError(f"{origin}: {cls.__qualname__} needs a class attribute `name` (an identifier), got {name!r}")
    missing = [m for m in getattr(base, "required_methods", ()) if getattr(cls, m) is getattr(base, m)]
    if missing:
        raise PluginError(f"{origin}: {kind} plugin {name!r} ({cls.__qualname__}) does not implement {', '.join(missing)}")
    options = getattr(cls, "Options", None)
    if kind in ("condition", "metric") and not attrs.has(options):
        raise PluginError(f"{origin}: {kind} plugin {name!r} needs an attrs `Options` class, got {options!r}")


class Registry:
    """Registered plugins by kind and name, with the pluggy manager that found them."""

    def __init__(self, pm: pluggy.PluginManager, infos: Iterable[PluginInfo]) -> None:
        self.pm = pm
        self._by_kind: dict[str, dict[str, PluginInfo]] = {k: {} for k in KINDS}
        for info in infos:
            self._by_kind[info.kind][info.name] = info

    def infos(self, kind: str | None = None) -> list[PluginInfo]:
        kinds = KINDS if kind is None else (kind,)
        return [info for k in kinds for info in self._by_kind[k].values()]

    def names(self, kind: str) -> list[str]:
        return list(self._by_kind[kind])

    def info(self, kind: str, name: str) -> PluginInfo:
        table = self._by_kind[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none installed"
            raise UnknownPluginError(f"unknown {kind} plugin {name!r}{did_you_mean(name, table)}; installed: {known}")
        return table[name]

    def get(self, kind: str, name: str) -> type:
        return self.info(kind, name).cls

    def condition(self, name: str) -> type:
        return self.get("condition", name)

    def metric(self, name: str) -> type:
        return self.get("metric", name)

    def recipe(self, name: str) -> type:
        return self.get("recipe", name)


def _distribution_of(module: ModuleType | str) -> tuple[str, str]:
    modname = module if isinstance(module, str) else module.__name__
    top = modname.split(".")[0]
    dists = md.packages_distributions().get(top, [])
    if top == "eartalk":
        from eartalk import __version__

        return "eartalk", __version__
    if dists:
        try:
            return dists[0], md.version(dists[0])
        except md.PackageNotFoundError:
            return dists[0], "?"
    return f"<{modname}>", "?"


def build_plugin_manager(*, entry_points: bool = True, extra: Iterable[ModuleType | object] = ()) -> tuple[
    pluggy.PluginManager, dict[str, tuple[str, str]]
]:
    """A fresh plugin manager: built-ins, then entry points of group ``eartalk``, then ``extra``.

    Returns the manager and a map of registered plugin name -> (distribution, version).

    Raises:
        PluginError: a plugin module fails to import (naming its distribution and the error),
            or implements a hook that does not exist (a misspelling).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    origins: dict[str, tuple[str, str]] = {}
    for modname in BUILTIN_MODULES:
        module = importlib.import_module(modname)
        pm.register(module, name=modname)
        origins[modname] = _distribution_of(module)
    if entry_points:
        for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            version = ep.dist.version if ep.dist is not None else "?"
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as err:  # noqa: BLE001 - any import failure is reported the same way
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist} {version} failed to import "
                    f"({ep.value}): {type(err).__name__}: {err}. Fix or uninstall {dist}."
                ) from err
            pm.register(module, name=ep.name)
            origins[ep.name] = (dist, version)
    for i, module in enumerate(extra):
        name = getattr(module, "__name__", f"extra-{i}")
        pm.register(module, name=name)
        origins[name] = _distribution_of(name) if isinstance(module, ModuleType) else (f"<{name}>", "?")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        plugin_name = pm.get_name(err.plugin) or repr(err.plugin)
        dist, version = origins.get(plugin_name, ("?", "?"))
        known = [h for h in dir(pm.hook) if not h.startswith("_")]
        raise PluginError(
            f"plugin {plugin_name!r} from distribution {dist} {version}: {err}. "
            f"Known hooks: {', '.join(sorted(known))}."
        ) from None
    return pm, origins


def build_registry(*, entry_points: bool = True, extra: Iterable[ModuleType | object] = ()) -> Registry:
    """Build and validate a fresh :class:`Registry` (see :func:`build_plugin_manager`).

    Raises:
        PluginError: broken import, misspelled hook, protocol violation, or two plugins with one
            name (naming both distributions).
    """
    pm, origins = build_plugin_manager(entry_points=entry_points, extra=extra)
    infos: dict[tuple[str, str], PluginInfo] = {}
    for kind in KINDS:
        hook = getattr(pm.hook, _HOOK_OF_KIND[kind])
        for impl in reversed(hook.get_hookimpls()):  # registration order
            plugin_name = impl.plugin_name
            dist, version = origins.get(plugin_name, ("?", "?"))
            origin = f"plugin {plugin_name!r} from distribution {dist} {version}"
            try:
                classes = impl.function() or []
            except Exception as err:  # noqa: BLE001
                raise PluginError(f"{origin}: {_HOOK_OF_KIND[kind]}() raised {type(err).__name__}: {err}") from err
            for cls in classes:
                check_protocol(cls, kind, origin)
                info = PluginInfo(cls.name, kind, cls, dist, version, cls.__module__)
                previous = infos.get((kind, cls.name))
                if previous is not None and previous.cls is not cls:
                    raise PluginError(
                        f"two {kind} plugins are named {cls.name!r}: {previous.cls.__module__}.{previous.cls.__qualname__} "
                        f"from distribution {previous.distribution} {previous.version} and "
                        f"{cls.__module__}.{cls.__qualname__} from distribution {dist} {version}. "
                        "Uninstall one of them."
                    )
                infos[(kind, cls.name)] = info
    return Registry(pm, infos.values())


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry, built on first use (built-ins and entry points)."""
    return build_registry()
